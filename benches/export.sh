#!/usr/bin/env bash
# Bulk $export throughput and memory, release build, SQLite file: ROWS generated sessions
# (default 1,000,000) over STUDENTS students (default ROWS/10), imported with `wellness-gateway
# import`, a consent for every student, then a system-level export by an FQHC partner with consent
# enforcement on, timed from kick-off to manifest; then a `_since` export after re-sending 1% of
# the sessions. Prints resources written, resources/s, the server's peak RSS during the export
# (VmHWM reset just before the kick-off) and the `_since` time as a share of the full export's.
#   bash benches/export.sh [ROWS] [STUDENTS]
# Keep the database between runs with WORK=/some/dir (import and consents are skipped when
# WORK/bench.db exists).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
students=${2:-$((rows / 10))}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
# The export files go too (~5 GB per full export of 1,000,000 sessions; a kept WORK would fill
# the disk after a few runs).
trap 'kill $server 2>/dev/null || true; rm -rf "$work/exports"; [ -n "${WORK:-}" ] || rm -rf "$work"' EXIT
port=${PORT:-18083}
# The claim worker is off: after the import it would be settling the million new sessions (a
# one-off catch-up, building their claims) while the export runs; the export is measured alone.
# Info logs carry the job's own figures (`export job figures`), printed at the end.
export WG__DATABASE__URL="sqlite://$work/bench.db" WG__SERVER__PORT=$port WG__LOG__LEVEL=info WG__EXPORT__DIR="$work/exports" \
  WG__BILLING__WORKER=false
cargo build --release --quiet
# The binaries are copied into WORK: a rebuild while the benchmark runs (it takes half an hour
# at the default size) does not change what is measured.
load_exe=$(cargo bench --bench http_load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n1)
mkdir -p "$work/bin"
cp target/release/wellness-gateway "$load_exe" "$work/bin/"
gw=$work/bin/wellness-gateway
load() { "$work/bin/$(basename "$load_exe")" --bench "$@"; }
url=http://127.0.0.1:$port
fresh=0
[ -f "$work/bench.db" ] || fresh=1
: > "$work/server.log"
if [ $fresh = 1 ]; then
  load gen-csv "$work/sessions.csv" "$rows" "$students"
  $gw import "$work/sessions.csv" --quiet
fi
submitter=$($gw clients add --name bench --role submitter --org lea-demo | tail -n1)
partner=$($gw clients add --name bench-partner --role partner --org fqhc-demo --jwks tests/fixtures/smart/jwks.json | tail -n1)
$gw serve >> "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf $url/health/ready >/dev/null && break; sleep 0.2; done
if [ $fresh = 1 ]; then
  load consents "$url" "$submitter" "$students"
  # A job re-judges, at its end, the files of students whose consent changed from 60 s before
  # it started (CONSENT_CLOCK_MARGIN_US): kicked off right after the consents were recorded,
  # the export would judge every file twice. The throughput is measured once that margin has
  # passed; NOW=1 kicks off at once (the job figures then show the recheck as recheck_ms).
  [ "${NOW:-0}" = 1 ] || sleep 61
fi
export_once() { # $1 = query; prints seconds and the manifest to $work/manifest.json
  local token status start end
  token=$(load smart-token "$url" "$partner")
  echo 5 > /proc/$server/clear_refs
  grep VmRSS /proc/$server/status | tr -s ' ' > "$work/rss-at-kickoff"
  start=$(date +%s.%N)
  status=$(curl -sfi "$url/fhir/\$export$1" -H "Authorization: Bearer $token" -H "Prefer: respond-async" | tr -d '\r' | sed -n 's/^content-location: //Ip')
  local issued=$SECONDS
  while true; do
    # Access tokens are short-lived (5 minutes): a long export is polled with fresh ones.
    if [ $((SECONDS - issued)) -ge 120 ]; then token=$(load smart-token "$url" "$partner"); issued=$SECONDS; fi
    code=$(curl -s -o "$work/manifest.json" -w '%{http_code}' "$status" -H "Authorization: Bearer $token")
    [ "$code" = 200 ] && break
    [ "$code" = 202 ] || { echo "status $code"; cat "$work/manifest.json"; exit 1; }
    sleep 0.2
  done
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
full=$(export_once "")
written=$(python3 -c "import json;m=json.load(open('$work/manifest.json'));print(sum(o['count'] for o in m['output']))")
echo "full export: $written resources in ${full}s = $(echo "$written / $full" | bc) resources/s; peak RSS during export: $(grep VmHWM /proc/$server/status | tr -s ' ') (at kick-off: $(cat "$work/rss-at-kickoff"))"
since=$(python3 -c "import json;print(json.load(open('$work/manifest.json'))['transactionTime'])")
# 1% of the sessions changed since: re-send them a little longer (a new Encounter version).
changed=$((rows / 100))
# Each run with a kept WORK database moves their end to another minute (51..59, counted in
# WORK/since-runs), so the re-sent sessions are changed, not duplicates.
runs=$(( $(cat "$work/since-runs" 2>/dev/null || echo 0) + 1 ))
echo $runs > "$work/since-runs"
python3 - "$work/sessions.csv" "$work/changed.csv" "$changed" "$runs" <<'PY'
import csv, sys
src, dst, n, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(src) as f, open(dst, "w", newline="") as g:
    r = csv.DictReader(f); w = csv.DictWriter(g, r.fieldnames); w.writeheader()
    for i, row in enumerate(r):
        if i >= n: break
        end = row["service.end"]
        row["service.end"] = end[:14] + "%02d" % (51 + run % 9) + end[16:]
        w.writerow(row)
PY
kill $server; wait $server 2>/dev/null || true
$gw import "$work/changed.csv" --quiet
$gw serve >> "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf $url/health/ready >/dev/null && break; sleep 0.2; done
q=$(python3 -c "import urllib.parse,sys;print(urllib.parse.quote(sys.argv[1]))" "$since")
part=$(export_once "?_since=$q")
written=$(python3 -c "import json;m=json.load(open('$work/manifest.json'));print(sum(o['count'] for o in m['output']))")
echo "_since export ($changed sessions changed): $written resources in ${part}s = $(echo "scale=1; 100 * $part / $full" | bc)% of the full export's time"
echo "the jobs' own figures (full, then _since):"
grep "export job figures" "$work/server.log" | sed 's/\x1b\[[0-9;]*m//g; s/.*export job figures //'
