#!/usr/bin/env bash
# Peak resident memory of `wellness-gateway import` on a generated CSV of ROWS rows (default
# 1,000,000), release build, fresh SQLite file. The import streams; memory must stay flat.
#   bash benches/import_memory.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet
cargo bench --quiet --bench http_load -- gen-csv "$work/sessions.csv" "$rows"
ls -l "$work/sessions.csv"
export WG__DATABASE__URL="sqlite://$work/import.db" WG__LOG__LEVEL=warn
/usr/bin/time -v target/release/wellness-gateway import "$work/sessions.csv" --quiet 2> "$work/time.txt"
grep -E "Maximum resident set size|Elapsed \(wall clock\)" "$work/time.txt"
