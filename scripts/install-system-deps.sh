#!/usr/bin/env bash
# Installs the Debian packages felix-nat64's tests, demo and benchmarks use.
# Idempotent: apt is only called when something is missing.
set -euo pipefail

packages=(
  python3 python3-venv python3-pip python3-nftables nftables iproute2 conntrack ethtool
  iperf3 socat curl procps kmod
  # Felix-style rulesets in iptables mode (testbed/calico_rules.py).
  iptables ipset
  # docs/diagrams: SVGs drawn from Graphviz sources (tests/unit/test_diagrams.py).
  graphviz
  # promtool checks the chart's alerts and dashboard (tests/chart/test_monitoring.py).
  prometheus
  # benchmarks/loadgen.c, the benchmarks' load generator.
  gcc libc6-dev
  # The test VM: Debian's kernel with Jool built by DKMS, booted by virtme-ng.
  qemu-system-x86 linux-image-amd64 linux-headers-amd64 jool-dkms jool-tools busybox-static
  # The container image (make image): a Debian base made by mmdebstrap (dpkg
  # without fsync through eatmydata), built by buildah without a daemon;
  # shellcheck lints the image's scripts.
  buildah mmdebstrap eatmydata shellcheck
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# jool-dkms builds for every kernel with headers; the VM needs one that has it.
if ! compgen -G "/lib/modules/*/updates/dkms/jool.ko*" >/dev/null; then
  echo "jool-dkms did not build jool.ko for any installed kernel; see /var/lib/dkms/jool" >&2
  exit 1
fi
