#!/usr/bin/env bash
# Scale-to-zero activation: a `replicas = { min = 0, max = 1 }` hello component with a 1 s idle
# timeout on one release aether-d (127.0.0.81); each round waits until the node has unloaded it,
# then times the first request (activation from the compile cache + serving) against a warm
# request right after it, in the same run. ROUNDS (default 20). Loopback only.
set -euo pipefail
export LC_ALL=C
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/toolchain.sh"
ROUNDS="${ROUNDS:-20}"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p aether-d -p alkahest >&2
[ -f target/fixtures/hello.wasm ] || ./scripts/build-fixtures.sh >&2
WORK="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export ALKAHEST_HOME="$WORK/home"
ALK="$ROOT/target/release/alkahest"
"$ALK" lattice init >/dev/null
mkdir -p "$WORK/app"
cp target/fixtures/hello.wasm "$WORK/app/sleepy.wasm"
cat >"$WORK/app/Aetherfile" <<'TOML'
name = "sleepy"
component = "sleepy.wasm"
[http]
routes = ["/"]
[intent]
replicas = { min = 0, max = 1 }
idle_timeout = "1s"
TOML
"$ROOT/target/release/aether-d" --data-dir "$WORK/data" --bind 127.0.0.81 --http-port 18081 \
  --admin-port 17081 --no-mesh --workers 1 2>"$WORK/node.log" &
PID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.81:17081/healthz && break; sleep 0.1; done
"$ALK" --node 127.0.0.81:17081 deploy "$WORK/app" --no-build >/dev/null
curl -s -o /dev/null http://127.0.0.81:18081/   # compile once; the cache holds the code
cold=(); warm=()
for _ in $(seq 1 "$ROUNDS"); do
  for _ in $(seq 1 100); do
    "$ALK" --node 127.0.0.81:17081 status sleepy --json | grep -q '"scaled-to-zero"' && break
    sleep 0.1
  done
  cold+=("$(curl -s -o /dev/null -w '%{time_total}' http://127.0.0.81:18081/)")
  warm+=("$(curl -s -o /dev/null -w '%{time_total}' http://127.0.0.81:18081/)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]*1000}'; }
maxv() { printf '%s\n' "$@" | sort -g | tail -1 | awk '{print $1*1000}'; }
c=$(median "${cold[@]}"); w=$(median "${warm[@]}")
echo "| first request after scale to zero vs warm ($ROUNDS rounds) | median (ms) | max (ms) |"
echo "|---|---:|---:|"
echo "| warm request (reference) | $w | $(maxv "${warm[@]}") |"
echo "| first request, activating from zero | $c | $(maxv "${cold[@]}") |"
awk -v c="$c" -v w="$w" 'BEGIN { printf "activation adds %.2f ms (%.1fx the warm request)\n", c - w, c / w }'
