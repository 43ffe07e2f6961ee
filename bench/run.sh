#!/usr/bin/env bash
# Runtime benchmark: how fast does aether-d serve a wasi:http component, compared with a
# native hyper server and with `wasmtime serve` (pooled, and tuned with keep-resident
# options)? See /work/shared/DESIGN.md §3.1 and REFERENCES.md "Runtime" for the reference
# figures this reproduces.
#
#   bench/run.sh                      # full run (10 s per measurement)
#   BENCH_DURATION=3s bench/run.sh    # quick run
#
# Setups, each measured with `wrk -t2 -c32 -d$BENCH_DURATION --latency` after a 2 s warm-up:
#   native      bench/native-hello (hyper 1.x, multi-threaded tokio); once
#   pooled      wasmtime serve -Scli -O pooling-allocator=y
#   tuned       pooled + keep-resident memory 10 MiB, tables 1 MiB, async stacks 1 MiB
#   aether-d    the node daemon, component deployed with `alkahest deploy`
# for two components: target/fixtures/hello-wstd.wasm (small, Rust/wstd) and
# target/fixtures/hello-py.wasm (large, componentize-py).
# For aether-d also: restart → first 200 (compile cache warm, deployments restored from
# disk) and deploy of a second name → first 200.
#
# Progress goes to stderr; the results table to stdout and to target/bench/runtime-latest.md
# (raw wrk outputs and server logs of the last run: target/bench/last-run/).
#
# Environment:
#   BENCH_DURATION     wrk duration per measurement (default 10s)
#   BENCH_PORT_BASE    first of the 5 loopback ports used (default 18080)
#   BENCH_SKIP_AETHER  1: do not build or measure aether-d
#   BENCH_NICE         prefix for build commands (default "nice -n 19"; "" to disable)
#
# Installs what it needs when missing: wrk (apt-get), wasmtime-cli 50.0.1 into
# target/bench-tools (cargo install, takes a long while the first time).
# All traffic stays on 127.0.0.1; every process started is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/toolchain.sh"

DURATION="${BENCH_DURATION:-10s}"
WARMUP="2s"
WRK_ARGS=(-t2 -c32)
PORT_BASE="${BENCH_PORT_BASE:-18080}"
P_NATIVE=$((PORT_BASE + 0))
P_POOLED=$((PORT_BASE + 1))
P_TUNED=$((PORT_BASE + 2))
P_AETHER=$((PORT_BASE + 3))
P_ADMIN=$((PORT_BASE + 4))
ALL_PORTS=("$P_NATIVE" "$P_POOLED" "$P_TUNED" "$P_AETHER" "$P_ADMIN")
read -r -a NICE <<<"${BENCH_NICE-nice -n 19}"

WASMTIME_VERSION="50.0.1"
TOOLS="$ROOT/target/bench-tools"
WASMTIME="$TOOLS/bin/wasmtime"
NATIVE_BIN="$ROOT/target/bench-native/release/native-hello"
AETHER_D="$ROOT/target/release/aether-d"
ALKAHEST="$ROOT/target/release/alkahest"
FIXTURES="$ROOT/target/fixtures"
COMPONENTS=(hello-wstd hello-py)   # the first one is the reference for native's ratios
OUT_DIR="$ROOT/target/bench"
OUT_MD="$OUT_DIR/runtime-latest.md"
RAW="$OUT_DIR/last-run"

# wasmtime serve options (names checked against `wasmtime -O help` of 50.0.1).
WT_POOLED=(-Scli -O pooling-allocator=y)
WT_TUNED=("${WT_POOLED[@]}"
    -O pooling-memory-keep-resident=10485760
    -O pooling-table-keep-resident=1048576
    -O pooling-async-stack-keep-resident=1048576)

READY_TIMEOUT=300   # s: server start (wasmtime compiles the 18 MB component at startup)
STOP_TIMEOUT=10     # s: SIGTERM → SIGKILL

