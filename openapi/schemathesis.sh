#!/usr/bin/env bash
# Schemathesis against a live gateway: every answer must be one that GET /openapi.json
# describes (status, content type, headers, body schema), and none may be a 5xx.
#
#   bash openapi/schemathesis.sh [KEYGATE_BINARY]
#
# KEYGATE_BINARY defaults to target/debug/keygate under the repo root, else
# target/release/keygate. Settings (environment):
#   OPENAPI_EXAMPLES    test cases per operation and phase (default 100)
#   OPENAPI_TIME_LIMIT  wall-clock limit in seconds for all passes (default 180); a run
#                       that exceeds it fails
#   OPENAPI_SEED        the seed (default 1, so CI runs the same cases; "random" for a new
#                       one: the seed of a run is printed, to reproduce it)
#   OPENAPI_KEEP=1      keep the temp dir (server log, JUnit reports)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

EXAMPLES="${OPENAPI_EXAMPLES:-100}"
TIME_LIMIT="${OPENAPI_TIME_LIMIT:-180}"
SEED="${OPENAPI_SEED:-1}"
CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance"

log() { printf 'openapi: %s\n' "$*"; }
die() { printf 'openapi: %s\n' "$*" >&2; exit 1; }

source "$ROOT/scripts/live-gateway.sh"

# ---- the binary -------------------------------------------------------------

pick_keygate "${1:-}" "$ROOT/target/debug/keygate" "$ROOT/target/release/keygate"

command -v python3 >/dev/null || die "python3 is required"
command -v curl >/dev/null || die "curl is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"

# ---- schemathesis (cached; redone when requirements.txt changes) -------------

cached_venv "${XDG_CACHE_HOME:-$HOME/.cache}/keygate-openapi" "$HERE/requirements.txt" schemathesis
ST="$VENV/bin/schemathesis"

# ---- start keygate ----------------------------------------------------------

TMP="$(mktemp -d "${TMPDIR:-/tmp}/keygate-openapi.XXXXXX")"

cleanup() {
    local rc=$?
    stop_server
    [[ $rc -eq 0 ]] || show_server_log
    if [[ "${OPENAPI_KEEP:-0}" == 1 ]]; then
        printf 'openapi: kept %s\n' "$TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The failed-authentication limiter is off: schemathesis sends requests without keys on
# purpose, and a limited address would answer 429 to everything after them. Webhook
# delivery is off: the webhooks that schemathesis sets name made-up hosts, and nothing may
# be posted to them.
# A public URL, so that the OAuth metadata is served (nothing fetches it).
start_keygate openapi KEYGATE_AUTH_FAILURES_PER_MINUTE=0 KEYGATE_WEBHOOK_POLL_MS=0 \
    KEYGATE_PUBLIC_URL=https://keygate.example

# ---- the apps under test ----------------------------------------------------

# create_app NAME OUT_FILE
create_app() {
    local status
    status="$(curl -sS --max-time 10 -o "$2" -w '%{http_code}' -X POST \
        -H "Authorization: $ROOT_KEY" -H 'Content-Type: application/json' \
        --data-binary "{\"name\": \"$1\"}" "$BASE/root/apps")" || die "POST /root/apps: curl failed"
    [[ "$status" == 201 ]] || die "POST /root/apps: HTTP $status: $(head -c 400 "$2")"
}
# field FILE KEY: a top-level string member of a JSON file
field() {
    python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; assert isinstance(v, str) and v; print(v)' \
        "$1" "$2" || die "$1 has no string member '$2'"
}

cd "$TMP"
create_app openapi-tenant tenant.json
create_app openapi-root root.json
export ROOT_KEY
APP_ID="$(field tenant.json app_id)"
APP_KEY="$(field tenant.json app_key)"
ROOT_APP_ID="$(field root.json app_id)"
ROOT_KEY_ID="$(field root.json key_id)"
APP_BASIC="$(printf '%s:%s' "$APP_ID" "$APP_KEY" | base64 -w0)"
export APP_ID APP_KEY APP_BASIC ROOT_APP_ID ROOT_KEY_ID

# ---- the passes -------------------------------------------------------------

# Three passes, in order, so that no operation takes away what a later one tests:
#   1. the tenant, public and operations endpoints, on the tenant app;
#   2. the root endpoints on the second app, except deleting it;
#   3. deleting an app, last.
PASSES=(
    "tenant|--exclude-path-regex=^/root/"
    "root|--include-path-regex=^/root/ --exclude-operation-id=delete_app"
    "delete|--include-operation-id=delete_app"
)

seed_args=()
[[ "$SEED" == random ]] || seed_args=(--seed "$SEED")

log "$("$ST" --version) against keygate $("$BIN" --version | awk '{print $NF}') at $BASE; $EXAMPLES cases per operation and phase, seed ${SEED}, at most ${TIME_LIMIT} s"
started=$SECONDS
failed_passes=()
for pass in "${PASSES[@]}"; do
    name="${pass%%|*}"
    read -r -a filters <<<"${pass#*|}"
    remaining=$((TIME_LIMIT - (SECONDS - started)))
    [[ $remaining -gt 0 ]] || die "out of time (${TIME_LIMIT} s) before the '$name' pass"
    log "pass '$name'"
    rc=0
    timeout --kill-after=10 "$remaining" "$ST" --config-file "$HERE/schemathesis.toml" \
        run "$BASE/openapi.json" "${filters[@]}" \
        --checks "$CHECKS" \
        --max-examples "$EXAMPLES" "${seed_args[@]}" \
        --workers 1 \
        --request-timeout 10 \
        --generation-database none \
        --report junit --report-junit-path "$TMP/junit-$name.xml" \
        --no-color || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        die "the '$name' pass exceeded the time limit of ${TIME_LIMIT} s for all passes"
    fi
    [[ $rc -eq 0 ]] || failed_passes+=("$name")
    kill -0 "$SERVER_PID" 2>/dev/null || die "keygate exited during the '$name' pass"
done
elapsed=$((SECONDS - started))

if grep -q 'panicked at' "$TMP/server.stderr"; then
    grep -m5 'panicked at' "$TMP/server.stderr" >&2
    failed_passes+=("server panic")
fi

# One line to close on: operations tested, over all passes, from the JUnit reports.
python3 - "$TMP"/junit-*.xml <<'EOF'
import sys
import xml.etree.ElementTree as ET

passed = failed = 0
for path in sys.argv[1:]:
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        else:
            passed += 1
print(f"openapi: {passed} passed, {failed} failed")
EOF
log "took ${elapsed} s"
[[ ${#failed_passes[@]} -eq 0 ]] || die "failed: ${failed_passes[*]}"
