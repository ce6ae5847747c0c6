#!/usr/bin/env bash
# Load benchmark: wrk against `deputy serve` (example bundle) and, in the same run, against the
# bare hyper floor (examples/floor.rs). Prints requests/s, p50/p99, non-2xx responses, deputy's
# share of the floor and deputy's resident memory (VmRSS) idle and after its run. Needs wrk
# (apt-get install wrk). Builds with the `dist` profile (fat LTO, as the container image), so the
# first run takes several minutes.
#
#   bench/http.sh [--policies N | --chain] [--shadow] [seconds] [connections] [threads]
#
# With --shadow, deputy also compares every decision against a shadow bundle (the same bundle,
# `serve --shadow`, docs/GITOPS.md): run it and a run without in turn, in one sitting, for the
# shadow's cost; the run ends by printing GET /v1/shadow's counts.
#
# With --chain, deputy also keeps delegation state (a temp dir): the admin creates a root agent,
# the root a child, the child a grandchild (one-policy grants, each proved), and the run prints,
# in one sitting, the floor, the bundle agent `coder-1` and the managed grandchild (depth 3)
# asking the same question, with the grandchild's share of the bundle agent's req/s.
#
# With --policies N, deputy serves a generated bundle of N policies over a 1000-entity hierarchy
# (examples/bundle_gen.rs, written to a temp dir) with --authorize-only, asked about an agent
# that has a grant there.
set -euo pipefail
cd "$(dirname "$0")/.."
generated=""; chain=""
if [ "${1:-}" = "--policies" ]; then generated=$2; shift 2; fi
if [ "${1:-}" = "--chain" ]; then chain=1; shift; fi
shadow=""
if [ "${1:-}" = "--shadow" ]; then shadow=1; shift; fi
secs=${1:-10}; conns=${2:-64}; threads=${3:-2}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
# BENCH_PROFILE=release (or dev) builds faster, for trying the script; figures come from dist.
profile=${BENCH_PROFILE:-dist}
out_dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
# Two builds: the examples turn on the dev-dependency's `test-support` feature, and the binary
# measured must be the one that ships (`--bin deputy` alone, as the Dockerfile builds it).
# DEPUTY_BIN=path measures that binary instead (e.g. an older build, for a before/after).
if [ -n "${DEPUTY_BIN:-}" ]; then
  cp "$DEPUTY_BIN" "$out_dir/deputy-bench"
else
  cargo build --profile "$profile" --locked --quiet --bin deputy
  cp "$out_dir/deputy" "$out_dir/deputy-bench"
fi
cargo build --profile "$profile" --locked --quiet --example floor --example bundle_gen
serve_args=()
body='{"principal":{"type":"Agent","id":"coder-1"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"repo/src/main.rs"}}'
bundle_dir=""; state_dir=""
if [ -n "$chain" ]; then
  state_dir=$(mktemp -d)
  export DEPUTY_ADMIN_TOKEN=bench-admin-credential-0123456789
  serve_args=(--state "$state_dir")
fi
if [ -n "$generated" ]; then
  bundle_dir=$(mktemp -d)
  ./$out_dir/examples/bundle_gen "$generated" "$bundle_dir" 2>/dev/null
  serve_args=(--bundle "$bundle_dir" --authorize-only)
  body='{"principal":{"type":"Agent","id":"a7"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x7"},"context":{"n":1}}'
fi

if [ -n "$shadow" ]; then
  serve_args+=(--shadow "${bundle_dir:-$PWD}")
  export DEPUTY_ADMIN_TOKEN=${DEPUTY_ADMIN_TOKEN:-bench-admin-credential-0123456789}
fi

deputy_port=18180; floor_port=18181
lua=$(mktemp --suffix .lua)
./$out_dir/deputy-bench serve "${serve_args[@]}" --listen 127.0.0.1:$deputy_port --log-format json 2>/dev/null &
deputy_pid=$!
./$out_dir/examples/floor 127.0.0.1:$floor_port 2>/dev/null &
floor_pid=$!
trap 'kill $deputy_pid $floor_pid 2>/dev/null || true; rm -f "$lua" "$lua.chain"; [ -z "$bundle_dir" ] || rm -rf "$bundle_dir"; [ -z "$state_dir" ] || rm -rf "$state_dir"' EXIT

