#!/usr/bin/env bash
# Prepares this machine to build, test, benchmark and demo bpf-sidecar, from nothing.
#
# Idempotent: a second run checks and changes nothing. Steps:
#   1. Debian packages (only the missing ones; needs root)
#   2. /lib/modules/$(uname -r)/build for bcc, linked to the distribution's headers when the
#      running kernel's own are missing (said in the log)
#   3. bpffs at /sys/fs/bpf (pinned programs and maps live under /sys/fs/bpf/sidecar/)
#   4. a virtualenv over the system Python with --system-site-packages, so `import bcc` works
#   5. the Python dependencies and the Cython build (fastpath/*.pyx)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
log() { echo "setup: $*"; }

PACKAGES=(
  python3-dev python3-venv python3-bpfcc bpfcc-tools bpftool iproute2 iptables
  linux-headers-amd64 nginx libnginx-mod-stream haproxy wrk procps slowhttptest prometheus
  gcc util-linux openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packaged nginx/haproxy/prometheus services from starting: the
  # tests and benchmarks start their own instances on their own ports.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Kernels built outside Debian (as on
# these VMs) ship no headers package: the distribution's headers work for the programs here.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build" ]; then
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$arch_dir" ] && [ -n "$common_dir" ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$kdir"
    ln -sfn "$arch_dir" "$kdir/build"
    ln -sfn "$common_dir" "$kdir/source"
    log "no headers for kernel $(uname -r): linked $kdir/build -> $arch_dir, source -> $common_dir"
  else
    log "warning: no kernel headers for $(uname -r) and none to link; BPF programs will not compile"
  fi
fi

if [ "$(id -u)" = 0 ] && ! mountpoint -q /sys/fs/bpf; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
  log "mounted bpffs at /sys/fs/bpf"
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV over /usr/bin/python3 (with system site-packages for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# Reinstall only when the declared dependencies change.
stamp="$VENV/.installed"
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python dependencies"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel "cython>=3.0"
  "$VENV/bin/pip" install -q --no-build-isolation -e '.[test,bench]'
  echo "$want" > "$stamp"
fi

# Incremental: only changed .pyx files are recompiled.
"$VENV/bin/python" setup.py -q build_ext --inplace
