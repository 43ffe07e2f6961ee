#!/usr/bin/env bash
# Installs the Rust toolchain pinned in rust-toolchain.toml, with its components and targets,
# plus any extra targets given as arguments (scripts/cross.sh passes aarch64-unknown-linux-gnu).
#
# rustup 1.28 and later no longer install the toolchain an override file names on first use, so
# every script calls this before its first cargo command. Nothing is downloaded when everything
# is already there; otherwise it says what it fetches. Honours RUSTUP_HOME (CI runs it under an
# empty one to prove the fresh-machine path).
#
#   scripts/toolchain.sh [EXTRA_TARGET ...]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FILE="$ROOT/rust-toolchain.toml"

log() { printf '[toolchain] %s\n' "$*" >&2; }
die() { printf '[toolchain] error: %s\n' "$*" >&2; exit 1; }

command -v rustup >/dev/null 2>&1 \
    || die "rustup not found; install it from https://rustup.rs, then run this again"
[[ -f "$FILE" ]] || die "$FILE not found"

# The values of one key of the [toolchain] table: a string or an array of strings on one line.
toml_values() {
    sed -n -E "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*(.*)$/\1/p" "$FILE" \
        | head -n1 | sed -E 's/#.*$//' | tr -d '[]",' | xargs -n1 2>/dev/null || true
}

channel="$(toml_values channel)"
profile="$(toml_values profile)"
mapfile -t components < <(toml_values components)
mapfile -t targets < <(toml_values targets)
targets+=("$@")
[[ -n "$channel" ]] || die "no channel in $FILE"
profile="${profile:-minimal}"

installed_toolchain() {
    rustup run "$channel" rustc --version >/dev/null 2>&1
}

missing=()
if installed_toolchain; then
    have_targets="$(rustup target list --installed --toolchain "$channel" 2>/dev/null || true)"
    have_components="$(rustup component list --installed --toolchain "$channel" 2>/dev/null || true)"
    for t in "${targets[@]}"; do
        grep -qx "$t" <<<"$have_targets" || missing+=("target $t")
    done
    for c in "${components[@]}"; do
        grep -q "^$c" <<<"$have_components" || missing+=("component $c")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Rust $channel with ${components[*]:-no extra components} and ${targets[*]:-no extra targets} is installed"
        exit 0
    fi
    log "Rust $channel is installed; adding ${missing[*]}"
else
    log "installing Rust $channel (profile $profile, components: ${components[*]:-none}, targets: ${targets[*]:-host only})"
    log "this downloads about 100 MB from the Rust distribution server (once per machine)"
fi

args=(toolchain install "$channel" --profile "$profile" --no-self-update)
for c in "${components[@]}"; do args+=(--component "$c"); done
for t in "${targets[@]}"; do args+=(--target "$t"); done
rustup "${args[@]}" >&2 || die "rustup ${args[*]} failed"
installed_toolchain || die "Rust $channel still does not run after installing it"
log "ready: $(rustup run "$channel" rustc --version)"
