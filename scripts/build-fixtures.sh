#!/usr/bin/env bash
# Builds the guest components that the Aether host tests and the example use, and copies
# them to target/fixtures/:
#
#   hello.wasm           examples/hello            (Rust, `wasi` crate)
#   probe.wasm           tests/fixtures/probe      (Rust, `wasi` crate; one route per behaviour)
#   hello-wstd.wasm      tests/fixtures/hello-wstd (Rust, `wstd` crate)
#   missing-import.wasm  tests/fixtures/missing-import (imports acme:missing/thing@1.0.0)
#   kv-counter.wasm      tests/fixtures/kv-counter (Rust, `wasi` + wit-bindgen for wasi:keyvalue,
#                        against the WIT in crates/aether-runtime/wit)
#   hello-py.wasm        tests/fixtures/hello-py   (Python, componentize-py)
#
# Idempotent: cargo rebuilds only what changed, and the Python component is rebuilt only
# when its sources, the WIT it is built against or the componentize-py version change.
# Needs: rustup, python3 (with venv), and the crates.io / PyPI registries on first run.
# Set CARGO_BUILD_JOBS to limit build parallelism.
set -euo pipefail

COMPONENTIZE_PY_VERSION="0.25.1"
TARGET="wasm32-wasip2"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="$ROOT/target/fixture-tools"
VENV="$TOOLS/venv"
OUT="$ROOT/target/fixtures"
FIXTURES="$ROOT/tests/fixtures"
FIXTURES_TARGET="$FIXTURES/target"
EXAMPLE="$ROOT/examples/hello"
PY_SRC="$FIXTURES/hello-py"
PY_BUILD="$FIXTURES_TARGET/hello-py"

log() { printf '[build-fixtures] %s\n' "$*" >&2; }
die() { printf '[build-fixtures] error: %s\n' "$*" >&2; exit 1; }

command -v rustup >/dev/null || die "rustup not found"
command -v python3 >/dev/null || die "python3 not found"

# --- toolchain ------------------------------------------------------------------------
# Run from the repository root, so this applies to the toolchain pinned in rust-toolchain.toml.
"$ROOT/scripts/toolchain.sh"

# --- componentize-py ------------------------------------------------------------------
cpy="$VENV/bin/componentize-py"
if [[ ! -x "$cpy" ]] || [[ "$("$cpy" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
    log "installing componentize-py $COMPONENTIZE_PY_VERSION into ${VENV#"$ROOT"/}"
    mkdir -p "$TOOLS"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" \
        || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# --- Rust components --------------------------------------------------------------------
# Target dirs are given explicitly so that a CARGO_TARGET_DIR in the environment does not
# move the outputs away from where the Aetherfile and this script expect them.
log "building examples/hello"
cargo build --quiet --release --target "$TARGET" \
    --manifest-path "$EXAMPLE/Cargo.toml" --target-dir "$EXAMPLE/target"

log "building the tests/fixtures workspace"
cargo build --quiet --release --target "$TARGET" --workspace \
    --manifest-path "$FIXTURES/Cargo.toml" --target-dir "$FIXTURES_TARGET"

# --- Python component ---------------------------------------------------------------------
# The wasi:http WIT is not committed: take it from the registry copy of the wasmtime-wasi-http
# crate that the host itself builds against (AETHER_WASI_HTTP_WIT overrides).
find_wasi_http_wit() {
    cargo metadata --quiet --format-version 1 --manifest-path "$ROOT/Cargo.toml" \
        | python3 -c '
import json, os, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "wasmtime-wasi-http"]
if not pkgs:
    sys.exit("wasmtime-wasi-http is not in the dependency graph of Cargo.toml")
key = lambda p: tuple(int(x) for x in p["version"].split("+")[0].split("-")[0].split("."))
pkg = max(pkgs, key=key)
print(os.path.join(os.path.dirname(pkg["manifest_path"]), "wit"))
'
}
WIT="${AETHER_WASI_HTTP_WIT:-$(find_wasi_http_wit)}"
[[ -f "$WIT/deps/http.wit" ]] || die "no wasi:http WIT at $WIT"
http_version="$(sed -n 's/^package wasi:http@\([0-9][0-9.]*\);.*/\1/p' "$WIT/deps/http.wit" | head -n1)"
[[ -n "$http_version" ]] || die "cannot read the wasi:http package version in $WIT/deps/http.wit"
WORLD="wasi:http/proxy@$http_version"

py_wasm="$PY_BUILD/hello-py.wasm"
stamp_file="$PY_BUILD/hello-py.stamp"
stamp="$(
    {
        "$cpy" --version
        echo "world $WORLD"
        (cd "$WIT" && find . -type f -name '*.wit' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        (cd "$PY_SRC" && find . -type f ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
)"
if [[ -f "$py_wasm" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    log "hello-py is up to date"
else
    log "building tests/fixtures/hello-py against $WORLD"
    # Build from a copy, so that nothing (e.g. __pycache__) lands in the source tree.
    rm -rf "$PY_BUILD/src"
    mkdir -p "$PY_BUILD/src"
    (cd "$PY_SRC" && tar --exclude=__pycache__ -cf - .) | (cd "$PY_BUILD/src" && tar -xf -)
    rm -f "$stamp_file"
    (cd "$PY_BUILD/src" && PYTHONDONTWRITEBYTECODE=1 "$cpy" --quiet -d "$WIT" -w "$WORLD" \
        componentize app -o "$py_wasm.tmp")
    mv -f "$py_wasm.tmp" "$py_wasm"
    printf '%s\n' "$stamp" > "$stamp_file"
fi

# --- collect ------------------------------------------------------------------------------
mkdir -p "$OUT"
release="$FIXTURES_TARGET/$TARGET/release"
artifacts=(
    "hello=$EXAMPLE/target/$TARGET/release/hello.wasm"
    "probe=$release/probe.wasm"
    "hello-wstd=$release/hello_wstd.wasm"
    "missing-import=$release/missing_import.wasm"
    "kv-counter=$release/kv_counter.wasm"
    "hello-py=$py_wasm"
)
component_magic="00 61 73 6d 0d 00 01 00"
for entry in "${artifacts[@]}"; do
    name="${entry%%=*}"
    src="${entry#*=}"
    [[ -f "$src" ]] || die "expected build output missing: $src"
    magic="$(od -An -tx1 -N8 "$src" | tr -s ' ' | sed 's/^ //; s/ $//')"
    [[ "$magic" == "$component_magic" ]] || die "$src is not a component (header: $magic)"
    dest="$OUT/$name.wasm"
    cmp -s "$src" "$dest" 2>/dev/null || cp -f "$src" "$dest"
done
grep -qa 'acme:missing/thing@1.0.0' "$OUT/missing-import.wasm" \
    || die "missing-import.wasm does not mention acme:missing/thing@1.0.0"
grep -qa 'wasi:keyvalue/store@0.2.0-draft' "$OUT/kv-counter.wasm" \
    || die "kv-counter.wasm does not import wasi:keyvalue/store@0.2.0-draft"

for entry in "${artifacts[@]}"; do
    name="${entry%%=*}"
    dest="$OUT/$name.wasm"
    size="$(stat -c %s "$dest")"
    printf '%-40s %10d bytes\n' "target/fixtures/$name.wasm" "$size"
done
