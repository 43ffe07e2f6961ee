#!/usr/bin/env bash
# Membership on real processes: Aether's daemon against HashiCorp Serf, 5 nodes on loopback,
# side by side in one run.
#
#   bench/membership-vs-serf.sh                     # both systems, 5 rounds each
#   ROUNDS=3 SYSTEMS=serf bench/membership-vs-serf.sh
#   SKIP_BUILD=1 bench/membership-vs-serf.sh        # use the aether-d/alkahest already built
#
# What is measured, R times per system (R = $ROUNDS):
#   join-to-visible   from starting the 5th agent (joining a running 4-node cluster) until
#                     every one of the 5 agents lists all 5 as alive;
#   false dead        then, during a quiet $QUIET_SECS s window with all 5 up: how many times
#                     any agent listed a live member as failed/dead (one count per
#                     observer/member transition into failed/dead);
#   SIGKILL-to-dead   from `kill -9` of the 5th agent until the 4 others all list it as
#                     failed/dead.
# Round 1 is a first join; rounds 2..R restart the killed agent with the same identity (Serf:
# same node name and address; Aether: same data dir), so it rejoins a cluster that holds it
# as dead and must refute that with a higher incarnation. (A restarted aether-d lists the
# members it stored, all alive, from its first answer; in those rounds the time is in practice
# how long the 4 others take to see it alive again.)
#
# Every agent is polled by its own CLI every $POLL_MS ms (Serf: `serf members -format=json`
# on its RPC address; Aether: `alkahest --node IP:7070 nodes --json`), one poller thread per
# agent; a sample is timed at the middle of its CLI call. A time is the first moment at which
# the latest samples of all observers satisfy the condition.
#
# Serf: `serf agent -node sN -bind 127.0.0.(20+N):7946 -rpc-addr 127.0.0.(20+N):7373
#   -log-level=warn` (LAN profile, Serf's defaults), nodes 2..5 with `-join 127.0.0.21:7946`.
#   Installed with apt-get (sudo when not root) if `serf` is not on PATH.
# Aether: ALKAHEST_HOME in a temporary directory, `alkahest lattice init`; node 1
#   `aether-d --data-dir D1 --bind 127.0.0.31`; nodes 2..5 `aether-d --data-dir DN --bind
#   127.0.0.(30+N) --join 127.0.0.31:7946 --invite "$(alkahest invite --expires 1h)"`.
#   If the built binaries lack --join/--invite or `alkahest nodes`, or the cluster does not
#   form, Aether's rows say "aether: not available" and Serf's figures are still printed.
#   The commands are in aether_cmd / aether_poll_args below, easy to adjust. Exit status:
#   non-zero only when the Serf half fails.
#
# Output: progress on stderr; the markdown table on stdout and in
# target/bench/membership-vs-serf-latest.md; agents' logs and every poll sample of the last
# run in target/bench/membership-last-run/.
#
# Environment:
#   ROUNDS        rounds per system (default 5)
#   SYSTEMS       which halves to run, in order (default "serf aether")
#   SKIP_BUILD    1: do not run cargo build (use target/release/{aether-d,alkahest} as they are)
#   QUIET_SECS    length of the false-dead window (default 30)
#   POLL_MS       poll period per agent (default 50)
#   TIMEOUT_SECS  limit for one measurement or one setup step (default 60)
#   AETHER_D_ARGS extra arguments for every aether-d (word-split)
#   AETHER_D, ALKAHEST  other binaries than target/release/{aether-d,alkahest}
#
# All traffic stays on 127.0.0.0/8; every process started is stopped on exit.
set -euo pipefail
export LC_ALL=C   # '.' as the decimal point in $EPOCHREALTIME and printf

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/toolchain.sh"

ROUNDS="${ROUNDS:-5}"
SYSTEMS="${SYSTEMS:-serf aether}"
QUIET_SECS="${QUIET_SECS:-30}"
POLL_MS="${POLL_MS:-50}"
TIMEOUT_SECS="${TIMEOUT_SECS:-60}"
SETTLE_SECS=2          # after the 4-node cluster formed, before round 1
BETWEEN_SECS=1         # after a SIGKILL measurement, before the restart of the next round
STOP_TIMEOUT=10        # s: SIGTERM → SIGKILL when stopping agents at the end
N=5                    # cluster size (the 5th agent is the one that joins and is killed)

