#!/usr/bin/env bash
# `just bench-isolation`: `keygate-bench isolation` (one app flooding the gateway beside
# another renewing at a steady rate: alone, with a request quota on the flooder, without
# one) against a release keygate, on SQLite, then on Postgres (a fresh schema, dropped
# afterwards) when ISOLATION_DATABASE_URL or TEST_DATABASE_URL names one. Prints each
# backend's table and JSON lines; exits 2 if either run saw an unexpected answer.
#   ISOLATION_DURATION=10s ISOLATION_ARGS="--a-quota 2000" bash bench/isolation.sh
set -euo pipefail
PG_ISOLATION="${ISOLATION_DATABASE_URL:-${TEST_DATABASE_URL:-}}"
[[ -n "$PG_ISOLATION" ]] && BENCH_DATABASE_URL="$PG_ISOLATION"
source "$(dirname "$0")/lib.sh"
# The crates' build scripts read TEST_DATABASE_URL (it decides whether the Postgres tests
# run), so building with it set would rebuild the release binaries for nothing.
unset TEST_DATABASE_URL

if pgrep -x keygate-bench >/dev/null; then
    die "another keygate-bench is running; run one benchmark at a time"
fi
build_release
pg_url=""
trap '[[ -n "$pg_url" ]] && drop_pg_schema "$pg_url"' EXIT

backends=(sqlite)
[[ -n "$PG_ISOLATION" ]] && backends+=(postgres)
failed=0
for backend in "${backends[@]}"; do
    db=()
    if [[ "$backend" == postgres ]]; then
        pg_url=$(fresh_pg_url)
        db=(--database-url "$pg_url")
    fi
    say "== isolation on $backend"
    # shellcheck disable=SC2086 # ISOLATION_ARGS is a list of options
    "$BENCH" isolation --keygate "$KEYGATE" "${db[@]}" -d "${ISOLATION_DURATION:-10s}" \
        ${ISOLATION_ARGS:-} || { say "!! isolation on $backend exited $?"; failed=1; }
    if [[ -n "$pg_url" ]]; then
        drop_pg_schema "$pg_url"
        pg_url=""
    fi
done
[[ "$failed" == 0 ]] || exit 2
