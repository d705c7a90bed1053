# The container engines hull plugs into, installed without touching the
# host's libc: containerd 1.6 + runc from bookworm (apt), and containerd 1.7 +
# Docker 26 extracted (never installed) from trixie's packages into
# $HULL_ENGINES, so bookworm's own packages and libc stay as they are.
# Each step below says why it is there.
# shellcheck shell=bash

HULL_ENGINES=${HULL_ENGINES:-/opt/hull/engines}
export HULL_ENGINES

# containerd 1.6.20 and runc 1.1.5 from bookworm.
install_containerd() {
  local missing=()
  for p in containerd runc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (bookworm)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# dockerd 26 and containerd 1.7 from trixie, extracted into $HULL_ENGINES/root.
# apt runs with its own source list, lists and cache so the host's apt state
# never sees trixie.
install_trixie_engines() {
  local root=$HULL_ENGINES/root
  if [ -x "$root/usr/sbin/dockerd" ] && [ -x "$root/usr/bin/containerd" ] && [ -x "$root/usr/bin/docker" ]; then
    return 0
  fi
  say "extracting Docker 26 and containerd 1.7 from trixie into $root (not installed)"
  local apt_dir=$HULL_ENGINES/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$root"
  cat >"$apt_dir/sources.list" <<'EOF'
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian-security trixie-security main
EOF
  local opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Default-Release=trixie"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${opts[@]}" update -qq >/dev/null
  (cd "$apt_dir/debs" && apt-get "${opts[@]}" download -qq docker.io/trixie docker-cli/trixie containerd/trixie >/dev/null)
  for deb in "$apt_dir"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # trixie's runc needs trixie's glibc, and its docker-init link is broken:
  # bookworm's runc (installed above) and docker-init stand in.
  rm -f "$root/usr/sbin/runc" "$root/usr/bin/runc"
  rm -rf "$apt_dir"
  "$root/usr/bin/containerd" --version >/dev/null
  "$root/usr/sbin/dockerd" --version >/dev/null
}

# Where each engine's binaries are, for the tests (env) and the scripts.
engines_env() {
  HULL_CONTAINERD_16=/usr/bin/containerd
  HULL_CONTAINERD_17=$HULL_ENGINES/root/usr/bin/containerd
  HULL_DOCKERD=$HULL_ENGINES/root/usr/sbin/dockerd
  HULL_DOCKER=$HULL_ENGINES/root/usr/bin/docker
  HULL_CTR=/usr/bin/ctr
  export HULL_CONTAINERD_16 HULL_CONTAINERD_17 HULL_DOCKERD HULL_DOCKER HULL_CTR
}

# CNI for `ctr run --cni` (and containerd's CRI): Debian's plugins where
# containerd looks for them (/opt/cni/bin), and a bridge network with
# host-local addresses and port mapping, unless a CNI config exists already.
HULL_CNI_CONF=/etc/cni/net.d/10-hull.conflist
install_cni() {
  mkdir -p /opt/cni/bin /etc/cni/net.d
  local plugin
  for plugin in /usr/lib/cni/*; do
    [ -e "/opt/cni/bin/$(basename "$plugin")" ] || ln -s "$plugin" /opt/cni/bin/
  done
  if [ -z "$(ls -A /etc/cni/net.d)" ]; then
    say "CNI: a bridge network (hull-cni0, 10.88.0.0/16) in $HULL_CNI_CONF"
    cat >"$HULL_CNI_CONF" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "hull",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "hull-cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.88.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  fi
}
