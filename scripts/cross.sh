#!/usr/bin/env bash
# Builds aether-d for another architecture (default aarch64-unknown-linux-gnu) with Debian's
# cross compiler, and installs what that needs: the rustup target (scripts/toolchain.sh), the
# gcc cross toolchain and libc for the C parts of the dependencies, and qemu-user to run the
# result on this machine.
#
#   scripts/cross.sh [--release | --profile NAME] [--target TRIPLE]
#
# Prints the path of the binary on its last line. Run it under qemu:
#   qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/debug/aether-d --help
# The mixed-architecture test (crates/aether-d/tests/mixed_arch.rs) uses that binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[cross] %s\n' "$*" >&2; }
die() { printf '[cross] error: %s\n' "$*" >&2; exit 1; }

TARGET="aarch64-unknown-linux-gnu"
PROFILE="dev"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --release) PROFILE="release" ;;
        --profile) PROFILE="${2:?--profile needs a name}"; shift ;;
        --target) TARGET="${2:?--target needs a triple}"; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

case "$TARGET" in
    aarch64-unknown-linux-gnu) GNU="aarch64-linux-gnu"; DEB_ARCH="arm64"; QEMU="qemu-aarch64" ;;
    *) die "only aarch64-unknown-linux-gnu is set up here" ;;
esac

# --- Debian packages ----------------------------------------------------------------------
need=()
command -v "$GNU-gcc" >/dev/null 2>&1 || need+=("gcc-$GNU")
[[ -e "/usr/$GNU/lib/libc.so" ]] || need+=("libc6-dev-$DEB_ARCH-cross")
command -v "$QEMU" >/dev/null 2>&1 || need+=("qemu-user")
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]} with apt-get"
    SUDO=""
    [[ "$(id -u)" == 0 ]] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; } \
        || die "apt-get install ${need[*]} failed"
fi

# --- Rust target --------------------------------------------------------------------------
./scripts/toolchain.sh "$TARGET"
# clang for aether-ebpf's programs, before the first build runs its build script.
./scripts/system-deps.sh

# --- build --------------------------------------------------------------------------------
upper="$(tr 'a-z-' 'A-Z_' <<<"$TARGET")"
lower="$(tr '-' '_' <<<"$TARGET")"
export "CARGO_TARGET_${upper}_LINKER=$GNU-gcc"
export "CARGO_TARGET_${upper}_RUNNER=$QEMU -L /usr/$GNU"
export "CC_${lower}=$GNU-gcc"
export "AR_${lower}=$GNU-ar"

log "building aether-d for $TARGET (profile $PROFILE); the first build compiles every dependency again"
start=$(date +%s)
cargo build --quiet -p aether-d --bin aether-d --target "$TARGET" --profile "$PROFILE"
dir="$PROFILE"
[[ "$PROFILE" == "dev" ]] && dir="debug"
bin="$ROOT/target/$TARGET/$dir/aether-d"
[[ -x "$bin" ]] || die "$bin was not built"
log "built in $(( $(date +%s) - start )) s: $(file -b "$bin" 2>/dev/null | cut -d, -f1-2 || true)"
log "check: $("$QEMU" -L "/usr/$GNU" "$bin" --version)"
echo "$bin"
