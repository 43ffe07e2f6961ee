#!/usr/bin/env bash
# NAT traversal benchmark, in network namespaces this script creates and removes: an "internet"
# bridge (10.239.0.0/24) with three reachable nodes, and four homes, each a router namespace in
# front of a node on a network of its own: homes A and C masquerade keeping ports, home B
# masquerades `fully-random` (all three drop unasked WAN traffic, as home routers do), and home
# D routes without NAT (its node is directly reachable, one router away like the others). One
# run, figures side by side:
#
# 1. A request forwarded to a component on home A's node (behind NAT), p50 (wrk -c1,
#    --latency) and req/s (wrk -c16), through home D's ingress (a direct path: no punch, no
#    relay), home C's (a punched path) and home B's (a relayed path, through a reachable
#    member). Every case crosses the same routers: the client's request to the home's node,
#    then the hop from that node to home A. Bars: punched within 10 % of direct; relayed adds
#    ≤ 0.3 ms p50 and keeps ≥ 60 % of direct req/s.
# 2. Time from a node's start to alive in every other node's view, for a NAT'd node (home C's,
#    restarted) against a directly reachable one (reach3, restarted), ROUNDS times each. Bar:
#    NAT'd ≤ 2× direct.
#
#   bench/nat.sh                      # release build
#   BENCH_PROFILE=dev bench/nat.sh    # the tests' build
#   SKIP_BUILD=1 bench/nat.sh         # use the binaries as built
#
# Needs root. Installs wrk with apt-get when missing. Every process and namespace it creates is
# removed on exit.
set -euo pipefail
export LC_ALL=C
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "bench/nat.sh needs root (network namespaces)" >&2; exit 2; }
"$ROOT/scripts/toolchain.sh"
"$ROOT/scripts/system-deps.sh"
PROFILE="${BENCH_PROFILE:-release}"
DIR="$PROFILE"; [ "$PROFILE" = dev ] && DIR=debug
SECS="${BENCH_SECS:-8}"
ROUNDS="${ROUNDS:-3}"
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 19 cargo build --profile "$PROFILE" -p aether-d -p alkahest >&2
[ -f target/fixtures/probe.wasm ] || ./scripts/build-fixtures.sh >&2

ID=$$
ns() { echo "anb-$1-$ID"; }
WORK="$(mktemp -d)"
declare -A PIDS=() ADDR=()
NAMESPACES=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[nat bench] $*" >&2; }
add_ns() { ip netns add "$(ns "$1")"; ip -n "$(ns "$1")" link set lo up; NAMESPACES+=("$(ns "$1")"); }

INET="$(ns inet)"
add_ns inet
ip -n "$INET" link add br0 type bridge
ip -n "$INET" addr add 10.239.0.254/24 dev br0
ip -n "$INET" link set br0 up
for i in 1 2 3; do
  add_ns "reach$i"
  ip link add eth0 netns "$(ns "reach$i")" type veth peer name "r$i-$ID" netns "$INET"
  ip -n "$(ns "reach$i")" addr add "10.239.0.$i/24" dev eth0
  ip -n "$(ns "reach$i")" link set eth0 up
  ip -n "$INET" link set "r$i-$ID" master br0 up
  ADDR[reach$i]="10.239.0.$i"
done
home() { # home NAME WAN_OCTET LAN_PREFIX MASQUERADE... ("route": no NAT, no firewall)
  local name=$1 wan="10.239.0.$2" lan=$3; shift 3
  local gw="gw$name" inside="home$name"
  add_ns "$gw"; add_ns "$inside"
  ip link add wan netns "$(ns "$gw")" type veth peer name "w$name-$ID" netns "$INET"
  ip -n "$(ns "$gw")" addr add "$wan/24" dev wan
  ip -n "$(ns "$gw")" link set wan up
  ip -n "$INET" link set "w$name-$ID" master br0 up
  ip link add lan netns "$(ns "$gw")" type veth peer name eth0 netns "$(ns "$inside")"
  ip -n "$(ns "$gw")" addr add "$lan.1/24" dev lan
  ip -n "$(ns "$gw")" link set lan up
  ip -n "$(ns "$inside")" addr add "$lan.2/24" dev eth0
  ip -n "$(ns "$inside")" link set eth0 up
  ip -n "$(ns "$inside")" route add default via "$lan.1"
  ip netns exec "$(ns "$gw")" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
  if [ "$1" != route ]; then
    ip netns exec "$(ns "$gw")" nft add table ip nat
    ip netns exec "$(ns "$gw")" nft 'add chain ip nat post { type nat hook postrouting priority 100; }'
    ip netns exec "$(ns "$gw")" nft "add rule ip nat post oifname wan ip saddr $lan.0/24 $*"
    ip netns exec "$(ns "$gw")" nft add table inet firewall
    ip netns exec "$(ns "$gw")" nft 'add chain inet firewall input { type filter hook input priority 0; }'
    ip netns exec "$(ns "$gw")" nft 'add rule inet firewall input iifname wan ct state established,related accept'
    ip netns exec "$(ns "$gw")" nft 'add rule inet firewall input iifname wan drop'
  fi
  ip -n "$INET" route add "$lan.0/24" via "$wan"
  ADDR[home$name]="$lan.2"
  ADDR[gw$name]="$wan"
}
home a 11 192.168.211 masquerade
home b 12 192.168.212 masquerade fully-random
home c 13 192.168.213 masquerade
home d 14 192.168.214 route
# Home D's network is routed, not hidden: every other namespace on the bridge reaches it.
for n in reach1 reach2 reach3 gwa gwb gwc; do ip -n "$(ns "$n")" route add 192.168.214.0/24 via "${ADDR[gwd]}"; done

