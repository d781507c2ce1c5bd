#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60) with cargo-fuzz (libFuzzer), starting
# from seeds/ and keeping what it finds in corpus/; a crashing input lands in artifacts/
# (make it a unit test next to the code it broke). The machine has a stable toolchain
# only: RUSTC_BOOTSTRAP lets it take the -Z flags cargo-fuzz passes.
#
#   bash proxy/fuzz/run.sh 300
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
status=0
for target in http1_head chunked; do
  mkdir -p "corpus/$target"
  echo "== $target: $seconds s"
  cargo fuzz run --release --debug-assertions "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 || status=$?
done
exit $status
