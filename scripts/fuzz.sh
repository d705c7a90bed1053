#!/usr/bin/env bash
# Bounded cargo-fuzz runs of every target in fuzz/: the agent protocol
# decoder, the vsock TX packet + muxer path, the virtio-blk request parser.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 20 s each)
# Longer on demand: scripts/fuzz.sh 3600 vsock_tx
# The machine's only toolchain is stable: RUSTC_BOOTSTRAP=1 lets it take the
# -Z sanitizer flags cargo fuzz passes. A crash leaves its input under
# fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(agent_request vsock_tx block_request)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (crates.io)" >&2
  cargo install -q cargo-fuzz --locked
fi
echo "==> building the fuzz targets" >&2
for target in "${targets[@]}"; do
  RUSTC_BOOTSTRAP=1 cargo fuzz build -s address --fuzz-dir fuzz "$target" >&2
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  echo "==> fuzzing $target for ${seconds}s" >&2
  mkdir -p "fuzz/corpus/$target"
  status=0
  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|SUMMARY|Test unit written)" "$log" >&2 || true
  if [ "$status" != 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz: $target failed (exit $status); inputs under fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
