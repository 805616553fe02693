#!/usr/bin/env bash
# OAuth 2.0 interop: third-party OAuth client libraries against a live keygate.
#
#   bash interop/oauth/run.sh [KEYGATE_BINARY]
#
# openid-client (Node, with jose for RFC 9068) and Authlib (Python, with PyJWT) drive the
# token, revocation and introspection endpoints and the RFC 8414 metadata of a real
# gateway, and oauth4webapi and openid-client its DPoP-bound sessions (RFC 9449, with jose
# as the resource server): once on the embedded SQLite default and once on Postgres (a
# fresh schema in TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test; an
# unreachable Postgres fails the run when CI=true and skips that pass otherwise).
#
# KEYGATE_BINARY defaults to target/release/keygate under the repo root, else
# target/debug/keygate. INTEROP_VERBOSE=1 lists every check; INTEROP_KEEP=1 keeps the temp
# dir (server logs, the clients' config).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INTEROP="$(cd "$HERE/.." && pwd)"
ROOT="$(cd "$INTEROP/.." && pwd)"

AUDIENCE="oauth-interop-api"

log() { printf '%s\n' "$*"; }
die() { printf 'interop-oauth: %s\n' "$*" >&2; exit 1; }
warn() { printf 'interop-oauth: warning: %s\n' "$*" >&2; }

source "$ROOT/scripts/live-gateway.sh"
source "$INTEROP/lib.sh"

# ---- the binary and the tools -----------------------------------------------

pick_keygate "${1:-}" "$ROOT/target/release/keygate" "$ROOT/target/debug/keygate"

command -v python3 >/dev/null || die "python3 (3.11+) is required"
command -v node >/dev/null || die "node (20+) is required"
command -v npm >/dev/null || die "npm is required"
command -v curl >/dev/null || die "curl is required"

# ---- client dependencies (cached; shared with interop/run.sh) ---------------

cached_venv "${XDG_CACHE_HOME:-$HOME/.cache}/keygate-interop" "$INTEROP/python/requirements.txt" \
    "the interop Python requirements"
PY="$VENV/bin/python"

NODE_DIR="$INTEROP/node"
if [[ ! -d "$NODE_DIR/node_modules/openid-client" || ! -d "$NODE_DIR/node_modules/jose" \
    || ! -d "$NODE_DIR/node_modules/oauth4webapi" \
    || "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules/.package-lock.json" ]]; then
    log "interop-oauth: installing node packages (npm ci) in $NODE_DIR"
    (cd "$NODE_DIR" && npm ci --silent --no-audit --no-fund)
fi

# ---- Postgres: reachable? ---------------------------------------------------

PG_BASE="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
PG_SCHEMA=""
PG_OK=0
if command -v psql >/dev/null && PGCONNECT_TIMEOUT=5 psql "$PG_BASE" -qAtX -c 'SELECT 1' >/dev/null 2>&1; then
    PG_OK=1
elif [[ "${CI:-}" == true ]]; then
    die "Postgres is unreachable at $PG_BASE (or psql is missing); CI requires it"
else
    warn "Postgres is unreachable at $PG_BASE (or psql is missing): skipping the Postgres pass"
fi

# ---- temp dir and cleanup ---------------------------------------------------

TOP="$(mktemp -d "${TMPDIR:-/tmp}/keygate-oauth-interop.XXXXXX")"
TMP="$TOP"
SETUP=0   # a failure while a gateway is set up shows its log; the clients' failures do not

drop_schema() {
    [[ -n "$PG_SCHEMA" ]] || return 0
    psql "$PG_BASE" -qAtX -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 \
        || warn "could not drop schema $PG_SCHEMA"
    PG_SCHEMA=""
}

cleanup() {
    local rc=$?
    stop_server
    [[ $rc -eq 0 || $SETUP -eq 0 ]] || show_server_log
    drop_schema
    if [[ "${INTEROP_KEEP:-0}" == 1 ]]; then
        printf 'interop-oauth: kept %s\n' "$TOP" >&2
    else
        rm -rf "$TOP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers ----------------------------------------------------------------

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}


