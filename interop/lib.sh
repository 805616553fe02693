# Shared by interop/run.sh and interop/oauth/run.sh: calls to the live gateway, JSON files,
# and the tally of the checkers' summary lines. The caller sources scripts/live-gateway.sh
# (for BASE), defines die() and log(), and sets PY (a Python with the interop requirements)
# and TMP.
# shellcheck shell=bash

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

# json FILE PY_EXPR: write json.dumps(PY_EXPR) to FILE; PY_EXPR sees the environment as E
# (pass values as E_* variables) and load(NAME), a JSON file of $TMP.
json() {
    local out=$1 expr=$2
    E_DIR="$TMP" "$PY" -c '
import json, os, sys
E = os.environ
def load(name): return json.load(open(os.path.join(E["E_DIR"], name)))
json.dump(eval(sys.argv[2]), open(sys.argv[1], "w"))
' "$out" "$expr"
}

PASSED=0
FAILED=0
# run_checks NAME CMD...: runs a checker, whose last line must be "...: N passed, M failed",
# and adds its counts to PASSED and FAILED (no summary, or a failed exit, is a failure).
run_checks() {
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