log() { printf '[bench] %s\n' "$*" >&2; }
warn() { printf '[bench] warning: %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/aether-bench.XXXXXX")"
PIDFILE="$TMP/pids"      # every server started (also from subshells), for the exit trap
RESULTS="$TMP/results"   # setup|component|rps|p50|p99|rss_idle|rss_end|errors
EXTRAS="$TMP/extras"     # free-form result lines printed under the table
: >"$PIDFILE"; : >"$RESULTS"; : >"$EXTRAS"

# --- processes ----------------------------------------------------------------------------
alive() {   # running and not a zombie
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

stop_proc() {
    local pid="$1" i
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT * 20; i++)); do
            alive "$pid" || break
            sleep 0.05
        done
        if alive "$pid"; then
            warn "pid $pid ignored SIGTERM for ${STOP_TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.1
        fi
    fi
    wait "$pid" 2>/dev/null || true
    sed -i "/^$pid\$/d" "$PIDFILE" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if [[ -s "$PIDFILE" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] && stop_proc "$pid"
        done < <(cat "$PIDFILE")
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start LOGFILE CMD...: runs CMD in the background; its pid in $STARTED.
start() {
    local logfile="$1"; shift
    "$@" >"$logfile" 2>&1 </dev/null &
    STARTED=$!
    echo "$STARTED" >>"$PIDFILE"
}

# --- ports and HTTP -------------------------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_free() {
    local p
    for p in "$@"; do
        ! port_busy "$p" || die "port 127.0.0.1:$p is in use (set BENCH_PORT_BASE to move the 5 ports)"
    done
}

http_code() {   # prints the status, 000 when nothing answers
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

# wait_200 URL PID LOGFILE [TIMEOUT]: until URL answers 200, the process dies or time runs out.
wait_200() {
    local url="$1" pid="$2" logfile="$3" timeout="${4:-$READY_TIMEOUT}" deadline
    deadline=$((SECONDS + timeout))
    while [[ "$(http_code "$url")" != 200 ]]; do
        if ! alive "$pid"; then
            tail -n 20 "$logfile" >&2 || true
            die "server (pid $pid) exited before $url answered 200; log: $logfile"
        fi
        ((SECONDS < deadline)) || { tail -n 20 "$logfile" >&2 || true; die "$url: no 200 within ${timeout}s"; }
        sleep 0.2
    done
}

# poll_200_since T0_NS URL [TIMEOUT]: tight loop (1 ms sleeps); prints ms from T0 to first 200.
poll_200_since() {
    local t0="$1" url="$2" timeout="${3:-120}" deadline
    deadline=$((SECONDS + timeout))
    until [[ "$(http_code "$url")" == 200 ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.001
    done
    awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'
}

now_ns() { date +%s%N; }

rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024; found = 1 } END { if (!found) printf "?" }' \
        "/proc/$1/status" 2>/dev/null || printf '?'
}

# --- wrk ---------------------------------------------------------------------------------------
to_ms() {   # wrk latency ("812.00us", "1.23ms", "2.01s", "1.00m") → ms
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        else if (u != "ms") { print "?"; exit }
        printf (n < 10 ? "%.2f" : "%.1f"), n
    }'
}

# measure SETUP COMPONENT URL PID: warm-up, measured run, RSS samples; appends to $RESULTS.
measure() {
    local setup="$1" comp="$2" url="$3" pid="$4" out rss_idle rss_end rps p50 p99 non2xx sockerr errors
    out="$RAW/wrk-$setup-$comp.txt"
    rss_idle="$(rss_mib "$pid")"
    log "$setup / $comp: warm-up $WARMUP, then wrk ${WRK_ARGS[*]} -d$DURATION on $url"
    timeout 120 wrk "${WRK_ARGS[@]}" -d"$WARMUP" "$url" >"$RAW/wrk-$setup-$comp-warmup.txt" 2>&1 \
        || die "wrk warm-up failed against $url (see $RAW/wrk-$setup-$comp-warmup.txt)"
    timeout 900 wrk "${WRK_ARGS[@]}" -d"$DURATION" --latency "$url" >"$out" 2>&1 \
        || die "wrk failed against $url (see $out)"
    alive "$pid" || die "$setup server died during the run"
    rss_end="$(rss_mib "$pid")"
    rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")"
    p50="$(to_ms "$(awk '/Latency Distribution/ { f = 1; next } f && $1 == "50%" { print $2; exit }' "$out")")"
    p99="$(to_ms "$(awk '/Latency Distribution/ { f = 1; next } f && $1 == "99%" { print $2; exit }' "$out")")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")"
    sockerr="$(sed -n 's/^ *Socket errors: *//p' "$out")"
    errors=""
    [[ -n "$non2xx" ]] && errors="non-2xx: $non2xx"
    [[ -n "$sockerr" ]] && errors="${errors:+$errors; }socket: $sockerr"
    [[ -n "$rps" ]] || die "could not parse wrk output $out"
    log "  $rps req/s, p50 $p50 ms, p99 $p99 ms, RSS $rss_idle → $rss_end MiB${errors:+ ($errors)}"
    echo "$setup|$comp|$rps|$p50|$p99|$rss_idle|$rss_end|$errors" >>"$RESULTS"
}

