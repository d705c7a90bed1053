#!/usr/bin/env bash
# Builds hull-agent for the guest's /init: statically linked (the initramfs
# has no libc and no loader), not position-independent (a static-pie binary
# relocates itself at start, touching pages; each first touch costs ~0.8 ms
# in an emulated guest), with the size-optimised `agent` profile.
#
# Prints the binary's path as the last line of stdout; everything else goes
# to stderr. Honours CARGO_TARGET_DIR.
#
# `--hostile`: the test build that lies to the host (feature `hostile-test`,
# agent/src/hostile.rs), in its own profile's directory (agent-hostile), so
# it never replaces the product binary.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
cd "$root"
profile=agent
features=()
if [ "${1:-}" = --hostile ]; then
    profile=agent-hostile
    features=(--features hostile-test)
fi

# With an explicit --target, RUSTFLAGS reach only the target's crates, not
# the build scripts and proc-macros that run on the host. libseccomp (for
# youki's libcontainer: OCI seccomp profiles to BPF) is linked from
# Debian's static archive (apt: libseccomp-dev).
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
LIBSECCOMP_LINK_TYPE=static \
LIBSECCOMP_LIB_PATH=${LIBSECCOMP_LIB_PATH:-/usr/lib/x86_64-linux-gnu} \
    cargo build --profile "$profile" -p hull-agent --target "$target" "${features[@]}" >&2

bin="${CARGO_TARGET_DIR:-$root/target}/$target/$profile/hull-agent"
[ -x "$bin" ] || { echo "build.sh: $bin was not built" >&2; exit 1; }

# Static means no PT_INTERP program header (and, for glibc, no DYNAMIC one).
if command -v readelf >/dev/null; then
    if readelf -lW "$bin" | grep -Eq '^ *(INTERP|DYNAMIC) '; then
        echo "build.sh: $bin is dynamically linked" >&2
        readelf -lW "$bin" | grep -E 'INTERP|DYNAMIC' >&2
        exit 1
    fi
elif ! file -L "$bin" | grep -q 'statically linked'; then
    echo "build.sh: $bin is not statically linked: $(file -L "$bin")" >&2
    exit 1
fi

echo "build.sh: $(stat -c %s "$bin") bytes, statically linked, stripped" >&2
echo "$(cd "$(dirname "$bin")" && pwd)/hull-agent"
