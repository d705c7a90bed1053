#!/usr/bin/env bash
# Run every hull test. Sets up whatever is missing first (Debian packages,
# the cached guest kernel, the agent initramfs, the test probe initramfs),
# then: format and lint checks, unit tests, and the KVM integration suites
# against the real kernel on /dev/kvm (one VM at a time).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

install_deps
say "format and lint"
cargo fmt --all -- --check
cargo clippy -q --workspace --all-targets -- -D warnings

say "build"
cargo build -q --workspace
build_kernel
say "guest kernel: the aarch64 fragment configures"
guest-kernel/build.sh --arch aarch64 --configure-only >/dev/null
build_initramfs "$HULL_ROOT/target/debug/hull"
say "test probe initramfs"
probe=$(build_static_bin hull-guest-probe)
HULL_PROBE_INITRAMFS=$HULL_CACHE/initramfs/hull-guest-probe.cpio
"$HULL_ROOT/target/debug/hull" initramfs --agent "$probe" --out "$HULL_PROBE_INITRAMFS" >/dev/null
export HULL_PROBE_INITRAMFS
export HULL_VMM=$HULL_ROOT/target/debug/hull-vmm

say "unit tests"
cargo test -q --workspace --exclude hull-tests
say "integration tests (real KVM, one VM at a time)"
cargo test -q -p hull-tests -- --test-threads=1
