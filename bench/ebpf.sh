#!/usr/bin/env bash
# eBPF data plane benchmark, in network namespaces this script creates and removes (a hub with a
# bridge, 10.235.0.0/24; node 1, node 2 and a stranger each in a namespace of their own). One run,
# figures side by side:
#
# 1. A garbage UDP flood (FLOOD_SECS, default 10 s) from the stranger at node 1's mesh port, three
#    ways: the XDP admission filter (`--ebpf on`), an equivalent nftables rule in node 1's
#    namespace (`--ebpf off` plus `udp dport 7946 ip saddr STRANGER drop` at the raw priority),
#    and the userspace path (`--ebpf off`, no rule: the node's QUIC stack reads and discards
#    it). For each: datagrams/s the stranger sent, datagrams/s disposed of (dropped by XDP or
#    nftables; read and discarded by the node), node 1's CPU (its process's user+system time),
#    and the req/s of legitimate traffic during the flood (`wrk -c16` through node 2 to a
#    component placed on node 1, so every request crosses the mesh) against the same without a
#    flood. Bars: XDP disposes of ≥ 5× the userspace path's rate at lower CPU; legitimate
#    traffic keeps ≥ 80 % of its unflooded req/s with XDP.
# 2. connect → first byte through a component's virtual address, through node 1's ingress
#    directly, and through a userspace TCP proxy (socat), 2 000 connections each, in node 1's
#    cgroup. Bar: the virtual address within 5 % of direct, faster than the proxy.
#
#   bench/ebpf.sh                      # release build
#   BENCH_PROFILE=dev bench/ebpf.sh    # the tests' build
#   SKIP_BUILD=1 bench/ebpf.sh         # use the binaries as built
#
# Needs root. Installs wrk and socat with apt-get when missing. Every process, namespace and
# cgroup it creates is removed on exit.
set -euo pipefail
export LC_ALL=C
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "bench/ebpf.sh needs root (namespaces, eBPF)" >&2; exit 2; }
"$ROOT/scripts/toolchain.sh"
"$ROOT/scripts/system-deps.sh"
PROFILE="${BENCH_PROFILE:-release}"
DIR="$PROFILE"; [ "$PROFILE" = dev ] && DIR=debug
FLOOD_SECS="${FLOOD_SECS:-10}"
for tool in wrk socat; do
  command -v "$tool" >/dev/null || { apt-get install -y "$tool" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "$tool" >/dev/null; }; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 19 cargo build --profile "$PROFILE" -p aether-d -p alkahest >&2
[ -f target/fixtures/hello-wstd.wasm ] || ./scripts/build-fixtures.sh >&2

ID=$$
HUB="aeb-hub-$ID"
ns() { echo "aeb-h$1-$ID"; }
addr() { echo "10.235.0.$1"; }
WORK="$(mktemp -d)"
CG_ROOT=/sys/fs/cgroup/unified; [ -f "$CG_ROOT/cgroup.threads" ] || CG_ROOT=/sys/fs/cgroup
# Each node's virtual addresses serve the processes of its own cgroup (which share its network
# namespace); the clients run in node 1's.
cgroup_of() { echo "$CG_ROOT/aeb-n$1-$ID"; }
CGROUP="$(cgroup_of 1)"
declare -A PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for h in 1 2 9; do ip netns del "$(ns "$h")" 2>/dev/null || true; done
  ip netns del "$HUB" 2>/dev/null || true
  for h in 1 2; do rmdir "$(cgroup_of "$h")" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[ebpf bench] $*" >&2; }

ip netns add "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" addr add 10.235.0.254/24 dev br0
ip -n "$HUB" link set br0 up
ip -n "$HUB" link set lo up
for h in 1 2 9; do
  ip netns add "$(ns "$h")"
  ip link add "e$h" netns "$(ns "$h")" type veth peer name "p$h-$ID" netns "$HUB"
  ip -n "$(ns "$h")" addr add "$(addr "$h")/24" dev "e$h"
  ip -n "$(ns "$h")" link set "e$h" up
  ip -n "$(ns "$h")" link set lo up
  ip -n "$HUB" link set "p$h-$ID" master br0
  ip -n "$HUB" link set "p$h-$ID" up
done
mkdir -p "$(cgroup_of 1)" "$(cgroup_of 2)"

export ALKAHEST_HOME="$WORK/home"
ALK="$ROOT/target/$DIR/alkahest"
D="$ROOT/target/$DIR/aether-d"
"$ALK" lattice init >/dev/null
in_hub() { ip netns exec "$HUB" "$@"; }
admin() { echo "$(addr "$1"):17070"; }