# Ready means answering on the port while still alive: if the port was taken, the server we
# started has exited and a readiness probe would be answered by someone else's.
ready() { # pid url
  for _ in $(seq 1200); do
    kill -0 "$1" 2>/dev/null || { echo "server for $2 exited (port in use?)" >&2; exit 1; }
    curl -sf "$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no answer from $2 after 120s" >&2; exit 1
}
ready $deputy_pid http://127.0.0.1:$deputy_port/readyz
ready $floor_pid http://127.0.0.1:$floor_port/
rss() { awk '/^VmRSS/ {print $2 " " $3}' "/proc/$deputy_pid/status"; }
policies=$(curl -sf http://127.0.0.1:$deputy_port/v1/status | grep -o '"policies":[0-9]*' | cut -d: -f2)

cat > "$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA

run() { # name port path [script] -> prints a line on stderr, req/s on stdout
  local out rps p50 p99 non2xx
  out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "${4:-$lua}" "http://127.0.0.1:$2$3")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  # "  Non-2xx or 3xx responses: N" (absent when there were none)
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  printf '%-8s %12s req/s   p50 %8s   p99 %8s   non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}" >&2
  echo "$rps"
}
echo "wrk: ${secs}s, ${conns} connections, ${threads} threads; $(nproc) cores; deputy serving ${policies:-?} policies" >&2
if [ -n "$chain" ]; then
  spawn() { # token grant -> the new agent's "id token"
    curl -sf -X POST "http://127.0.0.1:$deputy_port/v1/delegations" -H "Authorization: Bearer $1" \
      -H 'Content-Type: application/json' \
      -d "{\"grant\": \"$2\", \"ttl_seconds\": 86400, \"ceiling\": 2, \"can_delegate\": true, \"task\": \"bench\"}" |
      python3 -c 'import json,sys; b=json.load(sys.stdin); assert b["outcome"]=="applied", b; print(b["delegation_id"], b["credential"])'
  }
  read_in() { echo "permit(principal == ?principal, action == Action::\\\"read\\\", resource in Folder::\\\"$1\\\");"; }
  read -r root root_token < <(spawn "$DEPUTY_ADMIN_TOKEN" "$(read_in repo)")
  read -r child child_token < <(spawn "$root_token" "$(read_in repo/src)")
  read -r grandchild _ < <(spawn "$child_token" "$(read_in repo/src)")
  chain_body=${body//coder-1/$grandchild}
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' "'$chain_body'" > "$lua.chain"
  decision=$(curl -sf -X POST "http://127.0.0.1:$deputy_port/v1/authorize" -H 'Content-Type: application/json' -d "$chain_body")
  case $decision in *'"decision":"Allow"'*) ;; *) echo "the grandchild is not allowed: $decision" >&2; exit 1;; esac
  echo "managed chain: $root -> $child -> $grandchild (depth 3)" >&2
  floor=$(run floor $floor_port /)
  bundle=$(run bundle $deputy_port /v1/authorize)
  managed=$(run chain $deputy_port /v1/authorize "$lua.chain")
  floor2=$(run floor $floor_port /)
  awk -v b="$bundle" -v m="$managed" -v f1="$floor" -v f2="$floor2" 'BEGIN { f=(f1+f2)/2;
    printf "bundle agent / floor: %.1f%%   managed grandchild / floor: %.1f%%   managed / bundle: %.1f%%\n", 100*b/f, 100*m/f, 100*m/b }'
  exit 0
fi
rss_idle=$(rss)
floor=$(run floor $floor_port /)
deputy=$(run deputy $deputy_port /v1/authorize)
rss_after=$(rss)
floor2=$(run floor $floor_port /)
awk -v d="$deputy" -v f1="$floor" -v f2="$floor2" 'BEGIN { f=(f1+f2)/2; printf "deputy / floor (mean of the two floor runs): %.1f%%\n", 100*d/f }'
echo "deputy VmRSS: idle after start ${rss_idle}; after its wrk run ${rss_after}; peak (VmHWM) $(awk '/^VmHWM/ {print $2 " " $3}' "/proc/$deputy_pid/status")"
if [ -n "$shadow" ]; then
  curl -sf "http://127.0.0.1:$deputy_port/v1/shadow" -H "Authorization: Bearer $DEPUTY_ADMIN_TOKEN" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("shadow: same %(same)d, differs %(differs)d, error %(error)d, dropped %(dropped)d" % r)'
fi