AETHER_D="${AETHER_D:-$ROOT/target/release/aether-d}"
ALKAHEST="${ALKAHEST:-$ROOT/target/release/alkahest}"
read -r -a AETHER_D_EXTRA <<<"${AETHER_D_ARGS:-}"

OUT_DIR="$ROOT/target/bench"
OUT_MD="$OUT_DIR/membership-vs-serf-latest.md"
RAW="$OUT_DIR/membership-last-run"

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
for s in $SYSTEMS; do
    [[ "$s" == serf || "$s" == aether ]] || { echo "SYSTEMS: unknown system '$s'" >&2; exit 2; }
done

log() { printf '[membench] %s\n' "$*" >&2; }
warn() { printf '[membench] warning: %s\n' "$*" >&2; }
die() { printf '[membench] error: %s\n' "$*" >&2; exit 1; }

TMP="$(mktemp -d "${TMPDIR:-/tmp}/membench.XXXXXX")"
PIDFILE="$TMP/pids"        # every process started (also from the halves' subshells)
RESULTS="$TMP/results"     # system metric round value   (value: seconds, count, timeout, n/a)
STATUS_DIR="$TMP/status"   # STATUS_DIR/SYSTEM: why a system is not available / failed
PY="$TMP/membench.py"
mkdir -p "$STATUS_DIR"
: >"$PIDFILE"; : >"$RESULTS"

# --- processes ----------------------------------------------------------------------------
alive() {   # running and not a zombie
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

forget_pid() { sed -i "/^$1\$/d" "$PIDFILE" 2>/dev/null || true; }

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
    forget_pid "$pid"
}

