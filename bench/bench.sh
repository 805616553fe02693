#!/usr/bin/env bash
# `just bench`: renew, oauth-refresh (renew through the OAuth token endpoint), dpop-renew
# (renew of DPoP-bound sessions, each with a forwarded proof) and sign at
# c = 1, 8, 32, 128 (closed loop), then renew and dpop-renew at open-loop rates of 1,000,
# 3,000 and 6,000/s (c = 32), against a release keygate, first on SQLite (synchronous=FULL), then on
# Postgres; one table at the end, with the gateway's CPU per request in all and by thread;
# then the tenant-isolation run on each backend (`keygate-bench isolation`, its own table;
# BENCH_ISOLATION=0 skips it, and an unexpected answer in it makes the script exit 2).
#   BENCH_DURATION=10s BENCH_CONNS="1 8 32 128" BENCH_RATES="1000 3000 6000" \
#   BENCH_MODES="renew oauth-refresh dpop-renew sign" BENCH_RATE_MODES="renew dpop-renew" \
#   BENCH_BACKENDS="sqlite postgres" BENCH_ISOLATION=1 bash bench/bench.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

build_release
work=$(mktemp -d)
trap 'stop_gateway; rm -rf "$work"; drop_pg_schemas' EXIT
results="$work/results.jsonl"
: >"$results"

for backend in ${BENCH_BACKENDS:-sqlite postgres}; do
    url=""
    [[ "$backend" == postgres ]] && url=$(fresh_pg_url)
    start_gateway "$work/$backend" "$url"
    # On Postgres, the database's CPU per request too (its processes are on this machine).
    db=()
    [[ "$backend" == postgres ]] && db=(--db-process postgres)
    create_app "bench-$backend"
    say "== $backend: gateway pid $GATEWAY_PID at $GATEWAY_URL"
    for mode in ${BENCH_MODES:-renew oauth-refresh dpop-renew sign}; do
        for conns in ${BENCH_CONNS:-1 8 32 128}; do
            say "-- $backend $mode c=$conns"
            load "$mode" "$conns" "$backend" "${db[@]}" | tee -a "$results" >&2
        done
    done
    for rate in ${BENCH_RATES-1000 3000 6000}; do
        for mode in ${BENCH_RATE_MODES:-renew dpop-renew}; do
            say "-- $backend $mode open loop at $rate/s, c=32"
            load "$mode" 32 "$backend" --rate "$rate" "${db[@]}" | tee -a "$results" >&2
        done
    done
    stop_gateway
done

# Tenant isolation on each backend (keygate-bench isolation: B at 200/s alone, then beside A
# flooding with a request quota, then without one); BENCH_ISOLATION=0 skips it.
isolation="$work/isolation.txt"
: >"$isolation"
isolation_failed=""
if [[ "${BENCH_ISOLATION:-1}" != 0 ]]; then
    for backend in ${BENCH_BACKENDS:-sqlite postgres}; do
        db=()
        if [[ "$backend" == postgres ]]; then
            url=$(fresh_pg_url)
            db=(--database-url "$url")
        fi
        say "-- $backend isolation"
        "$BENCH" isolation --keygate "$KEYGATE" "${db[@]}" -d "${BENCH_DURATION:-10s}" \
            --warmup "${BENCH_WARMUP:-2s}" >>"$isolation" || isolation_failed+=" $backend"
    done
fi

echo
echo "keygate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
table <"$results"
if [[ -s "$isolation" ]]; then
    echo
    grep -v '^{' "$isolation"
fi
if [[ -n "$isolation_failed" ]]; then
    say "!!! isolation: unexpected results on$isolation_failed (see above)"
    exit 2
fi
