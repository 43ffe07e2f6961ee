#!/usr/bin/env bash
# The main job: builds Aether and the example component, creates the lattice
# keys if there are none (in ALKAHEST_HOME, default ~/.config/alkahest), and
# runs a local lattice of 3 nodes (127.0.0.1, .2, .3, port 8080) serving
# examples/hello. Ctrl-C stops it.
# Extra arguments go to `alkahest up` (for example --listen 127.0.0.1:9090,
# --nodes 5).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/toolchain.sh
echo "[up] building alkahest and aether-d (the first build takes about 15 minutes on 2 cores)" >&2
cargo build -p alkahest -p aether-d
case " $* " in
  *" --nodes"*) ;;
  *) set -- --nodes 3 "$@" ;;
esac
exec target/debug/alkahest up examples/hello "$@"
