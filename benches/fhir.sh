#!/usr/bin/env bash
# FHIR benchmarks (issue 3) on a fresh SQLite file, release build:
#  1. end-to-end HTTP intake with mapping and storage, 1,000-record batches;
#  2. `import` of a generated CSV of ROWS sessions (default 1,000,000; 100,000 students with ten
#     sessions each) through the same pipeline: validation, mapping, FHIR storage;
#  3. `GET /fhir/Encounter/{id}`, 64 concurrent clients;
#  4. `GET /fhir/Encounter?patient=..&date=ge..` over the ROWS stored encounters, 8 concurrent clients.
#   bash benches/fhir.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
students=$(( rows / 10 > 0 ? rows / 10 : 1 ))
work=${WORK:-$(mktemp -d)}
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; [ -z "${KEEP:-}" ] && rm -rf "$work"' EXIT
export WG__DATABASE__URL="sqlite://$work/bench.db" WG__SERVER__PORT=18080 WG__LOG__LEVEL=warn
cargo build --release --quiet
cargo bench --bench http_load --no-run --quiet 2>/dev/null || cargo bench --bench http_load --no-run
url=http://127.0.0.1:18080
start_server() {
  target/release/wellness-gateway serve > "$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -sf localhost:18080/health/ready >/dev/null && break; sleep 0.2; done
}
token=$(target/release/wellness-gateway clients add --name bench --role admin | tail -n1)

echo "== 1. HTTP batch intake with mapping and FHIR storage (empty database)"
start_server
cargo bench --quiet --bench http_load -- batch "$url" "$token" "${BATCHES:-30}" 1000 "${BATCH_CONCURRENCY:-2}"
kill $server; wait $server 2>/dev/null || true; server=

echo "== 2. import $rows sessions ($students students)"
cargo bench --quiet --bench http_load -- gen-csv "$work/sessions.csv" "$rows" "$students"
start=$(date +%s.%N)
/usr/bin/time -v target/release/wellness-gateway import "$work/sessions.csv" --quiet 2> "$work/time.txt"
end=$(date +%s.%N)
echo "import: $(echo "$rows / ($end - $start)" | bc) sessions/s"
grep -E "Maximum resident set size|Elapsed \(wall clock\)" "$work/time.txt"
ls -l "$work/bench.db"

echo "== 3./4. reads and searches"
start_server
cargo bench --quiet --bench http_load -- fhir-read "$url" "$token" "${READS:-50000}" 64
cargo bench --quiet --bench http_load -- fhir-search "$url" "$token" "${SEARCHES:-20000}" "${SEARCH_CONCURRENCY:-8}" "$students"
echo "server RSS: $(grep VmHWM /proc/$server/status)"
