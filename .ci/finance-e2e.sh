#!/usr/bin/env bash
# The finance dashboard end to end in headless Chromium (Debian's package, driven by
# playwright-core from npm): the real server (debug build, SQLite, demo data) bills the demo
# sessions (the demo's consented visit becomes a claim), finance builds the 837 batches, a synthetic payer (.ci/synthetic_835.py) answers
# with 835s that are posted, then tests/e2e/finance.mjs signs in at /finance, opens a site and a
# claim, and checks every number against the report API.
#   bash .ci/finance-e2e.sh            (run by .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$work"' EXIT
port=18092
base=http://127.0.0.1:$port
export WG__DATABASE__URL="sqlite://$work/ci.db" WG__SERVER__PORT=$port WG__LOG__LEVEL=warn WG__EXPORT__DIR="$work/exports" WG__BILLING__POLL_SECONDS=1
cargo build --quiet
gw=target/debug/wellness-gateway
$gw serve --demo > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf "$base/health/ready" >/dev/null && break; sleep 0.2; done
auth=(-H "Authorization: Bearer demo-finance-token")
# Wait for the claim worker, then build the batches.
for _ in $(seq 1 60); do
  n=$(curl -sf "${auth[@]}" "$base/api/v1/claims?status=ready" | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
  [ "$n" -ge 1 ] && break; sleep 0.5
done
curl -sf "${auth[@]}" -X POST "$base/api/v1/claims/batches" > "$work/batches.json"
python3 -c "import json,sys; [print(b['x12']) for b in json.load(open(sys.argv[1]))['batches']]" "$work/batches.json" > "$work/links"
i=0
while read -r link; do i=$((i+1)); curl -sf "${auth[@]}" "$base$link" > "$work/batch-$i.x12"; done < "$work/links"
[ "$i" -ge 1 ] || { echo "no 837 batch was built"; tail -n 20 "$work/server.log"; exit 1; }
python3 .ci/synthetic_835.py "$work"/batch-*.x12 > "$work/remit.835"
curl -sf "${auth[@]}" -X POST "$base/api/v1/remittances" --data-binary @"$work/remit.835" > "$work/posted.json" || {
  echo "posting the synthetic 835 failed"; cat "$work/posted.json" 2>/dev/null; exit 1; }
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); t=r['transactions']; print('posted', sum(x['matched'] for x in t), 'claim payments'); assert all(x['balanced'] for x in t)" "$work/posted.json"
BASE_URL=$base FINANCE_TOKEN=demo-finance-token SCREENSHOT="$PWD/target/finance-e2e.png" bash tests/e2e/run.sh
