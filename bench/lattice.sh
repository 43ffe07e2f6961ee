#!/usr/bin/env bash
# Lattice benchmark: 5 real aether-d nodes on 127.0.0.41-45, one run, printed side by side.
#
#   bench/lattice.sh                      # full run (10 s per wrk measurement)
#   BENCH_DURATION=3s bench/lattice.sh    # quick run
#   SKIP_BUILD=1 bench/lattice.sh         # use target/release/{aether-d,alkahest} as built
#
# 1. served locally vs forwarded one hop: hello-wstd deployed with `replicas = 1`; the same
#    `wrk -t2 -c32 -d$BENCH_DURATION --latency` as the runtime bench (bench/run.sh), first
#    against the node that hosts it (reference), then against a node that forwards to it.
#    Then again with the host pinned to one core and the forwarding node and wrk to another
#    (taskset, when there are two cores or more): as if host and client ran on separate
#    machines, so the hop's work does not take CPU from the host.
# 2. kill-to-restored: SIGKILL the host; time until another node's `alkahest status --json`
#    shows the replica placed elsewhere and running (ROUNDS rounds; the node restarts between).
# 3. scale to zero across the lattice: a `replicas = { min = 0, max = 1 }` deployment idles to
#    zero, then the first request through a node that would not host it (forward + activation
#    from the compile cache on the best-ranked member) against the next, warm, request.
# 4. placement recomputation for 10 000 deployments on 1 000 members (aether-placement's
#    example).
#
# Installs wrk with apt-get when missing. All traffic stays on 127.0.0.41-45; every process
# started is stopped on exit.
set -euo pipefail
export LC_ALL=C
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/toolchain.sh"
DURATION="${BENCH_DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
WORKERS="${BENCH_WORKERS:-2}"   # ingress threads per node, as aether-d defaults on this machine
HTTP_PORT=18090
ADMIN_PORT=17090
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null 2>&1 || sudo apt-get install -y wrk >/dev/null; }
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 19 cargo build --release -p aether-d -p alkahest >&2
[ -f target/fixtures/hello-wstd.wasm ] || ./scripts/build-fixtures.sh >&2
WORK="$(mktemp -d)"
declare -A PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export ALKAHEST_HOME="$WORK/home"
ALK="$ROOT/target/release/alkahest"
"$ALK" lattice init >/dev/null
ip() { echo "127.0.0.$((40 + $1))"; }
admin() { echo "$(ip "$1"):$ADMIN_PORT"; }
log() { echo "[lattice bench] $*" >&2; }

start() { # start N [join]
  local n=$1 args=()
  if [ "$n" != 1 ]; then
    args=(--join "$(ip 1):7946" --invite "$("$ALK" invite --expires 1h)")
  fi
  "$ROOT/target/release/aether-d" --data-dir "$WORK/data$n" --bind "$(ip "$n")" \
    --http-port "$HTTP_PORT" --admin-port "$ADMIN_PORT" --workers "$WORKERS" "${args[@]}" \
    >>"$WORK/node$n.log" 2>&1 &
  PIDS[$n]=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$(admin "$n")/healthz" && return; sleep 0.1; done
  echo "node $n did not start; see its log:" >&2; tail -20 "$WORK/node$n.log" >&2; exit 1
}
for n in 1 2 3 4 5; do start "$n"; done
for _ in $(seq 1 100); do
  [ "$("$ALK" --node "$(admin 1)" nodes --json | grep -c '"state": "alive"')" = 5 ] && break
  sleep 0.2
done

deploy() { # deploy NAME INTENT
  mkdir -p "$WORK/$1"
  cp target/fixtures/hello-wstd.wasm "$WORK/$1/$1.wasm"
  printf 'name = "%s"\ncomponent = "%s.wasm"\n[http]\nroutes = ["/%s"]\n[intent]\n%s\n' \
    "$1" "$1" "$1" "$2" >"$WORK/$1/Aetherfile"
  "$ALK" --node "$(admin 1)" deploy "$WORK/$1" --no-build >/dev/null
}
# The node numbers hosting NAME, as node N sees it (running replicas only with "running").
hosts_of() { # hosts_of N NAME
  "$ALK" --node "$(admin "$1")" status "$2" --json 2>/dev/null | python3 -c '
import json, sys
p = json.load(sys.stdin).get("placement") or {}
ids = [h["node"] for h in p.get("hosts", []) if h["state"] == "running"]
print(" ".join(ids))'
}
node_of_id() { # node number whose id is $1
  for n in 1 2 3 4 5; do
    "$ALK" --node "$(admin "$n")" nodes --json 2>/dev/null | python3 -c '
import json, sys
me = [m["id"] for m in json.load(sys.stdin) if m["is_self"]]
sys.exit(0 if me and me[0] == sys.argv[1] else 1)' "$1" && { echo "$n"; return; }
  done
}
now_ms() { date +%s%3N; }