start() { # start N [extra args...]
  local n=$1; shift
  local args=("$@")
  if [ "$n" != 1 ] || [ -d "$WORK/data1" ]; then
    local other=2; [ "$n" = 2 ] && other=1
    [ -d "$WORK/data$n" ] || args+=(--invite "$("$ALK" invite --expires 1h)")
    args+=(--join "$(addr "$other"):7946")
  fi
  # nsenter, not `ip netns exec`: the latter mounts a sysfs of its own, hiding the cgroup tree.
  nsenter --net="/var/run/netns/$(ns "$n")" "$D" --data-dir "$WORK/data$n" --bind "$(addr "$n")" \
    --http-port 18080 --admin-port 17070 --workers 1 --vip-cgroup "$(cgroup_of "$n")" "${args[@]}" \
    >>"$WORK/node$n.log" 2>&1 &
  PIDS[$n]=$!
  for _ in $(seq 1 100); do in_hub curl -s -o /dev/null "http://$(admin "$n")/healthz" && return; sleep 0.1; done
  echo "node $n did not start; see its log:" >&2; tail -20 "$WORK/node$n.log" >&2; exit 1
}
both_alive() {
  for _ in $(seq 1 150); do
    [ "$(in_hub "$ALK" --node "$(admin 2)" nodes --json | grep -c '"state": "alive"')" = 2 ] && return
    sleep 0.2
  done
  echo "the two nodes do not see each other" >&2; exit 1
}

start 1 --ebpf on --label role=target
start 2 --ebpf off
both_alive
mkdir -p "$WORK/app"
cp target/fixtures/hello-wstd.wasm "$WORK/app/app.wasm"
printf 'name = "app"\ncomponent = "app.wasm"\n[http]\nroutes = ["/app"]\nvirtual_address = true\n[intent]\nlabels = { role = "target" }\n' >"$WORK/app/Aetherfile"
in_hub "$ALK" --node "$(admin 1)" deploy "$WORK/app" --no-build >/dev/null
for _ in $(seq 1 100); do in_hub curl -sf -o /dev/null "http://$(addr 2):18080/app" && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
udp_in() { ip netns exec "$(ns 1)" awk '/^Udp: [0-9]/ {print $2 + $4; exit}' /proc/net/snmp; }

# The flooder (bench/flood.c, sendmmsg): a Python loop sends too slowly to load the userspace path.
clang -O2 -o "$WORK/flood" "$ROOT/bench/flood.c"
flood() { # flood SECONDS → datagrams sent
  ip netns exec "$(ns 9)" "$WORK/flood" "$(addr 1)" "$1"
}
legit() { # legit SECONDS → req/s through node 2 to the component on node 1
  in_hub wrk -t1 -c16 -d"${1}s" "http://$(addr 2):18080/app" 2>/dev/null | awk '/Requests\/sec/ {print $2}'
}
dropped_total() { # kernel drops counted by node 1 for the stranger
  in_hub curl -s "http://$(admin 1)/metrics" | awk -v s="$(addr 9)" '$0 ~ "^aether_ebpf_dropped_packets_total\\{source=\""s"\"\\}" {print $2}' | head -1
}

measure() { # measure CASE → "sent/s disposed/s cpu% legit_req/s"
  local case=$1 pid=${PIDS[1]}
  local c0 u0 d0 n0 sent
  c0=$(cpu_ticks "$pid"); u0=$(udp_in); d0=$(dropped_total); d0=${d0:-0}
  n0=$(ip netns exec "$(ns 1)" nft list ruleset 2>/dev/null | awk '/counter packets/ {for (i=1;i<=NF;i++) if ($i=="packets") print $(i+1)}' | head -1); n0=${n0:-0}
  legit "$FLOOD_SECS" >"$WORK/legit.$case" &
  local wrk_pid=$!
  sent=$(flood "$FLOOD_SECS")
  wait "$wrk_pid"
  local c1 u1 d1 n1 disposed
  c1=$(cpu_ticks "$pid"); u1=$(udp_in); d1=$(dropped_total); d1=${d1:-0}
  n1=$(ip netns exec "$(ns 1)" nft list ruleset 2>/dev/null | awk '/counter packets/ {for (i=1;i<=NF;i++) if ($i=="packets") print $(i+1)}' | head -1); n1=${n1:-0}
  case "$case" in
    xdp) disposed=$(python3 -c "print(int(float('$d1') - float('$d0')))") ;;
    nftables) disposed=$(( n1 - n0 )) ;;
    # What node 1's sockets took in (or dropped for a full buffer), less what the legitimate
    # traffic alone brought in the unflooded run.
    *) disposed=$(( u1 - u0 - u_base )); [ "$disposed" -ge 0 ] || disposed=0 ;;
  esac
  local hz; hz=$(getconf CLK_TCK)
  python3 -c "print(f'{$sent/$FLOOD_SECS:.0f} {$disposed/$FLOOD_SECS:.0f} {100*($c1-$c0)/$hz/$FLOOD_SECS:.1f} $(cat "$WORK/legit.$case")')"
}

