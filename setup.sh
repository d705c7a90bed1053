#!/usr/bin/env bash
# Set up hull on a fresh Debian (bookworm) machine and boot a microVM:
# installs the packages hull needs, builds hull in release mode, builds (or
# reuses from ~/.cache/hull) the guest kernel and the agent initramfs,
# installs them, and runs `hull boot`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh

install_deps
say "building hull (release; hull-vmm static and size-optimised)"
cargo build -q --release -p hull -p hull-jailer
vmm=$(build_static_bin hull-vmm)
build_kernel
build_initramfs "$HULL_ROOT/target/release/hull"

say "installing to /usr/local/bin and /usr/local/share/hull"
install -m 0755 target/release/hull target/release/hull-jailer "$vmm" /usr/local/bin/
install -d /usr/local/share/hull
install -m 0644 "$HULL_KERNEL_SMP" /usr/local/share/hull/vmlinux
install -m 0644 "$HULL_KERNEL" /usr/local/share/hull/vmlinux-up
install -m 0644 "$HULL_INITRAMFS" /usr/local/share/hull/initramfs.cpio
# `hull check` verifies the installed guest artefacts against these.
(cd /usr/local/share/hull && sha256sum vmlinux vmlinux-up initramfs.cpio >SHA256SUMS)

say "hull boot"
/usr/local/bin/hull boot