deploy hello 'replicas = 1'
host_id=""
for _ in $(seq 1 100); do host_id="$(hosts_of 1 hello)"; [ -n "$host_id" ] && break; sleep 0.1; done
host="$(node_of_id "$host_id")"
other=$(( host % 5 + 1 ))
log "hello runs on node $host; node $other forwards to it"
for n in "$host" "$other"; do
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://$(ip "$n"):$HTTP_PORT/hello" && break; sleep 0.1; done
done

bench() { # bench URL [wrk load args] -> "rps p50_ms p99_ms"
  local url=$1; shift
  local load=("$@"); [ ${#load[@]} -gt 0 ] || load=(-t2 -c32)
  wrk "${load[@]}" -d2s "$url" >/dev/null 2>&1
  wrk "${load[@]}" -d"$DURATION" --latency "$url" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}
log "wrk against the host (local) and against a forwarding node, $DURATION each"
read -r l_rps l_p50 l_p99 <<<"$(bench "http://$(ip "$host"):$HTTP_PORT/hello")"
read -r f_rps f_p50 f_p99 <<<"$(bench "http://$(ip "$other"):$HTTP_PORT/hello")"
log "the same with one connection (latency without queueing)"
read -r l1_rps l1_p50 l1_p99 <<<"$(bench "http://$(ip "$host"):$HTTP_PORT/hello" -t1 -c1)"
read -r f1_rps f1_p50 f1_p99 <<<"$(bench "http://$(ip "$other"):$HTTP_PORT/hello" -t1 -c1)"

pinned=""
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  log "again with the host on core 1, the forwarding node and wrk on core 0"
  taskset -a -p -c 1 "${PIDS[$host]}" >/dev/null
  taskset -a -p -c 0 "${PIDS[$other]}" >/dev/null
  taskset -p -c 0 $$ >/dev/null   # this shell, so wrk starts on core 0
  read -r pl_rps pl_p50 pl_p99 <<<"$(bench "http://$(ip "$host"):$HTTP_PORT/hello")"
  read -r pf_rps pf_p50 pf_p99 <<<"$(bench "http://$(ip "$other"):$HTTP_PORT/hello")"
  all="0-$(( $(nproc) - 1 ))"
  taskset -p -c "$all" $$ >/dev/null
  taskset -a -p -c "$all" "${PIDS[$host]}" >/dev/null
  taskset -a -p -c "$all" "${PIDS[$other]}" >/dev/null
  pinned=1
fi

echo "## Lattice: 5 nodes on loopback ($WORKERS ingress threads each), hello-wstd, wrk -t2 -c32 -d$DURATION"
echo
echo "| path | req/s | p50 (ms) | p99 (ms) |"
echo "|---|---:|---:|---:|"
echo "| served locally by its host (reference) | $l_rps | $l_p50 | $l_p99 |"
echo "| forwarded one hop over the mesh | $f_rps | $f_p50 | $f_p99 |"
echo "| one connection (wrk -t1 -c1): served locally | $l1_rps | $l1_p50 | $l1_p99 |"
echo "| one connection (wrk -t1 -c1): forwarded | $f1_rps | $f1_p50 | $f1_p99 |"
if [ -n "$pinned" ]; then
  echo "| host on its own core, wrk on another: served locally | $pl_rps | $pl_p50 | $pl_p99 |"
  echo "| host on its own core, forwarding node and wrk on another: forwarded | $pf_rps | $pf_p50 | $pf_p99 |"
fi
awk -v lr="$l_rps" -v fr="$f_rps" -v lp="$l_p50" -v fp="$f_p50" -v l1="$l1_p50" -v f1="$f1_p50" 'BEGIN {
  printf "forwarded: %.0f%% of local req/s (bar >= 50%%); p50 adds %.3f ms at 32 connections, %.3f ms at one (bar <= 0.5 ms)\n", 100 * fr / lr, fp - lp, f1 - l1 }'
[ -z "$pinned" ] || awk -v lr="$pl_rps" -v fr="$pf_rps" -v lp="$pl_p50" -v fp="$pf_p50" 'BEGIN {
  printf "on separate cores: forwarded %.0f%% of local req/s; p50 adds %.3f ms at 32 connections\n", 100 * fr / lr, fp - lp }'