log "legitimate traffic without a flood"
u_base0=$(udp_in)
legit_base=$(legit "$FLOOD_SECS")
u_base=$(( $(udp_in) - u_base0 ))
log "flood with the XDP filter"
xdp=$(measure xdp)
restart1() { kill -9 "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true; start 1 "$@"; both_alive; sleep 2; }
log "flood with an nftables rule (node 1 with --ebpf off)"
restart1 --ebpf off --label role=target
ip netns exec "$(ns 1)" nft add table inet aeb
ip netns exec "$(ns 1)" nft add chain inet aeb raw '{ type filter hook prerouting priority -300; }'
ip netns exec "$(ns 1)" nft add rule inet aeb raw ip saddr "$(addr 9)" udp dport 7946 counter drop
nft_case=$(measure nftables)
ip netns exec "$(ns 1)" nft delete table inet aeb
log "flood on the userspace path"
user=$(measure userspace)

log "connect → first byte: virtual address, ingress directly, socat"
restart1 --ebpf on --label role=target
vip=""
for _ in $(seq 1 100); do
  vip=$(in_hub "$ALK" --node "$(admin 1)" status app --json | python3 -c "import json,sys; print(json.load(sys.stdin).get('virtual_address') or '')")
  [ -n "$vip" ] && break
  sleep 0.2
done
[ -n "$vip" ] || { echo "no virtual address for app; node 1's log:" >&2; tail -20 "$WORK/node1.log" >&2; exit 1; }
ip netns exec "$(ns 1)" socat TCP-LISTEN:19000,bind=127.0.0.1,fork,reuseaddr "TCP:$(addr 1):18080" &
PIDS[socat]=$!
sleep 0.5
first_byte() { # first_byte HOST PORT PATH → mean µs over 2000 connections, from node 1's cgroup
  nsenter --net="/var/run/netns/$(ns 1)" sh -c 'echo $$ > "$0/cgroup.procs" && exec python3 -c "$1" "$2" "$3" "$4"' "$CGROUP" '
import socket, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
req = ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode()
for _ in range(50):
    s = socket.create_connection((host, port)); s.sendall(req); s.recv(1); s.close()
total = 0.0
for _ in range(2000):
    t = time.perf_counter(); s = socket.create_connection((host, port)); s.sendall(req); s.recv(1)
    total += time.perf_counter() - t; s.close()
print(round(total / 2000 * 1e6, 1))
' "$@"
}
vip_us=$(first_byte "${vip%:*}" 80 /)
direct_us=$(first_byte "$(addr 1)" 18080 /app)
socat_us=$(first_byte 127.0.0.1 19000 /app)

read -r xs xd xc xl <<<"$xdp"
read -r ns_ nd nc nl <<<"$nft_case"
read -r us ud uc ul <<<"$user"
echo "## eBPF data plane: 2 nodes in network namespaces ($PROFILE build, flood ${FLOOD_SECS} s)"
echo
echo "| path | stranger sent/s | disposed of/s | node 1 CPU | legit req/s during flood (unflooded $legit_base) |"
echo "|---|---:|---:|---:|---:|"
echo "| XDP admission filter | $xs | $xd | $xc % | $xl ($(python3 -c "print(f'{100*$xl/$legit_base:.0f}')") %) |"
echo "| nftables raw rule | $ns_ | $nd | $nc % | $nl ($(python3 -c "print(f'{100*$nl/$legit_base:.0f}')") %) |"
echo "| userspace (QUIC stack) | $us | $ud | $uc % | $ul ($(python3 -c "print(f'{100*$ul/$legit_base:.0f}')") %) |"
echo
echo "XDP disposes of $(python3 -c "print(f'{$xd/max($ud,1):.1f}')")× the userspace path's rate (bar ≥ 5×, at lower CPU)."
echo
echo "| connect → first byte (mean of 2000) | µs | vs direct |"
echo "|---|---:|---:|"
echo "| virtual address $vip | $vip_us | $(python3 -c "print(f'{100*$vip_us/$direct_us-100:+.1f} %')") |"
echo "| ingress directly | $direct_us | |"
echo "| socat proxy | $socat_us | $(python3 -c "print(f'{100*$socat_us/$direct_us-100:+.1f} %')") |"
