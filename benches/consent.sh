#!/usr/bin/env bash
# Partner reads with consent enforcement and audit against the same reads by an admin, on a fresh
# SQLite file: 1,000 sessions (one student each), a consent for each student, then
# GET /fhir/Encounter/{id} with 64 concurrent clients as admin (no enforcement) and as an FQHC
# partner (SMART token; every read judged by consent and written to the audit trail).
#   bash benches/consent.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
export WG__DATABASE__URL="sqlite://$work/bench.db" WG__SERVER__PORT=18082 WG__LOG__LEVEL=warn
cargo build --release --quiet
cargo bench --bench http_load --no-run --quiet 2>/dev/null || cargo bench --bench http_load --no-run
gw=target/release/wellness-gateway
submitter=$($gw clients add --name bench --role submitter --org lea-demo | tail -n1)
admin=$($gw clients add --name bench-admin --role admin | tail -n1)
partner=$($gw clients add --name bench-partner --role partner --org fqhc-demo --jwks tests/fixtures/smart/jwks.json | tail -n1)
$gw serve > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 50); do curl -sf localhost:18082/health/ready >/dev/null && break; sleep 0.2; done
url=http://127.0.0.1:18082
load() { cargo bench --quiet --bench http_load -- "$@"; }
load batch "$url" "$submitter" 1 "${STUDENTS:-1000}" 1
load consents "$url" "$submitter" "${STUDENTS:-1000}"
token=$(load smart-token "$url" "$partner")
# Let the claim worker bill the new sessions first (it would share the CPU with round 1): wait
# until the server's CPU time stops growing for a second (at most 60 s).
ticks() { awk '{print $14+$15}' "/proc/$server/stat"; }
for _ in $(seq 1 60); do a=$(ticks); sleep 1; [ "$(ticks)" -le $((a + 2)) ] && break; done
for round in 1 2; do
  echo "round $round"
  load fhir-read "$url" "$admin" "${REQUESTS:-30000}" 64 | sed 's/^/  admin:   /'
  load fhir-read "$url" "$token" "${REQUESTS:-30000}" 64 | sed 's/^/  partner: /'
done
echo "audit events: $($gw audit verify 2>&1 | tail -n1)"
echo "server RSS: $(grep VmHWM /proc/$server/status)"
