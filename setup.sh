#!/usr/bin/env bash
# Set up hull on a fresh Debian (bookworm) machine and boot a microVM:
# installs the packages hull needs, builds hull in release mode, builds (or
# reuses from ~/.cache/hull) the guest kernel and the agent initramfs,
# installs them, runs `hull boot`, builds the default VM template, then a
# container under containerd with the hull runtime (its kernel next to the
# host's) and `hull check`.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/common.sh
source scripts/engines.sh

install_deps
install_containerd
install_trixie_engines
install_cni
install_virtiofsd
say "building hull (release; hull-vmm static and size-optimised)"
cargo build -q --release -p hull -p hull-jailer -p hull-shim
vmm=$(build_static_bin hull-vmm)
build_kernel
build_initramfs "$HULL_ROOT/target/release/hull"

say "installing to /usr/local/bin and /usr/local/share/hull"
install -m 0755 target/release/hull target/release/hull-jailer target/release/containerd-shim-hull-v2 "$vmm" /usr/local/bin/
install -d /usr/local/share/hull
install -m 0644 "$HULL_KERNEL_SMP" /usr/local/share/hull/vmlinux
install -m 0644 "$HULL_KERNEL" /usr/local/share/hull/vmlinux-up
install -m 0644 "$HULL_INITRAMFS" /usr/local/share/hull/initramfs.cpio
# `hull check` verifies the installed guest artefacts against these.
(cd /usr/local/share/hull && sha256sum vmlinux vmlinux-up initramfs.cpio >SHA256SUMS)

if [ ! -e /etc/hull/config.toml ]; then
  install -d /etc/hull
  cat >/etc/hull/config.toml <<'TOML'
# hull's shim configuration (every key is optional; these are the defaults).
vmm = "/usr/local/bin/hull-vmm"
jailer = "/usr/local/bin/hull-jailer"
kernel = "/usr/local/share/hull/vmlinux-up"
kernel_smp = "/usr/local/share/hull/vmlinux"
initramfs = "/usr/local/share/hull/initramfs.cpio"
virtiofsd = "/usr/local/bin/virtiofsd"
vcpus = 1
memory_mib = 256
jail = true
seccomp = "enforce"
# Sandboxes restore a snapshot of a booted VM instead of booting.
templates = true
template_dir = "/var/lib/hull/templates"
TOML
fi

say "hull boot"
/usr/local/bin/hull boot

# The template sandboxes without limits restore from (the first `ctr run`
# would build it otherwise); one cold boot, then a snapshot.
say "hull template build"
/usr/local/bin/hull template build
/usr/local/bin/hull template list

say "containerd (bookworm's 1.6) with the hull runtime"
if ! ctr version >/dev/null 2>&1; then
  mkdir -p /var/log
  PATH=/usr/local/bin:$PATH nohup containerd >/var/log/containerd.log 2>&1 &
  for _ in $(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
  ctr version >/dev/null || { echo "containerd did not start (see /var/log/containerd.log)" >&2; exit 1; }
fi
python3 scripts/busybox-image.py "$HULL_CACHE/busybox.tar" >/dev/null
ctr image import "$HULL_CACHE/busybox.tar" >/dev/null
ctr task rm -f hull-hello >/dev/null 2>&1 || true
ctr container rm hull-hello >/dev/null 2>&1 || true
say "ctr run --runtime io.containerd.hull.v2 busybox uname -r  (restored from the template)"
guest=$(ctr run --rm --runtime io.containerd.hull.v2 docker.io/library/busybox:hull hull-hello uname -r)
echo "kernel inside the container: $guest"
echo "kernel of this host:         $(uname -r)"
# A FAIL in the audit fails the set-up: the runtime would not be safe to use.
hull check
