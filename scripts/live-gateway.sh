# Shared by interop/run.sh and openapi/schemathesis.sh: pick the keygate binary, keep a
# cached Python virtualenv, and run one keygate on a fresh embedded database.
# The caller defines die() and log(), and sets TMP (a fresh temp dir) before start_keygate.
# shellcheck shell=bash

# pick_keygate GIVEN CANDIDATE...: sets BIN, as an absolute path, to GIVEN when it is not
# empty, else to the first executable CANDIDATE, else to the last one.
pick_keygate() {
    local given="$1" candidate
    shift
    BIN="$given"
    if [[ -z "$BIN" ]]; then
        for candidate in "$@"; do
            BIN="$candidate"
            [[ -x "$candidate" ]] && break
        done
    fi
    [[ -f "$BIN" && -x "$BIN" ]] || die "keygate binary not found: $BIN (run: cargo build)"
    BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"   # absolute: the server runs in a temp dir
}

# cached_venv CACHE_DIR REQUIREMENTS WHAT: sets VENV to a virtualenv under CACHE_DIR with
# REQUIREMENTS installed; it is made again only when that file changes.
cached_venv() {
    local cache="$1" req="$2" what="$3" want
    VENV="$cache/venv"
    local stamp="$VENV/.requirements.sha256"
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null \
        || [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
        log "installing $what into $VENV"
        mkdir -p "$cache"
        if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
            python3 -m venv --clear "$VENV"
        fi
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
        printf '%s\n' "$want" >"$stamp"
    fi
}

SERVER_PID=""

# start_keygate NAME [VAR=VALUE ...]: starts "$BIN serve" in $TMP on a fresh embedded
# database, with a new root key (kgr_NAME_…) and master key and the given extra settings
# (KEYGATE_LISTEN among them picks the address; by default a free port on 127.0.0.1),
# none of the caller's KEYGATE_* settings, its output in $TMP/server.stdout and
# $TMP/server.stderr. Sets ROOT_KEY, MASTER_KEY, SERVER_PID, and BASE once /healthz answers.
start_keygate() {
    local name="$1" line="" i
    shift
    ROOT_KEY="kgr_${name}_$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"   # 40+ chars
    MASTER_KEY="$(head -c 32 /dev/urandom | base64)"
    (
        cd "$TMP"
        # Ignore any KEYGATE_* settings of the caller (a real database, a config file ...).
        while read -r var; do unset "$var"; done < <(compgen -e | grep '^KEYGATE_' || true)
        export KEYGATE_ROOT_KEY="$ROOT_KEY" KEYGATE_MASTER_KEY="$MASTER_KEY" \
            KEYGATE_DATA_DIR="$TMP/data" KEYGATE_WORKERS=2
        [[ $# -eq 0 ]] || export "$@"
        exec "$BIN" serve --listen "${KEYGATE_LISTEN:-127.0.0.1:0}"
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
    local port="${BASE##*:}"
    [[ "$port" =~ ^[0-9]+$ && "$port" != 0 ]] || die "cannot parse the port from: $line"
    BASE="http://127.0.0.1:$port"

    for i in $(seq 1 100); do                             # up to 10 s
        curl -fsS --max-time 2 -o /dev/null "$BASE/healthz" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "keygate exited"
        [[ $i -lt 100 ]] || die "$BASE/healthz did not answer 200 within 10 s"
        sleep 0.1
    done
}

# stop_server: SIGTERM, up to 5 s for a graceful stop, then SIGKILL.
stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# show_server_log: the last lines keygate wrote to stderr, for a failed run.
show_server_log() {
    if [[ -s "$TMP/server.stderr" ]]; then
        printf -- '--- keygate stderr (last 15 lines) ---\n' >&2
        tail -n 15 "$TMP/server.stderr" >&2 || true
    fi
}
