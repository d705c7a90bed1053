#!/usr/bin/env bash
# Run every hull test. Sets up whatever is missing first (Debian packages,
# containerd 1.6/1.7 and Docker 26, the cached guest kernel, the agent
# initramfs, the test probe initramfs),
# then: format and lint checks, unit tests, and the KVM integration suites
# against the real kernel on /dev/kvm (one VM at a time).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
source scripts/engines.sh

install_deps
# Format and lint first: a style error should not wait for the engines.
say "format and lint"
cargo fmt --all -- --check
cargo clippy -q --workspace --all-targets -- -D warnings
say "container engines: containerd 1.6 + runc (bookworm), containerd 1.7 + Docker 26 (trixie, extracted)"
install_containerd
install_trixie_engines
install_cni
install_virtiofsd
engines_env

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
say "hostile agent initramfs (tests of what the host trusts)"
hostile=$(agent/build.sh --hostile 2>/dev/null | tail -1)
HULL_HOSTILE_INITRAMFS=$HULL_CACHE/initramfs/hull-agent-hostile.cpio
"$HULL_ROOT/target/debug/hull" initramfs --agent "$hostile" --out "$HULL_HOSTILE_INITRAMFS" >/dev/null
export HULL_HOSTILE_INITRAMFS
export HULL_VMM=$HULL_ROOT/target/debug/hull-vmm
export HULL_SHIM=$HULL_ROOT/target/debug/containerd-shim-hull-v2

say "unit tests"
cargo test -q --workspace --exclude hull-tests
say "integration tests (real KVM, one VM at a time)"
cargo test -q -p hull-tests --no-fail-fast -- --test-threads=1
say "fuzzing: agent protocol, vsock TX + muxer, virtio-blk requests (20 s each)"
scripts/fuzz.sh 20
