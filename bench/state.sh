#!/usr/bin/env bash
# Lattice state benchmarks (issue 4): apply rate through the full receive path, anti-entropy
# bytes for 100 000 keys differing in 1 %, and write-to-visibility on five real nodes on
# loopback (127.0.0.71–75). Figures go to stdout; see bench/RESULTS.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/toolchain.sh"
cargo build --release -p aether-d --bin aether-d --example state_visibility
echo "== apply rate"
cargo run --release -p aether-kv --example apply_bench -- "${UPDATES:-100000}"
echo "== anti-entropy"
cargo run --release -p aether-state --example antientropy_bench
echo "== write -> visible on 5 nodes"
AETHER_D="$ROOT/target/release/aether-d" ./target/release/examples/state_visibility "${ROUNDS:-200}"
