#!/usr/bin/env bash
# HTTP intake benchmarks against a running release server on a fresh SQLite file, driven from a
# second process (benches/http_load.rs). Prints sessions/s for 1,000-record batches and latency
# percentiles for single POSTs with 32 concurrent clients.
#   bash benches/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
export WG__DATABASE__URL="sqlite://$work/bench.db" WG__SERVER__PORT=18080 WG__LOG__LEVEL=warn
cargo build --release --quiet
cargo bench --bench http_load --no-run --quiet 2>/dev/null || cargo bench --bench http_load --no-run
token=$(target/release/wellness-gateway clients add --name bench --role submitter --org lea-demo | tail -n1)
target/release/wellness-gateway serve > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 50); do curl -sf localhost:18080/health/ready >/dev/null && break; sleep 0.2; done
url=http://127.0.0.1:18080
cargo bench --quiet --bench http_load -- batch "$url" "$token" "${BATCHES:-50}" 1000 "${BATCH_CONCURRENCY:-2}"
cargo bench --quiet --bench http_load -- single "$url" "$token" "${REQUESTS:-20000}" 32
echo "server RSS: $(grep VmHWM /proc/$server/status)"
