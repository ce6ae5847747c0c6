#!/usr/bin/env bash
# Soak: wrk drives N clients at full speed against `deputy serve` (the `dist` build: fat LTO, as
# in the container image; a temp copy of the example bundle, --poll-interval-secs 1) while the
# bundle is rewritten REWRITES times:
# valid edits alternate between two policy sets (so `coder-1 write repo/src/main.rs` flips
# between Allow and Deny), and every tenth edit is broken (a policy that does not parse, or one
# that fails validation) and must not be applied. Loopback only. Needs wrk (apt-get install wrk).
#
#   bench/soak.sh [seconds] [connections] [threads] [rewrites]     (env: DEPUTY_BIN, SOAK_PORT)
#
# Reports requests, errors (non-2xx answers and socket errors; the run fails unless both are 0),
# p50/p99, deputy's VmRSS over the run (memory drift), and what the rewriter saw: every valid
# edit observed being served (and how long that took), every broken edit refused while the
# previous decision kept being served. Exits non-zero on any error or missed expectation.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}; conns=${2:-64}; threads=${3:-2}; rewrites=${4:-100}
port=${SOAK_PORT:-18190}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
# DEPUTY_BIN: a deputy binary already built (skips the dist build).
deputy=${DEPUTY_BIN:-./target/dist/deputy}
[ -n "${DEPUTY_BIN:-}" ] || cargo build --profile dist --locked --quiet --bin deputy

work=$(mktemp -d)
bundle=$work/bundle
mkdir -p "$bundle"
cp -r schema policies entities "$bundle/"
cp policies/agents.cedar "$work/policies-a.cedar"
# Policy set B: the same without `agents-write-src`, so agents may no longer write repo/src.
awk 'BEGIN{RS=""; ORS="\n\n"} !/@id\("agents-write-src"\)/' policies/agents.cedar >"$work/policies-b.cedar"
grep -q agents-write-src "$work/policies-b.cedar" && { echo "could not derive policy set B" >&2; exit 1; }
printf 'permit (principal, action == Action::"read", resource\n' >"$work/broken-parse.cedar"
printf '@id("bad")\npermit (principal is Agent, action == Action::"read", resource is Nope);\n' >"$work/broken-invalid.cedar"

base=http://127.0.0.1:$port
"$deputy" serve --bundle "$bundle" --listen "127.0.0.1:$port" --state "$work/state" \
  --poll-interval-secs 1 --log-format json 2>"$work/deputy.log" &
pid=$!
wrk_pid=
trap 'kill $pid $wrk_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  kill -0 $pid 2>/dev/null || { echo "deputy exited (port $port in use?)" >&2; cat "$work/deputy.log" >&2; exit 1; }
  curl -sf "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$base/readyz" >/dev/null || { echo "deputy not ready" >&2; exit 1; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }

# Four request shapes, round robin: an allow, a deny, the decision that flips, and an AuthZEN
# evaluation of it.
cat >"$work/soak.lua" <<'LUA'
wrk.headers["Content-Type"] = "application/json"
local P = '{"principal":{"type":"Agent","id":"coder-1"},"action":{"type":"Action","id":"%s"},"resource":{"type":"File","id":"%s"}}'
local reqs = {
  wrk.format("POST", "/v1/authorize", nil, string.format(P, "read", "repo/src/main.rs")),
  wrk.format("POST", "/v1/authorize", nil, string.format(P, "read", "repo/src/payroll.rs")),
  wrk.format("POST", "/v1/authorize", nil, string.format(P, "write", "repo/src/main.rs")),
  wrk.format("POST", "/access/v1/evaluation", nil,
    '{"subject":{"type":"Agent","id":"coder-1"},"action":{"name":"write"},"resource":{"type":"File","id":"repo/src/main.rs"}}'),
}
local i = 0
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
LUA

flip() { # -> Allow|Deny for the decision that flips
  curl -sf "$base/v1/authorize" -H 'Content-Type: application/json' \
    -d '{"principal":{"type":"Agent","id":"coder-1"},"action":{"type":"Action","id":"write"},"resource":{"type":"File","id":"repo/src/main.rs"}}' |
    grep -o '"decision":"[A-Za-z]*"' | cut -d'"' -f4
}
failed_reloads() { curl -sf "$base/v1/status" | grep -o '"failed":[0-9]*' | tail -1 | cut -d: -f2; }
now_ms() { date +%s%3N; }

rss_start=$(rss)
echo "soak: ${secs}s, ${conns} connections, ${threads} threads, ${rewrites} bundle rewrites; $(nproc) cores" >&2
wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$work/soak.lua" "$base" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
start=$(now_ms)
(while kill -0 $wrk_pid 2>/dev/null; do echo "$(( ($(now_ms) - start) / 1000 )) $(rss)"; sleep 5; done) >"$work/rss.log" &

