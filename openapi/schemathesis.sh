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

# ---- the binary -------------------------------------------------------------

if [[ $# -ge 1 ]]; then
    BIN="$1"
elif [[ -x "$ROOT/target/debug/keygate" ]]; then
    BIN="$ROOT/target/debug/keygate"
else
    BIN="$ROOT/target/release/keygate"
fi
[[ -f "$BIN" && -x "$BIN" ]] || die "keygate binary not found: $BIN (run: cargo build)"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"   # absolute: the server runs in a temp dir

command -v python3 >/dev/null || die "python3 is required"
command -v curl >/dev/null || die "curl is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"

# ---- schemathesis (cached; redone when requirements.txt changes) -------------

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/keygate-openapi"
VENV="$CACHE/venv"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want_stamp="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null \
    || [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$want_stamp" ]]; then
    log "installing schemathesis into $VENV"
    mkdir -p "$CACHE"
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
        python3 -m venv --clear "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQ"
    printf '%s\n' "$want_stamp" >"$STAMP"
fi
ST="$VENV/bin/schemathesis"

# ---- start keygate ----------------------------------------------------------

TMP="$(mktemp -d "${TMPDIR:-/tmp}/keygate-openapi.XXXXXX")"
SERVER_PID=""

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do                      # up to 5 s for a graceful stop
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    local rc=$?
    stop_server
    if [[ $rc -ne 0 && -s "$TMP/server.stderr" ]]; then
        printf -- '--- keygate stderr (last 15 lines) ---\n' >&2
        tail -n 15 "$TMP/server.stderr" >&2 || true
    fi
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

ROOT_KEY="kgr_openapi_$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
MASTER_KEY="$(head -c 32 /dev/urandom | base64)"
(
    cd "$TMP"
    # Ignore any KEYGATE_* settings of the caller (a real database, a config file ...).
    while read -r name; do unset "$name"; done < <(compgen -e | grep '^KEYGATE_' || true)
    # The failed-authentication limiter is off: schemathesis sends requests without keys
    # on purpose, and a limited address would answer 429 to everything after them.
    # Webhook delivery is off: the webhooks that schemathesis sets name made-up hosts,
    # and nothing may be posted to them.
    export KEYGATE_ROOT_KEY="$ROOT_KEY" KEYGATE_MASTER_KEY="$MASTER_KEY" \
        KEYGATE_DATA_DIR="$TMP/data" KEYGATE_WORKERS=2 KEYGATE_AUTH_FAILURES_PER_MINUTE=0 \
        KEYGATE_WEBHOOK_POLL_MS=0
    exec "$BIN" serve --listen 127.0.0.1:0
) >"$TMP/server.stdout" 2>"$TMP/server.stderr" &
SERVER_PID=$!

BASE=""
for _ in $(seq 1 300); do                             # up to 30 s
    line="$(grep -m1 -o 'keygate listening on http://[^ ]*' "$TMP/server.stdout" 2>/dev/null || true)"
    if [[ -n "$line" ]]; then
        BASE="${line#keygate listening on }"
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || die "keygate exited before it was listening"
    sleep 0.1
done
[[ -n "$BASE" ]] || die "keygate printed no 'keygate listening on http://...' line within 30 s"
PORT="${BASE##*:}"
[[ "$PORT" =~ ^[0-9]+$ && "$PORT" != 0 ]] || die "cannot parse the port from: $line"
BASE="http://127.0.0.1:$PORT"

for i in $(seq 1 100); do                             # up to 10 s
    curl -fsS --max-time 2 -o /dev/null "$BASE/healthz" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "keygate exited"
    [[ $i -lt 100 ]] || die "$BASE/healthz did not answer 200 within 10 s"
    sleep 0.1
done

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
export APP_ID APP_KEY ROOT_APP_ID ROOT_KEY_ID

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
