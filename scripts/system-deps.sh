#!/usr/bin/env bash
# Installs the Debian packages the build and the tests use, when missing: clang and the libbpf
# headers (aether-ebpf builds its eBPF programs with them; without them the node falls back to
# the userspace path), nftables (the lattice tests partition loopback addresses with it),
# iproute2 (network namespaces for the eBPF and NAT tests), util-linux's setpriv, Prometheus
# (a real server scrapes a lattice through its service discovery) and tmux (`alkahest top` is
# driven in it). Runs apt-get as root, or
# through sudo.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "[system-deps] installing ${need[*]}" >&2
$SUDO apt-get install -y "${need[@]}" >/dev/null 2>&1 \
  || { $SUDO apt-get update >/dev/null 2>&1 && $SUDO apt-get install -y "${need[@]}" >/dev/null; }
