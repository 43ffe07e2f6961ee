#!/usr/bin/env bash
# Small-node benchmark: how big is the distributed aether-d, and how much memory does an idle
# node hold?
#
#   bench/size.sh                 # builds `--profile dist` (long the first time) and measures
#   BENCH_SIZE_BIN=PATH bench/size.sh   # measures that aether-d binary instead of building
#
# Figures:
#   - size of target/dist/aether-d, next to target/release/aether-d when that exists (the
#     release profile keeps line tables for profiling);
#   - idle RSS (VmRSS, with its anonymous and file-backed parts) of a node started alone:
#     right after start; with the example (target/fixtures/hello.wasm) deployed and answering;
#     after the 18 MB Python component (target/fixtures/hello-py.wasm) has been compiled,
#     deployed and answered once; and after a restart that restores both from the cache.
#   - the same node with --compile-in-process, the reference: what the compiler leaves behind
#     when it runs inside the node.
# RSS is read 2 s after the last request, so the node is idle.
#
# Prints a Markdown table to stdout and to target/bench/size-latest.md. Traffic stays on
# 127.0.0.1; every process started is stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/toolchain.sh"

PORT_BASE="${BENCH_PORT_BASE:-18180}"
P_HTTP=$((PORT_BASE + 0))
P_ADMIN=$((PORT_BASE + 1))
FIXTURES="$ROOT/target/fixtures"
OUT_DIR="$ROOT/target/bench"
OUT_MD="$OUT_DIR/size-latest.md"
read -r -a NICE <<<"${BENCH_NICE-nice -n 19}"

log() { printf '[size] %s\n' "$*" >&2; }
die() { printf '[size] error: %s\n' "$*" >&2; exit 1; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/aether-size.XXXXXX")"
PID=""
cleanup() {
    [[ -n "$PID" ]] && kill -KILL "$PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# --- binaries ---------------------------------------------------------------------------------
if [[ -n "${BENCH_SIZE_BIN:-}" ]]; then
    AETHER_D="$BENCH_SIZE_BIN"
else
    log "building aether-d with --profile dist (fat LTO, one codegen unit: about 25 min cold on 2 cores)"
    "${NICE[@]}" cargo build --quiet --profile dist -p aether-d --bin aether-d
    AETHER_D="$ROOT/target/dist/aether-d"
fi
[[ -x "$AETHER_D" ]] || die "$AETHER_D is not an executable"
log "building alkahest (dev profile; it only talks to the node)"
cargo build --quiet -p alkahest
ALKAHEST="$ROOT/target/debug/alkahest"
[[ -f "$FIXTURES/hello.wasm" && -f "$FIXTURES/hello-py.wasm" ]] || ./scripts/build-fixtures.sh

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# rss PID → "total anon file" in MiB
rss() {
    awk '/^VmRSS:/ { t = $2 } /^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } /^RssShmem:/ { s = $2 }
         END { printf "%.1f %.1f %.1f", t / 1024, a / 1024, (f + s) / 1024 }' "/proc/$1/status"
}

wait_200() {   # URL
    local deadline=$((SECONDS + 300))
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true)" == 200 ]]; do
        kill -0 "$PID" 2>/dev/null || { tail -n 20 "$TMP/node.log" >&2; die "aether-d exited"; }
        ((SECONDS < deadline)) || die "$1: no 200 within 300 s"
        sleep 0.1
    done
}

H="$TMP/home"
ALKAHEST_HOME="$H" "$ALKAHEST" lattice init >/dev/null 2>&1 || die "alkahest lattice init failed"

node_start() {   # DATA_DIR EXTRA...
    local data="$1"; shift
    ALKAHEST_HOME="$H" "$AETHER_D" --data-dir "$data" --no-mesh \
        --listen "127.0.0.1:$P_HTTP" --admin-listen "127.0.0.1:$P_ADMIN" "$@" \
        >>"$TMP/node.log" 2>&1 </dev/null &
    PID=$!
    local deadline=$((SECONDS + 60))
    until curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$P_ADMIN/healthz"; do
        kill -0 "$PID" 2>/dev/null || { tail -n 20 "$TMP/node.log" >&2; die "aether-d exited"; }
        ((SECONDS < deadline)) || die "aether-d: /healthz did not answer within 60 s"
        sleep 0.05
    done
}

node_stop() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}

deploy() {   # NAME WASM ROUTE: returns once the node has compiled and loaded it
    local dir="$TMP/project-$1"
    mkdir -p "$dir"
    printf 'name = "%s"\ncomponent = "%s"\n[http]\nroutes = ["%s"]\n' "$1" "$2" "$3" >"$dir/Aetherfile"
    ALKAHEST_HOME="$H" "$ALKAHEST" --node "127.0.0.1:$P_ADMIN" deploy "$dir" >>"$TMP/alkahest.log" 2>&1 \
        || { tail -n 20 "$TMP/alkahest.log" >&2; die "alkahest deploy $1 failed"; }
}

ROWS="$TMP/rows"
: >"$ROWS"
sample() {   # MODE WHAT
    sleep 2
    echo "$1|$2|$(rss "$PID" | tr ' ' '|')" >>"$ROWS"
    log "  $1, $2: $(rss "$PID") MiB (total anon file)"
}

measure() {   # MODE EXTRA...
    local mode="$1"; shift
    local data="$TMP/data-$mode"
    log "node ($mode)"
    node_start "$data" "$@"
    sample "$mode" "started, nothing deployed"
    deploy hello "$FIXTURES/hello.wasm" /hello
    wait_200 "http://127.0.0.1:$P_HTTP/hello"
    sample "$mode" "example deployed, answered"
    deploy hello-py "$FIXTURES/hello-py.wasm" /py
    sample "$mode" "+ Python component compiled and deployed"
    wait_200 "http://127.0.0.1:$P_HTTP/py"
    sample "$mode" "+ Python component answered once"
    node_stop
    node_start "$data" "$@"
    wait_200 "http://127.0.0.1:$P_HTTP/hello"
    sample "$mode" "restarted (both restored from the cache), example answered"
    node_stop
}

measure worker
measure in-process --compile-in-process

# --- report -----------------------------------------------------------------------------------
dist_size="$(stat -c %s "$AETHER_D")"
release="$ROOT/target/release/aether-d"
mkdir -p "$OUT_DIR"
{
    echo "| binary | size (MiB) |"
    echo "|---|---:|"
    echo "| $(basename "$(dirname "$AETHER_D")")/aether-d | $(mib "$dist_size") |"
    if [[ -x "$release" ]]; then
        echo "| release/aether-d (line tables, thin LTO) | $(mib "$(stat -c %s "$release")") |"
    fi
    echo
    echo "| compiles | node | RSS (MiB) | anon | file-backed |"
    echo "|---|---|---:|---:|---:|"
    awk -F'|' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$ROWS"
    echo
    echo "Bar: ≤ 25 MB idle with the example deployed, and again after the Python component."
} | tee "$OUT_MD"
