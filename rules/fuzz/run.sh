#!/usr/bin/env bash
# Runs each fuzz target of the rules crate for SECONDS (default 60) with cargo-fuzz
# (`cargo install cargo-fuzz`). The machine has a stable toolchain only: RUSTC_BOOTSTRAP
# lets it take the sanitizer flags cargo-fuzz passes. A crash leaves its input under
# artifacts/; turn it into a regression test next to the code it broke.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
for target in decode_attributes parse_expression; do
  echo "== $target ($seconds s)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