echo

log "kill-to-restored, $ROUNDS rounds"
echo "| round | killed node | replica running elsewhere after (s) |"
echo "|---:|---:|---:|"
for r in $(seq 1 "$ROUNDS"); do
  victim_id="$(hosts_of 1 hello)"
  [ -z "$victim_id" ] && victim_id="$(hosts_of 2 hello)"
  victim="$(node_of_id "$victim_id")"
  observer=$(( victim % 5 + 1 ))
  t0=$(now_ms)
  kill -9 "${PIDS[$victim]}"; wait "${PIDS[$victim]}" 2>/dev/null || true; unset "PIDS[$victim]"
  restored=""
  for _ in $(seq 1 600); do
    now="$(hosts_of "$observer" hello)"
    if [ -n "$now" ] && [ "$now" != "$victim_id" ]; then restored=$(( $(now_ms) - t0 )); break; fi
    sleep 0.05
  done
  printf '| %d | %d | %s |\n' "$r" "$victim" "$(awk -v t="${restored:-nan}" 'BEGIN { if (t == "nan") print "not restored in 30 s"; else printf "%.2f", t / 1000 }')"
  start "$victim"
  for _ in $(seq 1 200); do [ -n "$(hosts_of "$victim" hello)" ] && break; sleep 0.1; done
  sleep 2
done
echo

log "scale to zero across the lattice"
deploy sleepy $'replicas = { min = 0, max = 1 }\nidle_timeout = "1s"'
sleep 1
zero_id=""
for _ in $(seq 1 100); do
  zero_id="$("$ALK" --node "$(admin 1)" status sleepy --json | python3 -c '
import json, sys
p = json.load(sys.stdin).get("placement") or {}
print("ok" if p.get("desired") == 1 and p.get("running") == 1 else "")')"
  [ -n "$zero_id" ] && break; sleep 0.1
done
cold=(); warm=()
for _ in $(seq 1 "$ROUNDS"); do
  for _ in $(seq 1 300); do
    d="$("$ALK" --node "$(admin 1)" status sleepy --json | python3 -c '
import json, sys
p = json.load(sys.stdin).get("placement") or {}
print(p.get("desired"), p.get("running"))')"
    [ "$d" = "0 0" ] && break; sleep 0.1
  done
  # A node that would not host the first replica (the best-ranked member does): it
  # forwards the activating request.
  first_id="$("$ALK" --node "$(admin 1)" status sleepy --json | python3 -c '
import json, sys
p = json.load(sys.stdin).get("placement") or {}
print(p["ranking"][0]["node"] if p.get("ranking") else "")')"
  first="$(node_of_id "$first_id")"
  target=$(( ${first:-1} % 5 + 1 ))
  cold+=("$(curl -s -o /dev/null -w '%{time_total}' "http://$(ip "$target"):$HTTP_PORT/sleepy")")
  warm+=("$(curl -s -o /dev/null -w '%{time_total}' "http://$(ip "$target"):$HTTP_PORT/sleepy")")
  sleep 3
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]*1000}'; }
echo "| scale to zero ($ROUNDS rounds, through a node that forwards to the activating one) | median (ms) |"
echo "|---|---:|"
echo "| warm request (reference) | $(median "${warm[@]}") |"
echo "| first request after the lattice scaled to zero (bar <= 50 ms) | $(median "${cold[@]}") |"
echo

log "placement recomputation (cargo example, release)"
nice -n 19 cargo run --release -q -p aether-placement --example placement_bench 2>/dev/null