# --- setup ----------------------------------------------------------------------------------------
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

ensure_wrk() {
    command -v wrk >/dev/null && return
    log "installing wrk"
    if ! as_root apt-get install -y wrk >&2; then
        as_root apt-get update >&2
        as_root apt-get install -y wrk >&2
    fi
    command -v wrk >/dev/null || die "wrk is still missing"
}

ensure_wasmtime() {
    if [[ -x "$WASMTIME" ]] && "$WASMTIME" --version 2>/dev/null | grep -q "^wasmtime $WASMTIME_VERSION\b"; then
        return
    fi
    log "installing wasmtime-cli $WASMTIME_VERSION into ${TOOLS#"$ROOT"/} (takes a while)"
    local t0=$SECONDS
    "${NICE[@]}" cargo install --locked wasmtime-cli --version "$WASMTIME_VERSION" --root "$TOOLS" >&2
    log "wasmtime-cli installed in $((SECONDS - t0)) s"
    "$WASMTIME" --version | grep -q "^wasmtime $WASMTIME_VERSION\b" || die "$WASMTIME is not $WASMTIME_VERSION"
}

check_wasmtime_options() {   # fail early, with a clear message, if an option name is wrong
    local help opt
    help="$("$WASMTIME" -O help 2>&1)" || die "wasmtime -O help failed"
    for opt in pooling-allocator pooling-memory-keep-resident pooling-table-keep-resident \
        pooling-async-stack-keep-resident; do
        grep -q -- "-O  *$opt[=[]" <<<"$help" || die "wasmtime $WASMTIME_VERSION has no -O $opt"
    done
    "$WASMTIME" serve --help 2>&1 | grep -q -- '--addr' || die "wasmtime serve has no --addr"
}

build_native() {
    log "building bench/native-hello (release)"
    "${NICE[@]}" cargo build --quiet --release --manifest-path "$ROOT/bench/native-hello/Cargo.toml" \
        --target-dir "$ROOT/target/bench-native" >&2
    [[ -x "$NATIVE_BIN" ]] || die "missing $NATIVE_BIN"
}

build_fixtures() {
    log "building fixtures (scripts/build-fixtures.sh)"
    "${NICE[@]}" "$ROOT/scripts/build-fixtures.sh" >&2
    local c
    for c in "${COMPONENTS[@]}"; do
        [[ -f "$FIXTURES/$c.wasm" ]] || die "missing $FIXTURES/$c.wasm"
    done
}

AETHER_OK=0
build_aether() {
    if [[ "${BENCH_SKIP_AETHER:-0}" == 1 ]]; then
        log "BENCH_SKIP_AETHER=1: not measuring aether-d"
        echo "aether-d: skipped (BENCH_SKIP_AETHER=1)" >>"$EXTRAS"
        return
    fi
    log "building aether-d and alkahest (release)"
    if "${NICE[@]}" cargo build --quiet --release -p aether-d -p alkahest >&2 \
        && [[ -x "$AETHER_D" && -x "$ALKAHEST" ]]; then
        AETHER_OK=1
    else
        warn "aether-d / alkahest did not build; measuring everything else"
        echo "aether-d: not measured (cargo build --release -p aether-d -p alkahest failed)" >>"$EXTRAS"
    fi
}

# --- the setups -------------------------------------------------------------------------------------
bench_native() {
    local logfile="$RAW/native.log"
    log "native hyper on 127.0.0.1:$P_NATIVE"
    start "$logfile" "$NATIVE_BIN" "127.0.0.1:$P_NATIVE"
    local pid=$STARTED
    wait_200 "http://127.0.0.1:$P_NATIVE/" "$pid" "$logfile" 30
    measure native "-" "http://127.0.0.1:$P_NATIVE/" "$pid"
    stop_proc "$pid"
}

