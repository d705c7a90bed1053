#!/usr/bin/env bash
# Build hull's guest kernel from Debian's linux-source-6.1 package.
#
#   guest-kernel/build.sh [--arch x86_64|aarch64] [--up] [--configure-only] [--jobs N]
#
# --up builds the uniprocessor variant (up.config on top), for 1-vCPU VMs.
#
# The result is cached under ${HULL_CACHE:-~/.cache/hull}/kernel/<hash>/, where
# <hash> covers everything that decides the output: the config fragments, the
# patches, this script, the linux-source package version and the compiler.
# A second call with the same inputs prints the cached path at once.
# Progress goes to stderr; the last line on stdout is the path of `vmlinux`
# (or of `.config` with --configure-only).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
arch=x86_64
configure_only=0
variant=smp
jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --configure-only) configure_only=1; shift ;;
    --up) variant=up; shift ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  x86_64) karch=x86_64; image=vmlinux ;;
  aarch64) karch=arm64; image=arch/arm64/boot/Image ;;
  *) echo "build.sh: --arch must be x86_64 or aarch64, not '$arch'" >&2; exit 2 ;;
esac
if [ "$arch" != "$(uname -m)" ] && [ "$configure_only" = 0 ]; then
  echo "build.sh: building for $arch on $(uname -m) needs a cross compiler; use --configure-only" >&2
  exit 2
fi

tarball=/usr/src/linux-source-6.1.tar.xz
if [ ! -f "$tarball" ]; then
  echo "build.sh: $tarball is missing: apt-get install linux-source-6.1 flex bison bc libelf-dev" >&2
  exit 1
fi
for tool in make gcc flex bison bc; do
  command -v "$tool" >/dev/null || { echo "build.sh: '$tool' not found: apt-get install build-essential flex bison bc libelf-dev" >&2; exit 1; }
done

cache=${HULL_CACHE:-$HOME/.cache/hull}/kernel
mkdir -p "$cache"
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$tarball")
fragments=("$here/common.config" "$here/$arch.config")
[ "$variant" = up ] && fragments+=("$here/up.config")
patch_hash=$( { echo "$src_version"; cat "$here"/patches/*.patch; } | sha256sum | cut -c1-16)
config_hash=$( { echo "$arch $variant $src_version"; gcc --version | head -1; cat "${fragments[@]}" "$here"/patches/*.patch "$here/build.sh"; } | sha256sum | cut -c1-16)
out=$cache/$config_hash
result=$out/$( [ "$configure_only" = 1 ] && echo config || echo vmlinux )
if [ "$configure_only" = 1 ]; then result=$out/$arch.config; fi

if [ -f "$result" ]; then
  echo "build.sh: cached $result" >&2
  echo "$result"
  exit 0
fi

# One build at a time per cache (tests and set-up may race).
exec 9>"$cache/.lock"
flock 9
if [ -f "$result" ]; then echo "$result"; exit 0; fi

start=$(date +%s)
src=$cache/src-$patch_hash/linux-source-6.1
if [ ! -f "$src/.hull-patched" ]; then
  echo "build.sh: extracting $tarball ..." >&2
  rm -rf "$cache/src-$patch_hash"
  mkdir -p "$cache/src-$patch_hash"
  tar -xJf "$tarball" -C "$cache/src-$patch_hash"
  for p in "$here"/patches/*.patch; do
    echo "build.sh: applying $(basename "$p")" >&2
    patch -d "$src" -p1 --quiet --forward < "$p"
  done
  touch "$src/.hull-patched"
fi

# One object tree per variant: switching SMP on and off rebuilds everything.
build=$cache/build-$patch_hash-$arch-$variant
mkdir -p "$build"
mk=(make -C "$src" O="$build" ARCH="$karch" -j"$jobs")
echo "build.sh: configuring ($arch: tinyconfig + ${fragments[*]##*/})" >&2
"${mk[@]}" -s tinyconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "${fragments[@]}" >/dev/null
"${mk[@]}" -s olddefconfig >&2

# Every option a fragment asks for must have survived olddefconfig: a typo or
# an unmet dependency otherwise disappears silently.
# Later fragments override earlier ones, as in merge_config.sh.
declare -A want
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  want[${line%%=*}]=${line#*=}
done < <(cat "${fragments[@]}")
missing=0
for opt in "${!want[@]}"; do
  if [ "${want[$opt]}" = n ]; then
    if grep -q "^$opt=" "$build/.config"; then echo "build.sh: $opt should be off but is $(grep "^$opt=" "$build/.config")" >&2; missing=1; fi
  elif ! grep -qx "$opt=${want[$opt]}" "$build/.config"; then
    echo "build.sh: $opt=${want[$opt]} asked for, .config has: $(grep -E "^(# )?$opt[= ]" "$build/.config" || echo nothing)" >&2; missing=1
  fi
done
if [ "$missing" = 1 ]; then
  echo "build.sh: the config fragments ask for options the kernel did not take (see above)" >&2
  exit 1
fi

mkdir -p "$out.tmp"
cp "$build/.config" "$out.tmp/$arch.config"
if [ "$configure_only" = 0 ]; then
  echo "build.sh: building $image with $jobs jobs (about 2 minutes on 2 cores; progress below)" >&2
  "${mk[@]}" "$(basename "$image")" 2>&1 | awk '/^  (CC|LD|AR|AS)/ { n++; if (n % 100 == 0) printf("build.sh: %d objects ...\n", n) > "/dev/stderr"; next } { print > "/dev/stderr" }'
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "build.sh: kernel build failed (log above)" >&2; rm -rf "$out.tmp"; exit 1; }
  cp "$build/$image" "$out.tmp/vmlinux"
  cp "$build/System.map" "$out.tmp/System.map"
fi
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build.sh: done in $(( $(date +%s) - start )) s: $result ($(du -h "$result" | cut -f1))" >&2
echo "$result"
