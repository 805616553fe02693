#!/usr/bin/env bash
# Interop check: tokens issued by a real keygate, verified offline by PyJWT and jose.
#
#   bash interop/run.sh [KEYGATE_BINARY]
#
# KEYGATE_BINARY defaults to target/release/keygate under the repo root, else
# target/debug/keygate. Set INTEROP_KEEP=1 to keep the temp dir (server logs, tokens).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

ISSUER="https://interop.example"
AUDIENCE="interop-web"
SUB="interop-user-1"
USERAGENT="keygate-interop/1.0"

log() { printf '%s\n' "$*"; }
die() { printf 'interop: %s\n' "$*" >&2; exit 1; }

source "$ROOT/scripts/live-gateway.sh"

# ---- the binary -------------------------------------------------------------

pick_keygate "${1:-}" "$ROOT/target/release/keygate" "$ROOT/target/debug/keygate"

command -v python3 >/dev/null || die "python3 is required"
command -v node >/dev/null || die "node (20+) is required"
command -v npm >/dev/null || die "npm is required"
command -v curl >/dev/null || die "curl is required"

# ---- verifier dependencies (cached; quiet and idempotent) -------------------

cached_venv "${XDG_CACHE_HOME:-$HOME/.cache}/keygate-interop" "$HERE/python/requirements.txt" \
    "the interop Python requirements"
PY="$VENV/bin/python"

NODE_DIR="$HERE/node"
if [[ ! -d "$NODE_DIR/node_modules/jose" \
    || "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules/.package-lock.json" ]]; then
    log "interop: installing node packages (npm ci) in $NODE_DIR"
    (cd "$NODE_DIR" && npm ci --silent --no-audit --no-fund)
fi

# ---- start keygate ----------------------------------------------------------

TMP="$(mktemp -d "${TMPDIR:-/tmp}/keygate-interop.XXXXXX")"
VERIFYING=0   # once the verifiers run, a failure is theirs: no server log then

cleanup() {
    local rc=$?
    stop_server
    [[ $rc -eq 0 || $VERIFYING -ne 0 ]] || show_server_log
    if [[ "${INTEROP_KEEP:-0}" == 1 ]]; then
        printf 'interop: kept %s\n' "$TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_keygate interop

# ---- issue tokens -----------------------------------------------------------

# api METHOD PATH AUTH BODY_FILE WANT_STATUS OUT_FILE
api() {
    local method=$1 path=$2 auth=$3 body=$4 want=$5 out=$6 status
    local args=(-sS --max-time 10 -o "$out" -w '%{http_code}' -X "$method")
    [[ -z "$auth" ]] || args+=(-H "Authorization: $auth")
    [[ -z "$body" ]] || args+=(-H 'Content-Type: application/json' --data-binary "@$body")
    status="$(curl "${args[@]}" "$BASE$path")" || die "$method $path: curl failed"
    [[ "$status" == "$want" ]] || die "$method $path: HTTP $status, want $want: $(head -c 400 "$out")"
}
# field FILE KEY: a top-level string member of a JSON file
field() {
    "$PY" -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; assert isinstance(v, str) and v; print(v)' \
        "$1" "$2" || die "$1 has no string member '$2': $(head -c 400 "$1")"
}
# json FILE PY_EXPR: write json.dumps(PY_EXPR) to FILE; PY_EXPR sees env vars as E and load()
json() {
    local out=$1 expr=$2
    E_ISSUER="$ISSUER" E_AUDIENCE="$AUDIENCE" E_SUB="$SUB" E_UA="$USERAGENT" E_DIR="$TMP" \
        "$PY" -c '
import json, os, sys
E = os.environ
def load(name): return json.load(open(os.path.join(E["E_DIR"], name)))
json.dump(eval(sys.argv[2]), open(sys.argv[1], "w"))
' "$out" "$expr"
}

cd "$TMP"
json app-req.json '{"name": "interop", "issuer": E["E_ISSUER"], "audience": E["E_AUDIENCE"]}'
api POST /root/apps "$ROOT_KEY" app-req.json 201 app.json
APP_ID="$(field app.json app_id)"
APP_KEY="$(field app.json app_key)"

json sign-req.json '{"sub": E["E_SUB"], "ip": "203.0.113.7", "useragent": E["E_UA"], "roles": ["admin"]}'
api POST "/app/$APP_ID/sign" "$APP_KEY" sign-req.json 200 sign.json

json renew-req.json '{"refresh_token": load("sign.json")["refresh_token"], "ip": "203.0.113.8", "useragent": E["E_UA"]}'
api POST "/app/$APP_ID/renew" "$APP_KEY" renew-req.json 200 renew.json

api GET "/app/$APP_ID/jwks.json" "" "" 200 jwks.json

# The verifiers' inputs: what the tokens must say, the token responses as keygate
# returned them (auth tokens, refresh tokens, key_id, base64 PEM public_key), the JWKS.
mkdir -p fixture
cp jwks.json fixture/jwks.json
json fixture/expect.json '{"issuer": E["E_ISSUER"], "audience": E["E_AUDIENCE"], "sub": E["E_SUB"], "roles": ["admin"]}'
json fixture/tokens.json '[{"step": s, "request": load(s + "-req.json"), "response": load(s + ".json")} for s in ("sign", "renew")]'

log "keygate $("$BIN" --version | awk '{print $NF}') at $BASE: app $APP_ID, key $(field sign.json key_id)"

# Verification is offline: stop the server first.
stop_server
VERIFYING=1

# ---- verify -----------------------------------------------------------------

PASSED=0
FAILED=0
# run_verifier NAME CMD...: its last line must be "...: N passed, M failed"
run_verifier() {
    local name=$1 out rc=0 last p f
    shift
    out="$("$@" 2>&1)" || rc=$?
    printf '%s\n' "$out"
    last="$(printf '%s\n' "$out" | tail -n 1)"
    if [[ "$last" =~ :\ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]}
    else
        p=0 f=1
        log "$name: no summary line (exit $rc)"
    fi
    if [[ $rc -ne 0 && $f -eq 0 ]]; then
        f=1
        log "$name: exit $rc"
    fi
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
}

run_verifier python "$PY" "$HERE/python/verify.py" "$TMP/fixture" ${INTEROP_VERBOSE:+-v}
run_verifier node node "$NODE_DIR/verify.mjs" "$TMP/fixture" ${INTEROP_VERBOSE:+-v}

log "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