# bench_wasmtime SETUP PORT COMPONENT OPTIONS...
bench_wasmtime() {
    local setup="$1" port="$2" comp="$3"; shift 3
    local logfile="$RAW/$setup-$comp.log" t0=$SECONDS
    require_free "$port"
    log "wasmtime serve ($setup) $comp.wasm on 127.0.0.1:$port: $*"
    start "$logfile" "$WASMTIME" serve "$@" --addr "127.0.0.1:$port" "$FIXTURES/$comp.wasm"
    local pid=$STARTED
    wait_200 "http://127.0.0.1:$port/" "$pid" "$logfile"
    log "  ready after $((SECONDS - t0)) s"
    measure "$setup" "$comp" "http://127.0.0.1:$port/" "$pid"
    stop_proc "$pid"
}

# Aether helpers. $H is ALKAHEST_HOME (one lattice for the whole run).
H="$TMP/alkahest-home"
AETHER_PID=""

aether_start() {   # aether_start DATA_DIR LOGFILE
    require_free "$P_AETHER" "$P_ADMIN"
    start "$2" env ALKAHEST_HOME="$H" "$AETHER_D" --data-dir "$1" \
        --listen "127.0.0.1:$P_AETHER" --admin-listen "127.0.0.1:$P_ADMIN"
    AETHER_PID=$STARTED
}

aether_wait_healthy() {
    local deadline=$((SECONDS + 60))
    until curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$P_ADMIN/healthz"; do
        alive "$AETHER_PID" || { tail -n 20 "$1" >&2 || true; die "aether-d exited; log: $1"; }
        ((SECONDS < deadline)) || die "aether-d: /healthz did not answer within 60 s"
        sleep 0.05
    done
}

# aether_deploy NAME WASM ROUTE
aether_deploy() {
    local dir="$TMP/project-$1"
    mkdir -p "$dir"
    printf 'name = "%s"\ncomponent = "%s"\n[http]\nroutes = ["%s"]\n[limits]\nmax_concurrency = 1000\n' \
        "$1" "$2" "$3" >"$dir/Aetherfile"
    ALKAHEST_HOME="$H" "$ALKAHEST" --node "127.0.0.1:$P_ADMIN" deploy "$dir" >>"$RAW/alkahest.log" 2>&1 \
        || { tail -n 20 "$RAW/alkahest.log" >&2; die "alkahest deploy $1 failed; log: $RAW/alkahest.log"; }
}

bench_aether() {   # bench_aether COMPONENT; runs in a subshell
    local comp="$1" wasm="$FIXTURES/$1.wasm" data="$TMP/aether-data-$1" logfile="$RAW/aether-d-$1.log"
    local url="http://127.0.0.1:$P_AETHER/" t0 ms
    # Creates the lattice keys once; does nothing when they exist.
    ALKAHEST_HOME="$H" "$ALKAHEST" lattice init >>"$RAW/alkahest.log" 2>&1 \
        || { tail -n 20 "$RAW/alkahest.log" >&2; die "alkahest lattice init failed"; }

    log "aether-d with $comp.wasm on 127.0.0.1:$P_AETHER (admin $P_ADMIN)"
    t0=$SECONDS
    aether_start "$data" "$logfile"
    aether_wait_healthy "$logfile"
    aether_deploy bench "$wasm" /
    wait_200 "$url" "$AETHER_PID" "$logfile"
    log "  started and deployed in $((SECONDS - t0)) s"
    sleep 1
    measure aether-d "$comp" "$url" "$AETHER_PID"

    # Restart: deployments restored from DATA_DIR, compiled code from the warm cache.
    log "aether-d restart → first 200 ($comp)"
    stop_proc "$AETHER_PID"
    logfile="$RAW/aether-d-$comp-restart.log"
    t0="$(now_ns)"
    aether_start "$data" "$logfile"
    ms="$(poll_200_since "$t0" "$url")" || die "no 200 on $url within 120 s after restart"
    log "  $ms ms"
    echo "aether-d restart → first 200 on / ($comp, compile cache warm): $ms ms" >>"$EXTRAS"

    # Deploy of a second name, same wasm (compiled code cached). Routes match by prefix, so
    # "bench" on / would answer /b2 as well: remove it first, and check /b2 is unserved.
    log "aether-d deploy bench2 → first 200 on /b2 ($comp)"
    aether_wait_healthy "$logfile"
    ALKAHEST_HOME="$H" "$ALKAHEST" --node "127.0.0.1:$P_ADMIN" remove bench >>"$RAW/alkahest.log" 2>&1 \
        || { tail -n 20 "$RAW/alkahest.log" >&2; die "alkahest remove bench failed"; }
    local code
    code="$(http_code "http://127.0.0.1:$P_AETHER/b2")"
    [[ "$code" != 200 ]] || die "/b2 still answers 200 after removing bench"
    t0="$(now_ns)"
    aether_deploy bench2 "$wasm" /b2
    ms="$(poll_200_since "$t0" "http://127.0.0.1:$P_AETHER/b2")" || die "no 200 on /b2 within 120 s"
    log "  $ms ms"
    echo "aether-d deploy (alkahest deploy start) → first 200 on /b2 ($comp, compiled code cached): $ms ms" >>"$EXTRAS"
    stop_proc "$AETHER_PID"
}

