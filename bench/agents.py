#!/usr/bin/env python3
"""Live-agent scale and spawn throughput, against a real `deputy serve` (python3 stdlib + wrk).

    bench/agents.py [--deputy PATH] [--agents 10000] [--parents 16] [--seconds 8]

In one sitting, on the example bundle with a fresh state directory:

1. spawns: `--parents` root agents, then one thread per root spawning children under it as
   fast as it can (each a proof and a durable commit: a 201 means on disk); spawns/s and the
   latency percentiles;
2. the decision of a managed grandchild (wrk, 64 connections) with few live agents;
3. the store grown to `--agents` live agents; the same wrk run again (p50 ratio), and the
   resident memory per live agent (VmRSS difference over the agents added);
4. a restart on that state: time from exec to `/readyz` answering 200 with every agent loaded.

`--keep-state DIR` builds the state in DIR (new or empty) and keeps it; `--restart-only DIR`
then only times restarts on it, `--repeat` times for each `--deputy` given (the option may be
repeated: the binaries take turns, for a before/after in one sitting). `--spawns-only DIR`
likewise measures spawns/s *at* the state's size: each run serves a fresh copy of DIR, so every
binary starts from the same ~10,000 live agents.

Build first (the figures in docs/BENCHMARKS.md use the dist profile):
    cargo build --profile dist --locked --bin deputy
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ADMIN = "bench-admin-credential-0123456789"
READ_REPO = 'permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");'
READ_SRC = 'permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");'


def call(port, method, path, token=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, (json.loads(data) if data else None)


def spawn(port, token, grant, task):
    status, b = call(port, "POST", "/v1/delegations", token,
                     {"grant": grant, "ttl_seconds": 86400, "ceiling": 2, "can_delegate": True, "task": task})
    if status != 201 or b.get("outcome") != "applied":
        raise SystemExit(f"spawn failed: {status} {b}")
    return b["delegation_id"], b["credential"]


def serve(binary, state, port):
    env = dict(os.environ, DEPUTY_ADMIN_TOKEN=ADMIN)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = time.monotonic()
    p = subprocess.Popen([binary, "serve", "--bundle", root, "--state", state, "--listen", f"127.0.0.1:{port}",
                          "--log-format", "json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if p.poll() is not None:
            raise SystemExit(f"deputy exited with {p.returncode} (port {port} in use?)")
        try:
            status, _ = call(port, "GET", "/readyz")
            if status == 200:
                return p, time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User + system CPU time the process has used (less sensitive to other load than rates)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def wrk(port, agent, seconds):
    body = json.dumps({"principal": {"type": "Agent", "id": agent}, "action": {"type": "Action", "id": "read"},
                       "resource": {"type": "File", "id": "repo/src/main.rs"}})
    status, d = call(port, "POST", "/v1/authorize", body=json.loads(body))
    if status != 200 or d["decision"] != "Allow":
        raise SystemExit(f"the grandchild is not allowed: {status} {d}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \'{body}\'\n')
        lua = f.name
    try:
        out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", "-s", lua,
                              f"http://127.0.0.1:{port}/v1/authorize"], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(lua)
    rps = float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))
    p50 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("50%"))
    p99 = next(l.split()[1] for l in out.splitlines() if l.strip().startswith("99%"))
    return rps, p50, p99


def micros(s):
    for unit, f in (("us", 1), ("ms", 1000), ("s", 1_000_000)):
        if s.endswith(unit) and not (unit == "s" and s.endswith(("us", "ms"))):
            return float(s[: -len(unit)]) * f
    return float(s)


def spawn_burst(port, tokens, seconds):
    """One thread per parent credential, each spawning children under it for `seconds` (a fresh
    root every 200 children, below the default limit); the latency of every spawn, and the time
    taken."""
    lat, lock, stop = [], threading.Lock(), time.monotonic() + seconds
    errors = []

    def worker(token, i):
        n = 0
        try:
            while time.monotonic() < stop:
                if n and n % 200 == 0:
                    _, token = spawn(port, ADMIN, READ_REPO, f"parent {i}/{n}")
                t = time.monotonic()
                spawn(port, token, READ_SRC, f"burst {i} #{n}")
                with lock:
                    lat.append(time.monotonic() - t)
                n += 1
        except BaseException as e:  # a thread's SystemExit would vanish silently
            errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(tok, i)) for i, tok in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    if errors:
        raise SystemExit(f"a spawn failed: {errors[0]}")
    return lat, took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deputy", action="append", help="the binary (default target/dist/deputy)")
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--parents", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--port", type=int, default=18190)
    ap.add_argument("--keep-state", metavar="DIR", help="build the state in DIR and keep it")
    ap.add_argument("--restart-only", metavar="DIR", help="only time restarts on the state in DIR")
    ap.add_argument("--spawns-only", metavar="DIR",
                    help="only measure spawns on a copy of the state in DIR (spawn rate at its size)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds per binary with --restart-only or --spawns-only")
    a = ap.parse_args()
    a.deputy = a.deputy or ["target/dist/deputy"]
    if a.restart_only:
        return restarts(a)
    if a.spawns_only:
        return spawns_at_size(a)
    if len(a.deputy) > 1:
        raise SystemExit("several --deputy binaries only with --restart-only or --spawns-only")
    a.deputy = a.deputy[0]
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if a.keep_state:
        os.makedirs(a.keep_state, exist_ok=True)
        if os.listdir(a.keep_state):
            raise SystemExit(f"--keep-state {a.keep_state}: not empty")
    state = a.keep_state or tempfile.mkdtemp()
    p, _ = serve(a.deputy, state, a.port)
    try:
        root, root_token = spawn(a.port, ADMIN, READ_REPO, "root")
        child, child_token = spawn(a.port, root_token, READ_SRC, "child")
        grandchild, _ = spawn(a.port, child_token, READ_SRC, "grandchild")
        parents = [spawn(a.port, ADMIN, READ_REPO, f"parent {i}") for i in range(a.parents)]

        # 1. spawn throughput: one thread per parent, each for a fixed time.
        lat, took = spawn_burst(a.port, [tok for _, tok in parents], a.seconds)
        print(f"spawns: {len(lat)} in {took:.1f}s with {a.parents} concurrent parents = {len(lat) / took:.0f}/s; "
              f"latency p50 {pct(lat, 0.5) * 1000:.1f} ms, p99 {pct(lat, 0.99) * 1000:.1f} ms")
        live = 3 + a.parents + len(lat) + len(lat) // 200

        # 2. the grandchild's decision with few agents.
        rss_few = rss_kib(p.pid)
        few = wrk(a.port, grandchild, a.seconds)
        print(f"decision, {live} live agents: {few[0]:.0f} req/s, p50 {few[1]}, p99 {few[2]}; VmRSS {rss_few} KiB")

        # 3. grow to --agents live agents (16 threads) and decide again.
        todo = max(0, a.agents - live)
        per = [todo // a.parents + (1 if i < todo % a.parents else 0) for i in range(a.parents)]
        t0 = time.monotonic()

        failures = []

        def grow(n, i):
            # Under roots of its own, 200 children each (below the default limit of children).
            try:
                token = None
                for k in range(n):
                    if k % 200 == 0:
                        _, token = spawn(a.port, ADMIN, READ_REPO, f"grow root {i}/{k}")
                    spawn(a.port, token, READ_SRC, f"grow {i} #{k}")
            except BaseException as e:  # a thread's SystemExit would vanish silently
                failures.append(e)

        threads = [threading.Thread(target=grow, args=(per[i], i)) for i in range(a.parents)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        grew = time.monotonic() - t0
        if failures:
            raise SystemExit(f"growing failed: {failures[0]}")
        live += todo + sum((n + 199) // 200 for n in per)
        print(f"grew by {todo} agents in {grew:.1f}s ({todo / grew if grew else 0:.0f}/s on the way to {live})")
        rss_many = rss_kib(p.pid)
        many = wrk(a.port, grandchild, a.seconds)
        print(f"decision, {live} live agents: {many[0]:.0f} req/s, p50 {many[1]}, p99 {many[2]}; VmRSS {rss_many} KiB")
        print(f"p50 at {live} / at few: {micros(many[1]) / micros(few[1]):.2f}x; "
              f"resident memory per live agent: {(rss_many - rss_few) * 1024 / max(1, todo):.0f} bytes")
    finally:
        p.terminate()
        p.wait()

    # 4. restart on that state.
    p, ready = serve(a.deputy, state, a.port)
    try:
        status, st = call(a.port, "GET", "/v1/status")
        print(f"restart to ready with {live} agents: {ready * 1000:.0f} ms (status {status}, "
              f"live agents {st.get('delegation', {}).get('live_agents', '?') if st else '?'})")
    finally:
        p.terminate()
        p.wait()
        if not a.keep_state:
            shutil.rmtree(state, ignore_errors=True)


def spawns_at_size(a):
    """Spawn throughput at the size of a kept state: each round, each binary in turn serves a
    fresh copy of the state in DIR (so every run starts at the same number of live agents),
    `--parents` new roots spawn children concurrently for `--seconds`."""
    rates = {d: [] for d in a.deputy}
    for _ in range(a.repeat):
        for d in a.deputy:
            state = tempfile.mkdtemp()
            shutil.rmtree(state)
            shutil.copytree(a.spawns_only, state)
            p, _ = serve(d, state, a.port)
            try:
                # After a restart deputy re-proves every live grant in the background: measure
                # once that is over, so the spawns do not share the cores with it.
                t0, st = time.monotonic(), None
                while time.monotonic() - t0 < 300:
                    _, st = call(a.port, "GET", "/v1/status")
                    if st and st.get("delegation", {}).get("reproved_version"):
                        break
                    time.sleep(0.1)
                before = st.get("delegation", {}).get("live_agents", "?") if st else "?"
                tokens = [spawn(a.port, ADMIN, READ_REPO, f"parent {i}")[1] for i in range(a.parents)]
                load = os.getloadavg()[0]
                cpu0 = cpu_seconds(p.pid)
                lat, took = spawn_burst(a.port, tokens, a.seconds)
                cpu = cpu_seconds(p.pid) - cpu0
                _, st = call(a.port, "GET", "/v1/status")
                after = st.get("delegation", {}).get("live_agents", "?") if st else "?"
            finally:
                p.terminate()
                p.wait()
                shutil.rmtree(state, ignore_errors=True)
            rates[d].append(len(lat) / took)
            print(f"{d}: spawns at {before} -> {after} live agents: {len(lat)} in {took:.1f}s with {a.parents} "
                  f"concurrent parents = {len(lat) / took:.0f}/s; latency p50 {pct(lat, 0.5) * 1000:.1f} ms, "
                  f"p99 {pct(lat, 0.99) * 1000:.1f} ms; deputy CPU {cpu * 1000 / max(1, len(lat)):.2f} ms per spawn; "
                  f"load {load:.2f}", flush=True)
    for d, rs in rates.items():
        print(f"{d}: median {sorted(rs)[len(rs) // 2]:.0f} spawns/s over {len(rs)}")


def restarts(a):
    """Restart to ready on a kept state, each binary in turn, `--repeat` rounds."""
    times = {d: [] for d in a.deputy}
    for _ in range(a.repeat):
        for d in a.deputy:
            p, ready = serve(d, a.restart_only, a.port)
            try:
                _, st = call(a.port, "GET", "/v1/status")
                live = st.get("delegation", {}).get("live_agents", "?") if st else "?"
            finally:
                p.terminate()
                p.wait()
            times[d].append(ready)
            print(f"{d}: restart to ready with {live} live agents: {ready * 1000:.0f} ms", flush=True)
    for d, ts in times.items():
        print(f"{d}: median {sorted(ts)[len(ts) // 2] * 1000:.0f} ms over {len(ts)}")


if __name__ == "__main__":
    sys.exit(main())
