#!/usr/bin/env bash
# `just failover-patroni`: the failover fault run on a Patroni cluster. Installs Debian's
# patroni, etcd-server and haproxy when they are missing, builds release, then runs
# `keygate-bench failover` on bench/patroni.sh (one etcd, two Patroni nodes in
# synchronous_mode, HAProxy on Patroni's /primary check) with two gateways under renew
# load at reuse_grace 0: ten failovers (the leader's Patroni and PostgreSQL killed with
# SIGKILL) and ten switchovers (`patronictl switchover`), in turn, the leader alternating;
# then the journal is reconciled (lost, revived, doubled) and the window of failed renews
# is printed per move and per kind (median and max). Once through HAProxy, once through a
# multi-host URL of both nodes.
#
#   bash bench/failover-patroni.sh                        both routes, the defaults below
#   PATRONI_ROUTES=haproxy bash bench/failover-patroni.sh  one route (haproxy or multi-host)
#   bash bench/failover-patroni.sh --failovers 2 --switchovers 2   any option of keygate-bench failover
#
# Exits 1 if any run found a violation (its work directory is kept and printed).
# Knobs (environment):
#   PATRONI_ROUTES="haproxy multi-host"  the routes, in order
#   PATRONI_TTL=10                       the leader key's TTL (bench/patroni.sh)
#   FAILOVER_NO_BUILD=1                  use the binaries in target/release as they are
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
for tool in patroni etcd haproxy curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
    printf 'failover-patroni: installing patroni etcd-server haproxy curl (missing: %s)\n' "${missing[*]}" >&2
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q patroni etcd-server haproxy curl >&2
fi

# A write in doubt (its commit's answer lost when the leader died) can only be resolved
# once Patroni has elected a new leader, about its ttl later: the gateways' in-doubt timeout
# is twice the ttl, and a request counts as lost only after the busy timeout (5 s) plus that.
# bench/failover.sh builds release (unless FAILOVER_NO_BUILD=1) and runs the harness; the
# options here override its --pgpair, and those on the command line override these.
ttl="${PATRONI_TTL:-10}"
status=0
for route in ${PATRONI_ROUTES:-haproxy multi-host}; do
    printf 'failover-patroni: route %s\n' "$route"
    PATRONI_ROUTE="$route" bash "$ROOT/bench/failover.sh" --pgpair "$ROOT/bench/patroni.sh" \
        --failovers 10 --switchovers 10 --in-doubt-timeout "$((2 * ttl))s" \
        --request-timeout "$((2 * ttl + 10))s" "$@" || status=1
done
exit "$status"
