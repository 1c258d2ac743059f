#!/usr/bin/env bash
# Independent Bulk Data client check: smart-fetch (SMART on FHIR's bulk export client, PyPI,
# pinned) runs a system-level $export against the real server (debug build, SQLite, demo data,
# consents recorded for the demo students) with SMART Backend Services auth (the repository's
# RS384 test key), then .ci/bulk_check.py compares what it downloaded with FHIR search.
#   bash .ci/bulk-client.sh            (run by .ci/run; needs python3 >= 3.11 and PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CI_VENV:-target/ci-venv}
if [ ! -x "$venv/bin/smart-fetch" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'smart-fetch==1.0.3'
fi
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$work"' EXIT
port=18091
base=http://127.0.0.1:$port/fhir
export WG__DATABASE__URL="sqlite://$work/ci.db" WG__SERVER__PORT=$port WG__LOG__LEVEL=warn WG__EXPORT__DIR="$work/exports"
cargo build --quiet
gw=target/debug/wellness-gateway
partner=$($gw clients add --name ci-bulk-client --role partner --org fqhc-demo --jwks tests/fixtures/smart/jwks.json | tail -n1)
$gw serve --demo > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.2; done
# Consents for two of the three demo students (the third's sessions must stay out of the export).
for s in D900001 D900002; do
  python3 -c "import json,sys; f=json.load(open('schemas/examples/valid/consent.json')); f['student']['district_id']=sys.argv[1]; f['source_id']='CI-'+sys.argv[1]; print(json.dumps(f))" "$s" |
    curl -sf -o /dev/null "http://127.0.0.1:$port/api/v1/consents" -H "Authorization: Bearer demo-submitter-lea-demo-token" -H "Content-Type: application/json" --data-binary @-
done
"$venv/bin/python" .ci/bulk_check.py jwks tests/fixtures/smart/rs384-private.pem test-rs384 RS384 > "$work/key.jwks"
export TERM=dumb COLUMNS=200 NO_COLOR=1
timeout --kill-after=10 300 "$venv/bin/smart-fetch" bulk --verbose --fhir-url "$base" --no-compression --no-default-filters \
  --smart-client-id "$partner" --smart-key "$work/key.jwks" "$work/out" > "$work/smart-fetch.log" 2>&1 || {
  echo "smart-fetch failed:"; tail -n 40 "$work/smart-fetch.log"; echo "server log:"; tail -n 20 "$work/server.log"; exit 1; }
"$venv/bin/python" .ci/bulk_check.py compare "$base" "$partner" tests/fixtures/smart/rs384-private.pem test-rs384 RS384 "$work/out"
echo "smart-fetch export matches FHIR search"
