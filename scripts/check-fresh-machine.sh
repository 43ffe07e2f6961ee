#!/usr/bin/env bash
# Proves the fresh-machine path of the toolchain, as a new user meets it:
#
#   1. under an empty RUSTUP_HOME (its own unless one is given), scripts/toolchain.sh installs
#      the pinned toolchain, its components and targets, and cargo runs;
#   2. a project made by `alkahest new` outside this repository, built with that toolchain
#      without the wasm32-wasip2 target, fails with the hint to add it;
#   3. after scripts/toolchain.sh puts the target back, the same `alkahest build` succeeds.
#
# Builds alkahest (cargo build -p alkahest) with that toolchain. .ci/run runs this on every run,
# before scripts/test.sh, under the RUSTUP_HOME it gives in FRESH_RUSTUP_HOME.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[fresh-machine] %s\n' "$*" >&2; }
die() { printf '[fresh-machine] FAILED: %s\n' "$*" >&2; exit 1; }


WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [[ -z "${FRESH_RUSTUP_HOME:-}" ]]; then
    export RUSTUP_HOME="$WORK/rustup"
    mkdir -p "$RUSTUP_HOME"
    log "empty RUSTUP_HOME at $RUSTUP_HOME"
else
    export RUSTUP_HOME="$FRESH_RUSTUP_HOME"
    log "RUSTUP_HOME=$RUSTUP_HOME (given)"
fi
unset CARGO_TARGET_DIR
channel="$(sed -n -E 's/^[[:space:]]*channel[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' rust-toolchain.toml)"

log "1. scripts/toolchain.sh"
./scripts/toolchain.sh
cargo --version >&2 || die "cargo does not run after scripts/toolchain.sh"
rustup target list --installed --toolchain "$channel" | grep -qx wasm32-wasip2 \
    || die "wasm32-wasip2 was not installed"
log "   building alkahest"
cargo build --quiet -p alkahest || die "cargo build -p alkahest failed"
ALKAHEST="$ROOT/target/debug/alkahest"

log "2. a new project whose toolchain lacks wasm32-wasip2"
export RUSTUP_TOOLCHAIN="$channel"
rustup target remove wasm32-wasip2 --toolchain "$channel" >/dev/null 2>&1
(cd "$WORK" && "$ALKAHEST" new fresh-demo >/dev/null)
set +e
out="$(cd "$WORK/fresh-demo" && "$ALKAHEST" build 2>&1)"
rc=$?
set -e
[[ $rc -ne 0 ]] || die "alkahest build succeeded without the wasm32-wasip2 target"
grep -q 'hint: the Rust target is missing; run `rustup target add wasm32-wasip2`' <<<"$out" \
    || die "alkahest build failed without the hint; it printed:
$out"
log "   fails with: $(grep 'hint:' <<<"$out")"

log "3. scripts/toolchain.sh restores the target; the same build succeeds"
unset RUSTUP_TOOLCHAIN
./scripts/toolchain.sh
out="$(cd "$WORK/fresh-demo" && RUSTUP_TOOLCHAIN="$channel" "$ALKAHEST" build 2>&1)" \
    || die "alkahest build failed after the target was installed:
$out"
log "   $(tail -n1 <<<"$out")"
log "ok"
