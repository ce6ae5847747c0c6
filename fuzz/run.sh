#!/usr/bin/env bash
# Runs every fuzz target for a fixed budget; exits non-zero if any target finds a crash (a panic,
# a failed soundness assertion, a timeout or an out-of-memory). Installs cargo-fuzz if missing.
#
#   fuzz/run.sh [seconds-per-target] [target...]
#
# libFuzzer needs `-Z` flags. With no nightly toolchain at hand, the stable toolchain accepts
# them under RUSTC_BOOTSTRAP=1 (set below; a nightly works too: FUZZ_TOOLCHAIN=nightly).
# Sanitizer: none by default (deputy forbids `unsafe`; the targets look for panics and broken
# laws); FUZZ_SANITIZER=address to build with ASan.
#
# The model target starts a deputy process per input (about ten inputs a second): give it a long
# budget (fuzz/run.sh 1800 model).
#
# Seeds live in fuzz/seeds/<target>/ (committed); the growing corpus in fuzz/corpus/<target>/
# and crash inputs in fuzz/artifacts/<target>/ (both ignored by git). A crash input becomes a
# file in fuzz/regressions/<target>/ and a test in tests/it/fuzz_regressions.rs.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(authorize authzen grant bundle_load prover model)
sanitizer=${FUZZ_SANITIZER:-none}
toolchain=${FUZZ_TOOLCHAIN:-}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
fuzz() { if [ -n "$toolchain" ]; then cargo "+$toolchain" fuzz "$@"; else cargo fuzz "$@"; fi; }

build_flags=(-O -a -s "$sanitizer")
fuzz build "${build_flags[@]}"
# The model target drives the real binary; a debug build, the only kind with the test clock.
(cd .. && cargo build --quiet --bin deputy)
export DEPUTY_BIN="$PWD/../target/debug/deputy"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/run.log"
  echo "== $t: ${secs}s" >&2
  # -timeout: one input taking longer than this is a finding (a request must not pin a core).
  if fuzz run "${build_flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed+=("$t")
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
  cov=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  corpus=$(find "corpus/$t" -type f | wc -l)
  printf '%-12s %-6s %10s runs %8s exec/s   cov %6s   corpus %6s\n' \
    "$t" "$status" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus"
  if [ "$status" = CRASH ]; then
    (grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written|^error' "$log" || tail -5 "$log") | head -5 >&2
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/; logs in run.log)" >&2
  exit 1
fi