export ALKAHEST_HOME="$WORK/home"
ALK="$ROOT/target/$DIR/alkahest"
D="$ROOT/target/$DIR/aether-d"
"$ALK" lattice init >/dev/null
in_inet() { ip netns exec "$INET" "$@"; }
admin() { echo "${ADDR[$1]}:17070"; }
INVITE="$("$ALK" invite --expires 1h 2>/dev/null)"

start() { # start NODE [extra args...]: spawns aether-d in the node's namespace
  local n=$1; shift
  local args=("$@")
  [ "$n" = reach1 ] || args+=(--join "${ADDR[reach1]}:7946")
  [ -d "$WORK/data-$n" ] || [ "$n" = reach1 ] || args+=(--invite "$INVITE")
  ip netns exec "$(ns "$n")" "$D" --data-dir "$WORK/data-$n" --bind "${ADDR[$n]}" \
    --http-port 18080 --admin-port 17070 --workers 1 --ebpf off "${args[@]}" \
    >>"$WORK/$n.log" 2>&1 &
  PIDS[$n]=$!
}
ready() { # ready NODE: its admin API answers
  for _ in $(seq 1 200); do in_inet curl -s -o /dev/null "http://$(admin "$1")/healthz" && return; sleep 0.05; done
  echo "$1 did not start; its log:" >&2; tail -20 "$WORK/$1.log" >&2; exit 1
}
NODES=(reach1 reach2 reach3 homea homeb homec homed)
node_id() { in_inet "$ALK" --node "$(admin "$1")" nodes --json | python3 -c "import json,sys; print(next(m['id'] for m in json.load(sys.stdin) if m['is_self']))"; }
# alive_in OBSERVER ID: whether OBSERVER sees ID alive
alive_in() { in_inet "$ALK" --node "$(admin "$1")" nodes --json 2>/dev/null | python3 -c "import json,sys; sys.exit(0 if any(m['id']=='$2' and m['state']=='alive' for m in json.load(sys.stdin)) else 1)"; }
alive_everywhere() { # alive_everywhere NODE ID
  local o
  for o in "${NODES[@]}"; do [ "$o" = "$1" ] && continue; alive_in "$o" "$2" || return 1; done
}
path_of() { # path_of FROM TO_ID
  in_inet "$ALK" --node "$(admin "$1")" nodes --json | python3 -c "import json,sys; print(next((m['path'] for m in json.load(sys.stdin) if m['id']=='$2'), ''))"
}

log "starting seven nodes"
start reach1 --label where=reach1; ready reach1
start reach2 --label where=reach2; ready reach2
start reach3 --label where=reach3; ready reach3
start homea --label where=homea; ready homea
start homeb --label where=homeb; ready homeb
start homec --label where=homec; ready homec
start homed --label where=homed; ready homed
declare -A NID=()
for n in "${NODES[@]}"; do NID[$n]="$(node_id "$n")"; done
for _ in $(seq 1 300); do
  ok=1
  for n in "${NODES[@]}"; do alive_everywhere "$n" "${NID[$n]}" || { ok=0; break; }; done
  [ "$ok" = 1 ] && break
  sleep 0.2
done
[ "$ok" = 1 ] || { echo "the seven nodes do not all see each other" >&2; exit 1; }

mkdir -p "$WORK/nated"
cp target/fixtures/probe.wasm "$WORK/nated/app.wasm"
printf 'name = "onhome"\ncomponent = "app.wasm"\n[http]\nroutes = ["/echo"]\n[intent]\nlabels = { where = "homea" }\n' >"$WORK/nated/Aetherfile"
in_inet "$ALK" --node "$(admin reach1)" deploy "$WORK/nated" --no-build >/dev/null

