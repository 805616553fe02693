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
source "$HERE/lib.sh"

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


# The values the requests and the verifiers' expectations are built from (for json).
export E_ISSUER="$ISSUER" E_AUDIENCE="$AUDIENCE" E_SUB="$SUB" E_UA="$USERAGENT"

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

run_checks python "$PY" "$HERE/python/verify.py" "$TMP/fixture" ${INTEROP_VERBOSE:+-v}
run_checks node node "$NODE_DIR/verify.mjs" "$TMP/fixture" ${INTEROP_VERBOSE:+-v}

log "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
