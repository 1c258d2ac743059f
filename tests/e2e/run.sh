#!/usr/bin/env bash
# Runs the finance dashboard end-to-end test against a server that is already running.
#   BASE_URL=http://127.0.0.1:8080 FINANCE_TOKEN=demo-finance-token tests/e2e/run.sh
# Installs Debian's Chromium if missing (needs root) and the pinned playwright-core (npm ci; no browser download).
set -euo pipefail
cd "$(dirname "$0")"

export BASE_URL="${BASE_URL:-http://127.0.0.1:8080}"
export FINANCE_TOKEN="${FINANCE_TOKEN:-demo-finance-token}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

if [ ! -x "$CHROMIUM" ]; then
  echo "installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

command -v node >/dev/null || { echo "node is required (apt-get install -y nodejs npm)" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error
node finance.mjs
