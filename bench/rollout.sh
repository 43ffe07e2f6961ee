#!/usr/bin/env bash
# Rollout benchmark: 5 real aether-d nodes on 127.0.0.61-65, one run, figures side by side.
#
#   bench/rollout.sh                        # release build
#   BENCH_PROFILE=dev bench/rollout.sh      # the tests' build (dependencies optimised)
#   SKIP_BUILD=1 bench/rollout.sh           # use the binaries as built
#   SHARED_CACHE=1 bench/rollout.sh         # the 5 nodes share one compile cache directory, as
#                                           # nodes on one machine may (each entry compiled once)
#
# 1. Rollout of the 18 MB Python component to 5 nodes, all at once: `alkahest deploy` →
#    rollout finished (every node serves it), against the floor measured in the same run:
#    copying the essence's bytes to 5 places over loopback TCP, plus one compile (a deploy of
#    the same essence to a lone node with an empty compile cache). Bar: ≤ 2× the floor.
# 2. Takeover: a second rollout (the Python component again, sealed anew), its driver killed
#    with SIGKILL during the precompile step; time from the kill to the next epoch's lease
#    (the next step started elsewhere) against the time until another node lists the driver
#    dead, in the same run. Bar: ≤ detection + 1 s.
# 3. Requests failed during a rollout: `wrk -t2 -c32` through one node for the whole rollout
#    of a new version of hello-wstd. Bar: 0.
# 4. The same during a canary rollout (`--strategy canary --steps 10,50 --interval 5s`): two
#    versions serve at once, the share moving under load. Bar: 0.
#
# Installs wrk with apt-get when missing. All traffic stays on 127.0.0.61-66; every process
# started is stopped on exit.
set -euo pipefail
export LC_ALL=C
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/toolchain.sh"
PROFILE="${BENCH_PROFILE:-release}"
DIR="$PROFILE"; [ "$PROFILE" = dev ] && DIR=debug
HTTP_PORT=18190
ADMIN_PORT=17190
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null 2>&1 || sudo apt-get install -y wrk >/dev/null; }
[ "${SKIP_BUILD:-0}" = 1 ] || nice -n 19 cargo build --profile "$PROFILE" -p aether-d -p alkahest >&2
[ -f target/fixtures/hello-py.wasm ] || ./scripts/build-fixtures.sh >&2
WORK="$(mktemp -d)"
declare -A PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export ALKAHEST_HOME="$WORK/home"
ALK="$ROOT/target/$DIR/alkahest"
D="$ROOT/target/$DIR/aether-d"
"$ALK" lattice init >/dev/null
ip() { echo "127.0.0.$((60 + $1))"; }
admin() { echo "$(ip "$1"):$ADMIN_PORT"; }
log() { echo "[rollout bench] $*" >&2; }
now_ms() { date +%s%3N; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

start() { # start N [extra args...]
  local n=$1; shift
  local args=("$@")
  if [ "$n" != 1 ] && [ "$n" != 6 ]; then
    args+=(--join "$(ip 1):7946" --invite "$("$ALK" invite --expires 1h)")
  fi
  if [ "${SHARED_CACHE:-0}" = 1 ] && [ "$n" != 6 ]; then
    args+=(--cache-dir "$WORK/shared-cache")
  fi
  "$D" --data-dir "$WORK/data$n" --bind "$(ip "$n")" --http-port "$HTTP_PORT" \
    --admin-port "$ADMIN_PORT" "${args[@]}" >>"$WORK/node$n.log" 2>&1 &
  PIDS[$n]=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$(admin "$n")/healthz" && return; sleep 0.1; done
  echo "node $n did not start; see its log:" >&2; tail -20 "$WORK/node$n.log" >&2; exit 1
}

project() { # project DIR NAME WASM ROUTE [ENV]
  mkdir -p "$1"
  cp "$3" "$1/$2.wasm"
  printf 'name = "%s"\ncomponent = "%s.wasm"\n[http]\nroutes = ["%s"]\n[env]\nV = "%s"\n' \
    "$2" "$2" "$4" "${5:-1}" >"$1/Aetherfile"
}

# --- the floor: copies over loopback and one compile ----------------------------------------
project "$WORK/py" py target/fixtures/hello-py.wasm /py 1
"$ALK" seal "$WORK/py" --no-build -o "$WORK/py.essence" >/dev/null
size=$(stat -c %s "$WORK/py.essence")
copy_ms=$(python3 - "$WORK/py.essence" <<'EOF'
import socket, sys, threading, time
data = open(sys.argv[1], "rb").read()
srv = socket.socket(); srv.bind(("127.0.0.66", 0)); srv.listen(5)
def sink():
    for _ in range(5):
        c, _ = srv.accept()
        while c.recv(1 << 20): pass
        c.close()
t = threading.Thread(target=sink); t.start()
start = time.monotonic()
for _ in range(5):
    s = socket.create_connection(srv.getsockname()); s.sendall(data); s.close()
t.join()
print(round((time.monotonic() - start) * 1000))
EOF
)
start 6 --no-mesh
t0=$(now_ms)
"$ALK" --node "$(admin 6)" deploy "$WORK/py.essence" >/dev/null
compile_ms=$(( $(now_ms) - t0 ))
kill -9 "${PIDS[6]}"; unset 'PIDS[6]'
floor_ms=$(( copy_ms + compile_ms ))
log "floor: 5 copies of $size bytes in $copy_ms ms + one compile-and-deploy in $compile_ms ms"

# --- the lattice -----------------------------------------------------------------------------
for n in 1 2 3 4 5; do start "$n"; done
for _ in $(seq 1 150); do
  [ "$("$ALK" --node "$(admin 1)" nodes --json | grep -c '"state": "alive"')" = 5 ] && break
  sleep 0.2
done

log "rollout of the Python component to 5 nodes"
t0=$(now_ms)
"$ALK" --node "$(admin 1)" deploy "$WORK/py.essence" >"$WORK/deploy1.out"
rollout_ms=$(( $(now_ms) - t0 ))
for n in 1 2 3 4 5; do curl -sf -o /dev/null "http://$(ip "$n"):$HTTP_PORT/py" || { echo "node $n does not serve /py" >&2; exit 1; }; done

log "takeover: a new rollout of it, its driver killed during precompile"
project "$WORK/py2" py target/fixtures/hello-py.wasm /py 2
"$ALK" seal "$WORK/py2" --no-build -o "$WORK/py2.essence" >/dev/null
id=$("$ALK" --node "$(admin 2)" deploy "$WORK/py2.essence" --detach --json | json 'd["rollout"]')
# The cache already holds the code (same wasm): the precompile step is short, so the driver is
# killed as soon as the step starts.
for _ in $(seq 1 300); do
  "$ALK" --node "$(admin 3)" rollout status "$id" --json | json 'any(s["name"] in ("distribute","precompile") and s["state"]=="running" for s in d["steps"])' | grep -q True && break
  sleep 0.05
done
driver_id=$("$ALK" --node "$(admin 2)" nodes --json | json '[m["id"] for m in d if m["is_self"]][0]')
kill_ms=$(now_ms)
kill -9 "${PIDS[2]}"; unset 'PIDS[2]'
dead_ms=""; taken_ms=""
for _ in $(seq 1 600); do
  if [ -z "$dead_ms" ] && "$ALK" --node "$(admin 3)" nodes --json | json "any(m['id']=='$driver_id' and m['state'] in ('dead','left') for m in d)" | grep -q True; then
    dead_ms=$(( $(now_ms) - kill_ms ))
  fi
  taken=$("$ALK" --node "$(admin 3)" rollout status "$id" --json | json 'd["leases"][-1]["taken_ms"] if len(d["leases"])>1 else ""')
  [ -n "$taken" ] && [ -z "$taken_ms" ] && taken_ms=$(( taken - kill_ms ))
  [ -n "$dead_ms" ] && [ -n "$taken_ms" ] && break
  sleep 0.05
done
"$ALK" --node "$(admin 3)" rollout watch "$id" >/dev/null || true
state=$("$ALK" --node "$(admin 3)" rollout status "$id" --json | json 'd["state"]')

log "requests during a rollout of hello-wstd under wrk -c32"
project "$WORK/hello" hello target/fixtures/hello-wstd.wasm /hello 1
"$ALK" --node "$(admin 1)" deploy "$WORK/hello" --no-build >/dev/null
project "$WORK/hello" hello target/fixtures/hello-wstd.wasm /hello 2
wrk -t2 -c32 -d20s "http://$(ip 4):$HTTP_PORT/hello" >"$WORK/wrk.out" 2>&1 &
wrk_pid=$!
sleep 2
t0=$(now_ms)
"$ALK" --node "$(admin 1)" deploy "$WORK/hello" --no-build >/dev/null
hello_ms=$(( $(now_ms) - t0 ))
wait "$wrk_pid"
requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out"); non2xx=${non2xx:-0}
errors=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$WORK/wrk.out"); errors=${errors:-0}

wrk_failures() { # wrk_failures FILE → non-2xx + socket errors
  local non2xx errors
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$1"); non2xx=${non2xx:-0}
  errors=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$1"); errors=${errors:-0}
  echo $(( non2xx + errors ))
}

log "requests during a canary rollout of hello-wstd under wrk -c32"
project "$WORK/hello" hello target/fixtures/hello-wstd.wasm /hello 3
wrk -t2 -c32 -d25s "http://$(ip 4):$HTTP_PORT/hello" >"$WORK/wrk-canary.out" 2>&1 &
wrk_pid=$!
sleep 2
t0=$(now_ms)
"$ALK" --node "$(admin 1)" deploy "$WORK/hello" --no-build --strategy canary --steps 10,50 --interval 5s >"$WORK/canary.out"
canary_ms=$(( $(now_ms) - t0 ))
wait "$wrk_pid"
canary_requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-canary.out")
canary_failed=$(wrk_failures "$WORK/wrk-canary.out")

echo "## Rollouts: 5 nodes on loopback ($PROFILE build$( [ "${SHARED_CACHE:-0}" = 1 ] && echo ", one compile cache shared by the 5 nodes"))"
echo
echo "| measurement | figure | reference, same run | ratio | bar |"
echo "|---|---:|---:|---:|---|"
echo "| deploy → every node serves the 18 MB Python component | $rollout_ms ms | floor $floor_ms ms (5 copies $copy_ms + one compile $compile_ms) | $(python3 -c "print(f'{$rollout_ms/$floor_ms:.2f}x')") | ≤ 2× |"
echo "| driver SIGKILLed → next epoch taken | ${taken_ms:-none} ms | death detected after ${dead_ms:-never} ms | $( [ -n "$taken_ms" ] && [ -n "$dead_ms" ] && echo "+$(( taken_ms - dead_ms )) ms" ) | ≤ detection + 1000 ms |"
echo "| that rollout ended | $state | | | finished |"
echo "| requests failed during a hello-wstd rollout ($hello_ms ms) under wrk -c32 | $(( non2xx + errors )) of $requests | | | 0 |"
echo "| requests failed during a hello-wstd canary (10%, 50%, 5 s each; $canary_ms ms) under wrk -c32 | $canary_failed of $canary_requests | | | 0 |"
