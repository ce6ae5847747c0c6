#!/usr/bin/env bash
# Load benchmark: wrk against `deputy serve` (example bundle) and, in the same run, against the
# bare hyper floor (examples/floor.rs). Prints requests/s, p50/p99, non-2xx responses, deputy's
# share of the floor and deputy's resident memory (VmRSS) idle and after its run. Needs wrk
# (apt-get install wrk). Builds with the `dist` profile (fat LTO, as the container image), so the
# first run takes several minutes.
#
#   bench/http.sh [--policies N] [seconds] [connections] [threads]
#
# With --policies N, deputy serves a generated bundle of N policies over a 1000-entity hierarchy
# (examples/bundle_gen.rs, written to a temp dir) with --authorize-only, asked about an agent
# that has a grant there.
set -euo pipefail
cd "$(dirname "$0")/.."
generated=""
if [ "${1:-}" = "--policies" ]; then generated=$2; shift 2; fi
secs=${1:-10}; conns=${2:-64}; threads=${3:-2}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --profile dist --locked --quiet --bin deputy --example floor --example bundle_gen
serve_args=()
body='{"principal":{"type":"Agent","id":"coder-1"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"repo/src/main.rs"}}'
bundle_dir=""
if [ -n "$generated" ]; then
  bundle_dir=$(mktemp -d)
  ./target/dist/examples/bundle_gen "$generated" "$bundle_dir" 2>/dev/null
  serve_args=(--bundle "$bundle_dir" --authorize-only)
  body='{"principal":{"type":"Agent","id":"a7"},"action":{"type":"Action","id":"read"},"resource":{"type":"File","id":"x7"},"context":{"n":1}}'
fi

deputy_port=18180; floor_port=18181
lua=$(mktemp --suffix .lua)
./target/dist/deputy serve "${serve_args[@]}" --listen 127.0.0.1:$deputy_port --log-format json 2>/dev/null &
deputy_pid=$!
./target/dist/examples/floor 127.0.0.1:$floor_port 2>/dev/null &
floor_pid=$!
trap 'kill $deputy_pid $floor_pid 2>/dev/null || true; rm -f "$lua"; [ -z "$bundle_dir" ] || rm -rf "$bundle_dir"' EXIT

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

run() { # name port path -> prints a line on stderr, req/s on stdout
  local out rps p50 p99 non2xx
  out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$2$3")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  # "  Non-2xx or 3xx responses: N" (absent when there were none)
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  printf '%-8s %12s req/s   p50 %8s   p99 %8s   non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}" >&2
  echo "$rps"
}
echo "wrk: ${secs}s, ${conns} connections, ${threads} threads; $(nproc) cores; deputy serving ${policies:-?} policies" >&2
rss_idle=$(rss)
floor=$(run floor $floor_port /)
deputy=$(run deputy $deputy_port /v1/authorize)
rss_after=$(rss)
floor2=$(run floor $floor_port /)
awk -v d="$deputy" -v f1="$floor" -v f2="$floor2" 'BEGIN { f=(f1+f2)/2; printf "deputy / floor (mean of the two floor runs): %.1f%%\n", 100*d/f }'
echo "deputy VmRSS: idle after start ${rss_idle}; after its wrk run ${rss_after}; peak (VmHWM) $(awk '/^VmHWM/ {print $2 " " $3}' "/proc/$deputy_pid/status")"
