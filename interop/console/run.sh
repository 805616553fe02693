#!/usr/bin/env bash
# The admin console in a real browser: Debian's Chromium, driven by playwright-core (npm),
# against a live keygate on a fresh embedded database with the console on.
#
#   bash interop/console/run.sh [KEYGATE_BINARY]
#
# Installs what it needs when it is missing: Chromium with apt-get (as root; otherwise it
# says what to install), and playwright-core with npm ci (no browser download). Screenshots
# of each page at 1280 and 390 px land in interop/console/screenshots/ (ignored by git).
# CONSOLE_KEEP=1 keeps the temp dir (server logs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BURST=3

log() { printf '%s\n' "$*"; }
die() { printf 'console: %s\n' "$*" >&2; exit 1; }

source "$ROOT/scripts/live-gateway.sh"

pick_keygate "${1:-}" "$ROOT/target/release/keygate" "$ROOT/target/debug/keygate"
command -v node >/dev/null || die "node (20+) is required"
command -v curl >/dev/null || die "curl is required"

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
    [[ "$(id -u)" == 0 ]] || die "$CHROMIUM is missing: install Debian's chromium (apt-get install chromium)"
    log "console: installing Chromium (apt-get install chromium)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
fi
[[ -x "$CHROMIUM" ]] || die "$CHROMIUM is still missing"

if [[ ! -d "$HERE/node_modules/playwright-core" \
    || "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]]; then
    log "console: installing playwright-core (npm ci) in $HERE"
    (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/keygate-console.XXXXXX")"
cleanup() {
    local rc=$?
    stop_server
    [[ $rc -eq 0 ]] || show_server_log
    if [[ "${CONSOLE_KEEP:-0}" == 1 ]]; then printf 'console: kept %s\n' "$TMP" >&2; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_keygate console KEYGATE_CONSOLE=true KEYGATE_AUTH_FAILURE_BURST="$BURST"
log "console: $("$CHROMIUM" --version 2>/dev/null | head -n 1) against $BASE/console/"
BASE="$BASE" ROOT_KEY="$ROOT_KEY" BURST="$BURST" CHROMIUM="$CHROMIUM" \
    timeout 300 node "$HERE/console.mjs"