stop_all() {
    local pid
    [[ -s "$PIDFILE" ]] || return 0
    while read -r pid; do
        [[ -n "$pid" ]] && stop_proc "$pid"
    done < <(cat "$PIDFILE")
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start LOGFILE CMD...: CMD in the background (its own pid, no wrapper); pid in $STARTED.
start() {
    local logfile="$1"; shift
    "$@" >>"$logfile" 2>&1 </dev/null &
    STARTED=$!
    echo "$STARTED" >>"$PIDFILE"
}

# --- tools ----------------------------------------------------------------------------------
apt_install() {
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to apt-get install $*"
        sudo=(sudo)
    fi
    log "installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@" >&2 \
        || { "${sudo[@]}" apt-get update >&2 && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@" >&2; } \
        || die "apt-get install $* failed"
}

command -v python3 >/dev/null || apt_install python3
if [[ " $SYSTEMS " == *" serf "* ]] && ! command -v serf >/dev/null; then
    apt_install serf
fi

# Listening sockets on the addresses we are about to use (wildcard binds conflict too; a
# systemd-started serf agent from the Debian package listens on 0.0.0.0:7946).
check_free() {   # PROTO(t|u) IP PORT
    command -v ss >/dev/null || return 0
    local hit
    hit="$(ss -Hln"$1" 2>/dev/null | awk -v a="$2:$3" -v w1="0.0.0.0:$3" -v w2="*:$3" -v w3="[::]:$3" \
        '{ for (i = 4; i <= 5; i++) if ($i == a || $i == w1 || $i == w2 || $i == w3) { print $i; exit } }')"
    [[ -z "$hit" ]] || { echo "$hit ($1)"; return 1; }
}

# --- the JSON side: pollers, waits, counts, the report (python3, standard library only) ------
cat >"$PY" <<'PYEOF'
import json, os, shlex, signal, statistics, subprocess, sys, threading, time

ALIVE = {"alive"}
DEAD = {"failed", "dead"}
SUSPECT = {"suspect"}

def poll(out, interval_ms, list_path, key, state, template, *observers):
    """One thread per observer: run the CLI every interval, append one JSON line per sample:
    {"o": observer, "s": start, "e": end, "m": {member: state}} or {..., "err": text}."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    interval = float(interval_ms) / 1000.0
    lock = threading.Lock()
    f = open(out, "a", buffering=1)
    path = [p for p in list_path.split(".") if p]

    def loop(obs, addr):
        argv = shlex.split(template.replace("{addr}", addr))
        while True:
            s = time.time()
            rec = {"o": obs, "s": s}
            try:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=5)
                if p.returncode != 0:
                    rec["err"] = (p.stderr.decode(errors="replace").strip() or "exit %d" % p.returncode)[:160]
                else:
                    doc = json.loads(p.stdout)
                    for part in path:
                        doc = doc[part]
                    rec["m"] = {str(x[key]): str(x[state]).lower() for x in doc}
            except Exception as ex:  # timeout, bad JSON, missing field: an error sample
                rec["err"] = repr(ex)[:160]
            rec["e"] = time.time()
            with lock:
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            time.sleep(max(0.0, s + interval - time.time()))

    for o in observers:
        obs, addr = o.split("=", 1)
        threading.Thread(target=loop, args=(obs, addr), daemon=True).start()
    while True:
        time.sleep(3600)

def follow(path, deadline):
    """Yield the samples of the file, then new ones as they come, until the deadline."""
    buf = ""
    with open(path) as f:
        while True:
            chunk = f.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    if line:
                        yield json.loads(line)
            elif time.time() > deadline:
                return
            else:
                time.sleep(0.02)

def describe(rec):
    if rec is None:
        return "no sample"
    if "err" in rec:
        return "error: " + rec["err"]
    return " ".join("%s=%s" % kv for kv in sorted(rec["m"].items())) or "(empty list)"

def wait(path, t0, timeout, observers, mode, arg):
    """Seconds from t0 until every observer's latest sample satisfies the condition, or
    'timeout'. mode alive N: it lists at least N members alive; mode dead KEY: it lists KEY
    as failed/dead. Samples that started before t0 are ignored."""
    t0 = float(t0); observers = observers.split(",")
    def ok(rec):
        if "m" not in rec:
            return False
        if mode == "alive":
            return sum(1 for v in rec["m"].values() if v in ALIVE) >= int(arg)
        return rec["m"].get(arg) in DEAD
    streak = {o: None for o in observers}
    last = {o: None for o in observers}
    for rec in follow(path, t0 + float(timeout)):
        o = rec["o"]
        if o not in streak or rec["s"] < t0:
            continue
        last[o] = rec
        if ok(rec):
            if streak[o] is None:
                streak[o] = (rec["s"] + rec["e"]) / 2
        else:
            streak[o] = None
        if all(v is not None for v in streak.values()):
            print("%.3f" % (max(streak.values()) - t0))
            return
    print("timeout")
    print("[membench] %s %s: timeout after %ss; unsatisfied:" % (mode, arg, timeout), file=sys.stderr)
    for o in observers:
        if streak[o] is None:
            print("  observer %s, last sample: %s" % (o, describe(last[o])), file=sys.stderr)

def latest(path, observer, after, timeout):
    """Members listed alive in the first good sample of observer that started after `after`."""
    after = float(after)
    for rec in follow(path, after + float(timeout)):
        if rec["o"] == observer and rec["s"] >= after and "m" in rec:
            print(" ".join(sorted(k for k, v in rec["m"].items() if v in ALIVE)))
            return
    print("timeout")

def falsedead(path, t0, t1, observers, keys):
    """Counts, over samples started in [t0, t1]: transitions of (observer, member in keys)
    into failed/dead; the same into suspect; samples; error samples."""
    t0, t1 = float(t0), float(t1)
    observers, keys = set(observers.split(",")), set(keys.split(","))
    recs = []
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r["o"] in observers and t0 <= r["s"] <= t1:
                    recs.append(r)
    recs.sort(key=lambda r: r["s"])
    prev = {}; dead = suspect = errors = 0
    for r in recs:
        if "m" not in r:
            errors += 1
            continue
        for k in keys:
            st = r["m"].get(k)
            before = prev.get((r["o"], k), "alive")
            if st in DEAD and before not in DEAD:
                dead += 1
            if st in SUSPECT and before not in SUSPECT:
                suspect += 1
            if st is not None:
                prev[(r["o"], k)] = st
    print(dead, suspect, len(recs), errors)

METRICS = [
    ("join", "join → all 5 list all 5 alive", "s"),
    ("dead", "SIGKILL → all 4 others list it dead", "s"),
    ("falsedead", "false dead declarations per %s s quiet window", "n"),
]

def fmt(v, unit):
    if unit == "s":
        return "%.2f s" % v
    return ("%d" % v) if float(v).is_integer() else ("%.1f" % v)

def ratio(a, b):
    if b == 0:
        return "—" if a == 0 else "∞"
    return "%.2f×" % (a / b)

def report(results, status_dir, rounds, quiet, systems, *notes):
    data = {}
    with open(results) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                data.setdefault((parts[0], parts[1]), []).append(parts[3])
    systems = systems.split()
    def status(s):
        p = os.path.join(status_dir, s)
        return open(p).read().strip() if os.path.exists(p) else ""
    out = []
    out.append("| measurement (5 nodes, loopback) | system | median | max | rounds | ours/serf median | ours/serf max |")
    out.append("|---|---|---:|---:|---|---:|---:|")
    raw = []
    for m, title, unit in METRICS:
        title = title.replace("%s", quiet)
        stats = {}
        for s in ["serf", "aether"]:
            vals = data.get((s, m), [])
            nums = [float(v) for v in vals if v not in ("timeout", "n/a")]
            bad = [v for v in vals if v in ("timeout", "n/a")]
            if nums:
                stats[s] = (statistics.median(nums), max(nums))
            if s not in systems:
                continue
            if not vals:
                why = status(s) or "not measured"
                label = "%s: not available" % s if s == "aether" else "%s: %s" % (s, why)
                out.append("| %s | %s | %s | | | | |" % (title, s, label))
                continue
            cnt = "%d/%s" % (len(nums), rounds)
            if bad:
                cnt += " (%d timeout)" % bad.count("timeout") if "timeout" in bad else ""
                if "n/a" in bad:
                    cnt += " (%d n/a)" % bad.count("n/a")
            med = fmt(stats[s][0], unit) if nums else "—"
            mx = fmt(stats[s][1], unit) if nums else "—"
            r1 = r2 = ""
            if s == "aether" and "aether" in stats and "serf" in stats:
                r1 = ratio(stats["aether"][0], stats["serf"][0])
                r2 = ratio(stats["aether"][1], stats["serf"][1])
            out.append("| %s | %s | %s | %s | %s | %s | %s |" % (title, s, med, mx, cnt, r1, r2))
            raw.append("- %s %s, per round: %s" % (s, m, " ".join(vals)))
    out.append("")
    for s in systems:
        st = status(s)
        if st:
            out.append("- %s: %s" % (s, st))
    out.extend(raw)
    out.extend("- " + n for n in notes if n)
    print("\n".join(out))

if __name__ == "__main__":
    fn = {"poll": poll, "wait": wait, "latest": latest, "falsedead": falsedead, "report": report}[sys.argv[1]]
    fn(*sys.argv[2:])
PYEOF

now() { printf '%s' "$EPOCHREALTIME"; }

# ============================================================================================
# The two systems. Each provides:
#   SYS_ip N                node N's address
#   SYS_prepare             once, before anything starts (keys etc.)
#   SYS_cmd N               fills the array CMD with the command that starts node N (first start
#                           or restart; anything slow, like minting an invite, happens here,
#                           before the clock starts)
#   SYS_poll_args           fills POLL_ARGS: list_path key state template(with {addr})
#   SYS_obs_addr N          the address the poll template gets for node N
# ============================================================================================

# --- Serf -------------------------------------------------------------------------------------
serf_ip() { echo "127.0.0.$((20 + $1))"; }
serf_prepare() {
    local n busy
    for ((n = 1; n <= N; n++)); do
        for p in t:7946 u:7946 t:7373; do
            busy="$(check_free "${p%%:*}" "$(serf_ip "$n")" "${p#*:}")" \
                || half_fail "address in use: $busy (a serf service running? \`systemctl stop serf\`)"
        done
    done
    serf version | head -n 1 >"$HALF_DIR/version"
}
serf_cmd() {
    local n="$1" ip
    ip="$(serf_ip "$n")"
    CMD=(serf agent -node "s$n" -bind "$ip:7946" -rpc-addr "$ip:7373" -log-level=warn)
    ((n == 1)) || CMD+=(-join "$(serf_ip 1):7946")
}
serf_poll_args() { POLL_ARGS=(members name status "serf members -rpc-addr {addr} -format=json"); }
serf_obs_addr() { echo "$(serf_ip "$1"):7373"; }

# --- Aether ----------------------------------------------------------------------------------
# Contract (being implemented): aether-d --join IP:7946 --invite TOKEN; mesh on 7946/udp, admin
# on 7070/tcp, HTTP on 8080/tcp of --bind; `alkahest --node IP:7070 nodes --json` prints a JSON
# array of {id, state: alive|suspect|dead|left|revoked, region, rtt_ms, ...}.
AETHER_MESH_PORT=7946
AETHER_ADMIN_PORT=7070
AETHER_HTTP_PORT=8080
aether_ip() { echo "127.0.0.$((30 + $1))"; }

# Prints why the built binaries cannot run this benchmark (nothing when they can).
aether_missing() {
    local why=() d a
    [[ -x "$AETHER_D" ]] || { echo "no $AETHER_D"; return; }
    [[ -x "$ALKAHEST" ]] || { echo "no $ALKAHEST"; return; }
    d="$("$AETHER_D" --help 2>&1 || true)"
    a="$("$ALKAHEST" --help 2>&1 || true)"
    grep -q -- '--join' <<<"$d" || why+=("aether-d has no --join")
    grep -q -- '--invite' <<<"$d" || why+=("aether-d has no --invite")
    grep -qE '^[[:space:]]+nodes([[:space:]]|$)' <<<"$a" || why+=("alkahest has no \`nodes\` command")
    grep -qE '^[[:space:]]+invite([[:space:]]|$)' <<<"$a" || why+=("alkahest has no \`invite\` command")
    ((${#why[@]} == 0)) || { local IFS=';' s; s="${why[*]}"; echo "${s//;/; }"; }
}

aether_prepare() {
    local n busy
    for ((n = 1; n <= N; n++)); do
        for p in "u:$AETHER_MESH_PORT" "t:$AETHER_ADMIN_PORT" "t:$AETHER_HTTP_PORT"; do
            busy="$(check_free "${p%%:*}" "$(aether_ip "$n")" "${p#*:}")" \
                || half_fail "address in use: $busy"
        done
    done
    ALKAHEST_HOME="$(mktemp -d "$TMP/alkahest-home.XXXXXX")"
    export ALKAHEST_HOME
    "$ALKAHEST" lattice init >>"$HALF_DIR/alkahest.log" 2>&1 \
        || half_fail "alkahest lattice init failed (see $HALF_DIR/alkahest.log)"
    { git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown; } >"$HALF_DIR/version"
}
aether_cmd() {
    local n="$1" token
    CMD=("$AETHER_D" --data-dir "$HALF_DIR/data$n" --bind "$(aether_ip "$n")" "${AETHER_D_EXTRA[@]}")
    if ((n > 1)); then
        token="$("$ALKAHEST" invite --expires 1h 2>>"$HALF_DIR/alkahest.log")" \
            || half_fail "alkahest invite failed (see $HALF_DIR/alkahest.log)"
        CMD+=(--join "$(aether_ip 1):$AETHER_MESH_PORT" --invite "$token")
    fi
}
aether_poll_args() {
    POLL_ARGS=("" id state "$(printf '%q' "$ALKAHEST") --node {addr} nodes --json")
}
aether_obs_addr() { echo "$(aether_ip "$1"):$AETHER_ADMIN_PORT"; }

# ============================================================================================
# One half: the same rounds for either system, in a subshell; half_fail ends it with a reason.
# ============================================================================================
half_fail() {
    printf '%s\n' "$*" >"$STATUS_DIR/$SYS"
    printf '[membench] %s: %s\n' "$SYS" "$*" >&2
    exit 1
}

record() { echo "$SYS $1 $2 $3" >>"$RESULTS"; }

observers() { seq -s, 1 "$1"; }   # "1,2,...,k"

py() { python3 "$PY" "$@"; }

# wait_cond T0 TIMEOUT OBSERVERS MODE ARG → seconds or "timeout" (diagnostics on stderr)
wait_cond() { py wait "$OBS" "$@"; }

# launch N: start node N with the command in CMD.
launch() {
    start "$HALF_DIR/node$1.log" "${CMD[@]}"
    NODE_PID[$1]=$STARTED
}

# check_nodes N1 N2 ...: fail the half if one of these nodes has exited.
check_nodes() {
    local n
    for n in "$@"; do
        alive "${NODE_PID[$n]}" || {
            tail -n 15 "$HALF_DIR/node$n.log" >&2 || true
            half_fail "node $n exited (log: $HALF_DIR/node$n.log)"
        }
    done
}

run_half() {
    SYS="$1"
    HALF_DIR="$RAW/$SYS"
    OBS="$HALF_DIR/observations.jsonl"
    declare -g -a NODE_PID=()
    local n r t0 t1 v keys_before keys_after victim victim5="" quiet fd
    mkdir -p "$HALF_DIR"
    : >"$OBS"
    "${SYS}_prepare"

    "${SYS}_poll_args"
    local obs_args=()
    for ((n = 1; n <= N; n++)); do obs_args+=("$n=$("${SYS}_obs_addr" "$n")"); done
    start "$HALF_DIR/poller.log" python3 "$PY" poll "$OBS" "$POLL_MS" "${POLL_ARGS[@]}" "${obs_args[@]}"

    # The existing cluster: node 1, then 2..4 joining it.
    log "$SYS: starting nodes 1-4"
    "${SYS}_cmd" 1
    t0="$(now)"; launch 1
    v="$(wait_cond "$t0" "$TIMEOUT_SECS" 1 alive 1)"
    [[ "$v" != timeout ]] || { check_nodes 1; half_fail "node 1 did not list itself alive within ${TIMEOUT_SECS}s"; }
    for n in 2 3 4; do "${SYS}_cmd" "$n"; launch "$n"; done
    t0="$(now)"
    v="$(wait_cond "$t0" "$TIMEOUT_SECS" "$(observers 4)" alive 4)"
    [[ "$v" != timeout ]] || { check_nodes 1 2 3 4; half_fail "the 4-node cluster did not form within ${TIMEOUT_SECS}s"; }
    log "$SYS: 4-node cluster formed; settling ${SETTLE_SECS}s"
    sleep "$SETTLE_SECS"

    for ((r = 1; r <= ROUNDS; r++)); do
        check_nodes 1 2 3 4
        keys_before="$(py latest "$OBS" 1 "$(now)" "$TIMEOUT_SECS")"
        [[ "$keys_before" != timeout ]] || half_fail "node 1 answered no poll within ${TIMEOUT_SECS}s"

        # join-to-visible
        "${SYS}_cmd" 5
        t0="$(now)"; launch 5
        v="$(wait_cond "$t0" "$TIMEOUT_SECS" "$(observers 5)" alive 5)"
        record join "$r" "$v"
        check_nodes 1 2 3 4 5

        # which member is node 5 (Serf: s5; Aether: its node id), and the 5 live members
        keys_after="$(py latest "$OBS" 1 "$(now)" "$TIMEOUT_SECS")"
        victim="$(comm -13 <(tr ' ' '\n' <<<"$keys_before" | sort) <(tr ' ' '\n' <<<"$keys_after" | sort) | grep -v '^$' || true)"
        if [[ "$(wc -w <<<"$victim")" == 1 ]]; then
            victim5="$victim"
        elif [[ -n "$victim5" ]]; then
            victim="$victim5"   # the same identity as in an earlier round
        else
            warn "$SYS round $r: cannot tell node 5's member id (before: [$keys_before], after: [$keys_after])"
            victim=""
        fi

        # quiet window: false dead declarations among the live members
        t0="$(now)"; sleep "$QUIET_SECS"; t1="$(now)"
        check_nodes 1 2 3 4 5
        read -r fd quiet _ _ < <(py falsedead "$OBS" "$t0" "$t1" "$(observers 5)" "$(tr ' ' ',' <<<"$keys_after")")
        record falsedead "$r" "$fd"
        echo "$SYS suspect $r $quiet" >>"$TMP/suspects"

        # SIGKILL-to-dead
        t0="$(now)"; kill -KILL "${NODE_PID[5]}"
        wait "${NODE_PID[5]}" 2>/dev/null || true   # reap it now: no "Killed" notice later
        forget_pid "${NODE_PID[5]}"
        if [[ -n "$victim" ]]; then
            v="$(wait_cond "$t0" "$TIMEOUT_SECS" "$(observers 4)" dead "$victim")"
        else
            v="n/a"
        fi
        record dead "$r" "$v"
        if [[ "$v" == timeout && -n "$victim" ]] && ((r < ROUNDS)); then
            # Start the next round from a cluster that holds node 5 as dead.
            log "$SYS: waiting up to ${TIMEOUT_SECS}s more for node 5 to be declared dead"
            v="$(wait_cond "$(now)" "$TIMEOUT_SECS" "$(observers 4)" dead "$victim")"
            [[ "$v" != timeout ]] || warn "$SYS: node 5 still not dead everywhere; the next round starts anyway"
        fi

        log "$SYS round $r/$ROUNDS: join→visible $(grep "^$SYS join $r " "$RESULTS" | cut -d' ' -f4)," \
            "false dead $fd (suspect $quiet), SIGKILL→dead $v"
        sleep "$BETWEEN_SECS"
    done
}

# ============================================================================================
mkdir -p "$OUT_DIR"
rm -rf "$RAW"; mkdir -p "$RAW"
: >"$TMP/suspects"

if [[ " $SYSTEMS " == *" aether "* ]]; then
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "building aether-d and alkahest (cargo build --release; log: $RAW/build.log)"
        cargo build --release -p aether-d -p alkahest >"$RAW/build.log" 2>&1 \
            || { tail -n 20 "$RAW/build.log" >&2; echo "cargo build failed (see $RAW/build.log)" >"$STATUS_DIR/aether"; }
    fi
    if [[ ! -s "$STATUS_DIR/aether" ]]; then
        missing="$(aether_missing)"
        [[ -z "$missing" ]] || echo "$missing" >"$STATUS_DIR/aether"
    fi
    [[ ! -s "$STATUS_DIR/aether" ]] || warn "aether: not available: $(cat "$STATUS_DIR/aether")"
fi

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"   # after the build
for sys in $SYSTEMS; do
    [[ ! -s "$STATUS_DIR/$sys" ]] || continue
    log "=== $sys: $ROUNDS rounds (quiet window ${QUIET_SECS}s, poll ${POLL_MS}ms, timeout ${TIMEOUT_SECS}s) ==="
    set +e
    (set -e; run_half "$sys")
    rc=$?
    set -e
    ((rc == 0)) || [[ -s "$STATUS_DIR/$sys" ]] || echo "stopped with exit code $rc" >"$STATUS_DIR/$sys"
    stop_all   # every agent and the poller of this half, before the next half starts
done

suspect_note() {
    local s="$1" list
    list="$(awk -v s="$s" '$1 == s { printf "%s ", $4 }' "$TMP/suspects")"
    [[ -z "$list" ]] || echo "$s suspect declarations of live members per quiet window: ${list% }"
}
notes=(
    "serf: $(cat "$RAW/serf/version" 2>/dev/null || echo "-"), LAN profile defaults; aether: $(cat "$RAW/aether/version" 2>/dev/null || echo "-")"
    "$(suspect_note aether)"
    "round 1 is a first join, rounds 2..$ROUNDS a restart of the killed node with the same identity"
    "each agent polled by its CLI every ${POLL_MS} ms; load average (1/5/15 min) at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
)
table="$(py report "$RESULTS" "$STATUS_DIR" "$ROUNDS" "$QUIET_SECS" "$SYSTEMS" "${notes[@]}")"
printf '%s\n' "$table" | tee "$OUT_MD"
cp "$RESULTS" "$RAW/results.txt"
# Aether being unavailable is an expected state; Serf failing is not.
[[ " $SYSTEMS " != *" serf "* || ! -s "$STATUS_DIR/serf" ]]