# The rewriter: edits spread over the run, each checked before the next.
interval_ms=$(( secs * 1000 * 9 / 10 / rewrites ))
applied=0; refused=0; missed=0; max_apply_ms=0; total_apply_ms=0; valid=0
expect=Allow
for i in $(seq 1 "$rewrites"); do
  target_ms=$(( start + i * interval_ms ))
  while [ "$(now_ms)" -lt "$target_ms" ]; do sleep 0.02; done
  if [ $((i % 10)) -eq 0 ]; then
    # A broken edit: must be refused, and the previous decision must keep being served.
    before=$(failed_reloads)
    if [ $((i % 20)) -eq 0 ]; then broken=broken-parse; else broken=broken-invalid; fi
    cp "$work/$broken.cedar" "$bundle/policies/agents.cedar.tmp"
    mv "$bundle/policies/agents.cedar.tmp" "$bundle/policies/agents.cedar"
    ok=0
    for _ in $(seq 150); do
      [ "$(failed_reloads)" -gt "$before" ] && { ok=1; break; }
      sleep 0.02
    done
    if [ $ok -eq 1 ] && [ "$(flip)" = "$expect" ]; then refused=$((refused + 1)); else
      missed=$((missed + 1)); echo "rewrite $i ($broken): not refused, or the decision changed" >&2; fi
    continue
  fi
  valid=$((valid + 1))
  if [ "$expect" = Allow ]; then expect=Deny; src=policies-b; else expect=Allow; src=policies-a; fi
  t0=$(now_ms)
  # Written whole and renamed in, as a GitOps sync does.
  cp "$work/$src.cedar" "$bundle/policies/agents.cedar.tmp"
  mv "$bundle/policies/agents.cedar.tmp" "$bundle/policies/agents.cedar"
  ok=0
  for _ in $(seq 150); do
    [ "$(flip)" = "$expect" ] && { ok=1; break; }
    sleep 0.02
  done
  if [ $ok -eq 1 ]; then
    applied=$((applied + 1)); dt=$(( $(now_ms) - t0 )); total_apply_ms=$((total_apply_ms + dt))
    [ $dt -gt $max_apply_ms ] && max_apply_ms=$dt
  else
    missed=$((missed + 1)); echo "rewrite $i: $expect not served within 3s" >&2
  fi
done
rewrites_done_s=$(( ($(now_ms) - start) / 1000 ))
wait $wrk_pid || { echo "wrk failed" >&2; cat "$work/wrk.out" >&2; exit 1; }
wrk_pid=
rss_end=$(rss)
alive=yes; kill -0 $pid 2>/dev/null || alive=no

out=$(cat "$work/wrk.out")
requests=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
p50=$(echo "$out" | awk '$1=="50%" {print $2}')
p99=$(echo "$out" | awk '$1=="99%" {print $2}')
non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
# "  Socket errors: connect 0, read 0, write 0, timeout 0" (absent when there were none)
sock=$(echo "$out" | awk '/Socket errors/ {gsub(",", ""); print $4+$6+$8+$10}')
status=$(curl -sf "$base/v1/status")
reloads_ok=$(echo "$status" | grep -o '"ok":[0-9]*' | tail -1 | cut -d: -f2)
reloads_failed=$(echo "$status" | grep -o '"failed":[0-9]*' | tail -1 | cut -d: -f2)
rss_series=$(awk '{printf "%s%ss %d MiB", (NR>1 ? ", " : ""), $1, $2/1024}' "$work/rss.log")

echo "requests           ${requests} (${rps} req/s)"
echo "errors             non-2xx ${non2xx:-0}, socket ${sock:-0}"
echo "latency            p50 ${p50}, p99 ${p99}"
echo "rewrites           ${rewrites}: ${valid} valid (${applied} observed served; mean $(( applied ? total_apply_ms / applied : 0 )) ms, max ${max_apply_ms} ms from write to the flipped decision), $((rewrites - valid)) broken (${refused} refused with the last good bundle serving); ${missed} missed; all done ${rewrites_done_s}s into the run"
echo "reloads (status)   ok ${reloads_ok}, failed ${reloads_failed}"
echo "VmRSS              start $((rss_start / 1024)) MiB, end $((rss_end / 1024)) MiB (every 5s: ${rss_series})"
echo "deputy alive       ${alive}"
[ "${non2xx:-0}" -eq 0 ] && [ "${sock:-0}" -eq 0 ] && [ "$missed" -eq 0 ] && [ "$alive" = yes ] && [ "$rewrites_done_s" -lt "$secs" ] || {
  echo "SOAK FAILED" >&2; exit 1; }