# --- report ---------------------------------------------------------------------------------------
report() {
    local ref="${COMPONENTS[0]}"
    awk -F'|' -v ref="$ref" '
        function ratio(a, b) { return (b > 0 && a != "") ? sprintf("%.2f×", a / b) : "—" }
        { rows[NR] = $0; if ($1 == "pooled") pooled[$2] = $3; if ($1 == "tuned") tuned[$2] = $3 }
        END {
            print "| setup | component | req/s | p50 (ms) | p99 (ms) | vs pooled wasmtime | vs tuned wasmtime | RSS idle → end (MiB) | errors |"
            print "|---|---|---:|---:|---:|---:|---:|---:|---|"
            for (i = 1; i <= NR; i++) {
                split(rows[i], f, "|")
                c = (f[2] == "-") ? ref : f[2]
                name = (f[2] == "-") ? "— (ratios vs " ref ")" : f[2]
                printf "| %s | %s | %s | %s | %s | %s | %s | %s → %s | %s |\n", \
                    f[1], name, f[3], f[4], f[5], ratio(f[3], pooled[c]), ratio(f[3], tuned[c]), \
                    f[6], f[7], f[8]
            }
        }' "$RESULTS"
}

# --- main -------------------------------------------------------------------------------------------
main() {
    mkdir -p "$OUT_DIR"
    rm -rf "$RAW"; mkdir -p "$RAW"
    require_free "${ALL_PORTS[@]}"
    command -v curl >/dev/null || die "curl not found"

    ensure_wrk
    ensure_wasmtime
    check_wasmtime_options
    build_native
    build_fixtures
    build_aether

    local load_before
    load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
    log "load average before measuring: $load_before (other work on the machine skews results)"

    bench_native
    local comp rc pid
    for comp in "${COMPONENTS[@]}"; do
        bench_wasmtime pooled "$P_POOLED" "$comp" "${WT_POOLED[@]}"
        bench_wasmtime tuned "$P_TUNED" "$comp" "${WT_TUNED[@]}"
        if ((AETHER_OK)); then
            # In a subshell so that a failing aether-d leaves the other results standing.
            set +e
            (set -e; bench_aether "$comp")
            rc=$?
            set -e
            if ((rc != 0)); then
                warn "aether-d with $comp failed (logs: $RAW)"
                echo "aether-d with $comp: failed, see target/bench/last-run/" >>"$EXTRAS"
                while read -r pid; do stop_proc "$pid"; done < <(cat "$PIDFILE")
            fi
        fi
    done

    local idle
    idle="$(awk -F'|' '$1 == "aether-d" { printf "%s%s: %s MiB", (n++ ? ", " : ""), $2, $6 }' "$RESULTS")"
    {
        echo "# Aether runtime benchmark"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')," \
            "$(nproc) CPUs, $(uname -r), $("$WASMTIME" --version)."
        echo "wrk ${WRK_ARGS[*]} -d$DURATION --latency after a $WARMUP warm-up; load average before: $load_before."
        echo
        report
        echo
        [[ -n "$idle" ]] && echo "- aether-d idle RSS after start + deploy: $idle"
        sed 's/^/- /' "$EXTRAS"
        echo "- pooled: \`wasmtime serve ${WT_POOLED[*]}\`; tuned: \`wasmtime serve ${WT_TUNED[*]}\`"
        echo "- Timings to first 200 poll with curl every ~1 ms; each curl call adds a few ms of resolution."
    } >"$OUT_MD"
    cat "$OUT_MD"
    log "written to ${OUT_MD#"$ROOT"/}"
}

main "$@"
