#!/usr/bin/env bash
# `just failover`: the failover fault run. Builds release, then runs
# `keygate-bench failover`: a replicated Postgres pair from bench/pgpair.sh, two gateways on
# its multi-host URL, renew load from 32 connections across both, 10 failovers (the primary
# stopped at once, the standby promoted, the old primary rebuilt as a synchronous
# standby), then a reconciliation of the journal: nothing lost, revived or doubled, no 401
# and no 5xx other than 503 during the load, every 503 with Retry-After. Prints the window
# of failed renews per failover and a summary; exits 1 on any violation and keeps the work
# directory (gateway and pgpair logs).
#
#   bash bench/failover.sh                      the defaults below
#   bash bench/failover.sh --failovers 3 -c 16  any option of keygate-bench failover
#   bash bench/failover.sh --help               all the options
#
# Needs root or the postgres user (pgpair.sh runs the servers as postgres under root) and
# the PostgreSQL server binaries (PG_BIN, default the newest /usr/lib/postgresql/*/bin).
# Knobs (environment):
#   FAILOVER_NO_BUILD=1   use the binaries in target/release as they are
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/target/release/keygate-bench"
KEYGATE="$ROOT/target/release/keygate"

if [[ "${FAILOVER_NO_BUILD:-0}" != 1 ]]; then
    printf 'failover: building release binaries (cargo build --release -p keygate-gateway -p keygate-loadgen)\n' >&2
    (cd "$ROOT" && cargo build --release -p keygate-gateway -p keygate-loadgen) >&2
fi
for binary in "$BENCH" "$KEYGATE"; do
    [[ -x "$binary" ]] || {
        printf 'failover: %s is missing (build it, or unset FAILOVER_NO_BUILD)\n' "$binary" >&2
        exit 1
    }
done

# The harness's defaults are the run's: 10 failovers (the primary stopped with -m
# immediate; --stop-mode fast for a switchover's shutdown), 128 sessions, 32 connections, 2
# gateways, reuse_grace 0, 3 s of warm-up, 4 s of load after each failover. Options on the
# command line override them (and these paths).
exec "$BENCH" failover --keygate "$KEYGATE" --pgpair "$ROOT/bench/pgpair.sh" "$@"