# create_app NAME PROFILE [SETTINGS]: creates an app (reuse_grace 0: any replay is a reuse)
# with the access_token_profile PROFILE and the settings of the JSON object SETTINGS (e.g.
# '{"dpop": "required"}'), then sets its issuer to its metadata issuer PUBLIC_URL/app/ID,
# so that the tokens' iss is the discovered issuer. Writes app-NAME.json
# ({app_id, app_key, issuer, audience}).
create_app() {
    local name=$1 profile=$2 settings=${3:-'{}'} id
    E_NAME="$name" E_AUD="$AUDIENCE" E_PROFILE="$profile" E_SETTINGS="$settings" \
        json "req-$name.json" '{"name": E["E_NAME"], "audience": E["E_AUD"], "reuse_grace": 0, "access_token_profile": E["E_PROFILE"], **json.loads(E["E_SETTINGS"])}'
    api POST /root/apps "$ROOT_KEY" "req-$name.json" 201 "created-$name.json"
    id="$(field "created-$name.json" app_id)"
    E_ISSUER="$PUBLIC_URL/app/$id" json "patch-$name.json" '{"issuer": E["E_ISSUER"]}'
    api PATCH "/root/apps/$id" "$ROOT_KEY" "patch-$name.json" 200 "settings-$name.json"
    [[ "$(field "settings-$name.json" issuer)" == "$PUBLIC_URL/app/$id" ]] \
        || die "PATCH /root/apps/$id did not set the issuer: $(head -c 400 "settings-$name.json")"
    [[ "$(field "settings-$name.json" access_token_profile)" == "$profile" ]] \
        || die "app $id: access_token_profile is not $profile: $(head -c 400 "settings-$name.json")"
    "$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); sys.exit(any(s.get(k) != v for k, v in json.loads(sys.argv[2]).items()))' \
        "settings-$name.json" "$settings" \
        || die "app $id: the settings are not $settings: $(head -c 600 "settings-$name.json")"
    E_NAME="$name" E_ISSUER="$PUBLIC_URL/app/$id" E_AUD="$AUDIENCE" json "app-$name.json" \
        '{"app_id": load("created-" + E["E_NAME"] + ".json")["app_id"], "app_key": load("created-" + E["E_NAME"] + ".json")["app_key"], "issuer": E["E_ISSUER"], "audience": E["E_AUD"]}'
}


# run_pass BACKEND [VAR=VALUE ...]: one gateway on a fixed free port with public_url set to
# its own address, five apps (two plain, three with DPoP), the clients against it; then the
# gateway is stopped.
run_pass() {
    local backend=$1 port
    shift
    SETUP=1
    TMP="$TOP/$backend"
    mkdir -p "$TMP"
    port="$(free_port)"
    PUBLIC_URL="http://127.0.0.1:$port"
    start_keygate "oauth_$backend" KEYGATE_LISTEN="127.0.0.1:$port" KEYGATE_PUBLIC_URL="$PUBLIC_URL" "$@"
    [[ "$BASE" == "$PUBLIC_URL" ]] \
        || die "keygate listens on $BASE, not on $PUBLIC_URL (its public_url): start_keygate in scripts/live-gateway.sh must honour KEYGATE_LISTEN"

    cd "$TMP"
    create_app "oauth-interop-keygate" keygate
    create_app "oauth-interop-rfc9068" rfc9068
    # DPoP (RFC 9449): sessions must be bound; public clients (auth method none) renew them.
    create_app "oauth-interop-dpop" keygate '{"dpop": "required", "oauth_public_clients": true}'
    # ... and every proof must carry a nonce of the gateway's (RFC 9068 access tokens).
    create_app "oauth-interop-dpop-nonce" rfc9068 \
        '{"dpop": "required", "dpop_nonce": true, "oauth_public_clients": true}'
    # ... may be bound: unbound sessions too, which public clients may not renew.
    create_app "oauth-interop-dpop-allowed" keygate '{"dpop": "allowed", "oauth_public_clients": true}'
    E_BACKEND="$backend" E_URL="$PUBLIC_URL" json config.json \
        '{"backend": E["E_BACKEND"], "public_url": E["E_URL"], "apps": {"keygate": load("app-oauth-interop-keygate.json"), "rfc9068": load("app-oauth-interop-rfc9068.json"), "dpop": load("app-oauth-interop-dpop.json"), "dpop_nonce": load("app-oauth-interop-dpop-nonce.json"), "dpop_allowed": load("app-oauth-interop-dpop-allowed.json")}}'
    log "== $backend: keygate $("$BIN" --version | awk '{print $NF}') at $PUBLIC_URL (public_url), apps $(field "$TMP/app-oauth-interop-keygate.json" app_id) (keygate), $(field "$TMP/app-oauth-interop-rfc9068.json" app_id) (rfc9068), $(field "$TMP/app-oauth-interop-dpop.json" app_id) (dpop), $(field "$TMP/app-oauth-interop-dpop-nonce.json" app_id) (dpop_nonce) and $(field "$TMP/app-oauth-interop-dpop-allowed.json" app_id) (dpop_allowed)"

    SETUP=0
    run_checks "openid-client ($backend)" node "$HERE/openid_client.mjs" "$TMP/config.json" ${INTEROP_VERBOSE:+-v}
    run_checks "authlib ($backend)" "$PY" "$HERE/authlib_client.py" "$TMP/config.json" ${INTEROP_VERBOSE:+-v}
    run_checks "dpop (oauth4webapi, openid-client) ($backend)" \
        node "$HERE/dpop_clients.mjs" "$TMP/config.json" ${INTEROP_VERBOSE:+-v}
    stop_server
}

# ---- the passes -------------------------------------------------------------

run_pass sqlite

if [[ $PG_OK -eq 1 ]]; then
    PG_SCHEMA="kgt_interop_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    psql "$PG_BASE" -qAtX -v ON_ERROR_STOP=1 -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null \
        || die "cannot create schema $PG_SCHEMA in $PG_BASE"
    sep='?'
    [[ "$PG_BASE" != *\?* ]] || sep='&'
    run_pass postgres KEYGATE_DATABASE_URL="$PG_BASE${sep}options=-c%20search_path%3D$PG_SCHEMA"
    drop_schema
else
    log "== postgres: skipped (Postgres unreachable)"
fi

log "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
