# Shared by setup.sh and test.sh: install what hull needs and build the guest
# artefacts. Every step is idempotent and cheap when already done.
# shellcheck shell=bash

HULL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HULL_CACHE=${HULL_CACHE:-$HOME/.cache/hull}
export HULL_CACHE

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages: kernel build, guest images, the QEMU baseline for benchmarks.
HULL_APT_PACKAGES=(
  build-essential flex bison bc libelf-dev libssl-dev linux-source-6.1 cpio
  e2fsprogs qemu-system-x86 busybox-static pkg-config
  libseccomp-dev
  # virtiofsd (built from crates.io, below) links libcap-ng and libseccomp
  libcap-ng-dev
  # networking: ip/tc in sandbox namespaces, Docker's bridge NAT, CNI
  iproute2 iptables containernetworking-plugins
  # the tests' CRI client (k8s-cri) generates its gRPC code with protoc
  protobuf-compiler
)

install_deps() {
  local missing=()
  for p in "${HULL_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then echo "hull: installing packages needs root (apt-get)" >&2; return 1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "hull: cargo not found: install Rust (rustup) first" >&2; return 1; }
  [ -e /dev/kvm ] || { echo "hull: /dev/kvm is missing: hull needs KVM" >&2; return 1; }
}

# virtiofsd, the vhost-user file server behind each sandbox's shared
# directory: the Rust daemon Kata and Cloud Hypervisor use, pinned, built
# from crates.io into /usr/local (about a minute on 2 cores). Sets
# HULL_VIRTIOFSD.
HULL_VIRTIOFSD_VERSION=1.13.2
install_virtiofsd() {
  HULL_VIRTIOFSD=/usr/local/bin/virtiofsd
  if ! "$HULL_VIRTIOFSD" --version 2>/dev/null | grep -qx "virtiofsd $HULL_VIRTIOFSD_VERSION"; then
    say "virtiofsd $HULL_VIRTIOFSD_VERSION (cargo install, into /usr/local)"
    cargo install -q virtiofsd --version "$HULL_VIRTIOFSD_VERSION" --locked --root /usr/local >&2
  fi
  export HULL_VIRTIOFSD
}

# The guest kernels, cached by config hash: SMP (HULL_KERNEL_SMP) and the
# uniprocessor build for 1-vCPU VMs (HULL_KERNEL, what the tests boot).
build_kernel() {
  say "guest kernels, SMP and UP (cached under $HULL_CACHE/kernel by config hash)"
  HULL_KERNEL_SMP=$("$HULL_ROOT/guest-kernel/build.sh" | tail -1)
  HULL_KERNEL=$("$HULL_ROOT/guest-kernel/build.sh" --up | tail -1)
  export HULL_KERNEL HULL_KERNEL_SMP
}

# A static, size-optimised binary: the agent or a test program for the
# guest's /init, and hull-vmm (less code for an escaped guest to use, no
# libc to bind into a jail, and under 3 MiB of RSS).
# Usage: build_static_bin PACKAGE -> prints the binary path.
build_static_bin() {
  local pkg=$1 target=x86_64-unknown-linux-gnu
  (cd "$HULL_ROOT" && RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
    cargo build -q --profile agent -p "$pkg" --target "$target" >&2)
  echo "${CARGO_TARGET_DIR:-$HULL_ROOT/target}/$target/agent/$pkg"
}

# The agent initramfs, written next to the kernel cache. Needs a built `hull`
# binary in $1. Sets HULL_INITRAMFS.
build_initramfs() {
  local hull=$1
  say "agent (static) and initramfs"
  local agent
  agent=$("$HULL_ROOT/agent/build.sh" 2>/dev/null | tail -1)
  mkdir -p "$HULL_CACHE/initramfs"
  HULL_INITRAMFS=$HULL_CACHE/initramfs/hull-agent.cpio
  "$hull" initramfs --agent "$agent" --out "$HULL_INITRAMFS" >/dev/null
  export HULL_INITRAMFS
}
