#!/usr/bin/env bash
# SMART Backend Services token issue against a running release server on a fresh SQLite file,
# driven from a second process (benches/http_load.rs `token`): tokens/s and latency for ES384 and
# RS384 client assertions (signed before the clock starts).
#   bash benches/smart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
export WG__DATABASE__URL="sqlite://$work/bench.db" WG__SERVER__PORT=18081 WG__LOG__LEVEL=warn
cargo build --release --quiet
cargo bench --bench http_load --no-run --quiet 2>/dev/null || cargo bench --bench http_load --no-run
client=$(target/release/wellness-gateway clients add --name bench --role partner --org fqhc-demo --jwks tests/fixtures/smart/jwks.json | tail -n1)
target/release/wellness-gateway serve > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 50); do curl -sf localhost:18081/health/ready >/dev/null && break; sleep 0.2; done
url=http://127.0.0.1:18081
for alg in ES384 RS384; do
  cargo bench --quiet --bench http_load -- token "$url" "$client" "${REQUESTS:-5000}" "${CONCURRENCY:-16}" "$alg"
done
echo "server RSS: $(grep VmHWM /proc/$server/status)"