# The paths each case takes, once they settle.
for _ in $(seq 1 300); do
  pd="$(path_of homed "${NID[homea]}")"; pc="$(path_of homec "${NID[homea]}")"; pb="$(path_of homeb "${NID[homea]}")"
  if [ "$pd" = direct ] && [ "$pc" = punched ] && [[ "$pb" == relayed* ]] \
    && in_inet curl -sf -o /dev/null "http://${ADDR[homed]}:18080/echo" \
    && in_inet curl -sf -o /dev/null "http://${ADDR[homec]}:18080/echo" \
    && in_inet curl -sf -o /dev/null "http://${ADDR[homeb]}:18080/echo"; then settled=1; break; fi
  sleep 0.2
done
[ "${settled:-0}" = 1 ] || { echo "the paths did not settle: D→A $pd, C→A $pc, B→A $pb" >&2; exit 1; }
log "home D → home A: $pd; home C → home A: $pc; home B → home A: $pb"

measure() { # measure URL → "p50_ms req_s"
  in_inet wrk -t1 -c1 -d2s "$1" >/dev/null 2>&1 || true
  local p50 rps
  p50=$(in_inet wrk -t1 -c1 -d"${SECS}s" --latency "$1" | awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}')
  rps=$(in_inet wrk -t1 -c16 -d"${SECS}s" "$1" | awk '/Requests\/sec/ {print $2}')
  echo "$p50 $rps"
}
log "direct path"
read -r d50 drps <<<"$(measure "http://${ADDR[homed]}:18080/echo")"
log "punched path"
read -r p50 prps <<<"$(measure "http://${ADDR[homec]}:18080/echo")"
log "relayed path"
read -r r50 rrps <<<"$(measure "http://${ADDR[homeb]}:18080/echo")"

# Time to alive: restart a node and time until every other node sees it alive.
time_to_alive() { # time_to_alive NODE: sets TOOK to the seconds it took
  local n=$1 t0 t1
  kill -9 "${PIDS[$n]}"; wait "${PIDS[$n]}" 2>/dev/null || true
  # Wait until the others have declared it dead, so "alive" is news.
  for _ in $(seq 1 300); do alive_in reach1 "${NID[$n]}" || break; sleep 0.1; done
  t0=$(date +%s.%N)
  start "$n" --label "where=$n"
  for _ in $(seq 1 600); do alive_everywhere "$n" "${NID[$n]}" && break; sleep 0.05; done
  t1=$(date +%s.%N)
  TOOK=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
}
direct_times=(); nat_times=()
for r in $(seq 1 "$ROUNDS"); do
  log "time to alive, round $r"
  time_to_alive reach3; direct_times+=("$TOOK")
  time_to_alive homec; nat_times+=("$TOOK")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
dt=$(median "${direct_times[@]}"); nt=$(median "${nat_times[@]}")

pct() { python3 -c "print(f'{100*$1/$2:.0f}')"; }
echo "## NAT traversal: 3 reachable nodes and 4 homes in network namespaces ($PROFILE build)"
echo
echo "| path to the component on home A (behind NAT) | p50 (wrk -c1) | req/s (wrk -c16) | p50 against direct | req/s against direct |"
echo "|---|---:|---:|---:|---:|"
echo "| direct (through home D, routed: no punch, no relay) | $d50 ms | $drps | | |"
echo "| punched (home C → home A) | $p50 ms | $prps | $(python3 -c "print(f'{$p50-$d50:+.3f} ms ({100*$p50/$d50-100:+.0f} %)')") | $(pct "$prps" "$drps") % |"
echo "| relayed (home B → home A, $pb) | $r50 ms | $rrps | $(python3 -c "print(f'{$r50-$d50:+.3f} ms ({100*$r50/$d50-100:+.0f} %)')") | $(pct "$rrps" "$drps") % |"
echo
echo "Bars: punched within 10 % of direct; relayed adds ≤ 0.3 ms p50 and keeps ≥ 60 % of direct req/s."
echo
echo "| time from start to alive everywhere (median of $ROUNDS) | s | all rounds |"
echo "|---|---:|---|"
echo "| directly reachable node (reach3) | $dt | ${direct_times[*]} |"
echo "| NAT'd node (home C) | $nt | ${nat_times[*]} |"
echo
echo "NAT'd / direct: $(python3 -c "print(f'{$nt/$dt:.2f}')")× (bar ≤ 2×)."
