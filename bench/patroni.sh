# A Patroni cluster on this machine, from Debian's packages (patroni, etcd-server, haproxy)
# and the installed PostgreSQL server binaries: one etcd, two Patroni-managed PostgreSQL
# nodes (a and b) in synchronous_mode, and HAProxy routing to the leader by Patroni's
# `/primary` health check. Each part has ports of its own and keeps its data under DIR.
#
# One command per move, for other programs (the same interface as bench/pgpair.sh); the
# cluster's state is kept in DIR/cluster.env:
#   bash bench/patroni.sh start DIR       # prints the URL the gateways use (see PATRONI_ROUTE)
#   bash bench/patroni.sh failover DIR    # the leader's Patroni and PostgreSQL killed (SIGKILL),
#                                         # Patroni promotes the replica, the old node rejoins;
#                                         # prints "primary=b writable_after=9.81 rejoined_after=14.2"
#   bash bench/patroni.sh switchover DIR  # `patronictl switchover` to the replica (planned);
#                                         # prints the same line
#   bash bench/patroni.sh url DIR         # the URL again
#   bash bench/patroni.sh list DIR        # `patronictl list`
#   bash bench/patroni.sh stop DIR        # stops everything and removes DIR
#   bash bench/patroni.sh selftest        # a failover and a switchover, each checked
#
# writable_after: seconds from the kill (or the switchover command) until the new leader
# took a write through the route; rejoined_after: until the old leader streamed to it
# synchronously again (the next move waits for that).
#
# Environment:
#   PATRONI_ROUTE  haproxy (default): postgres://…@127.0.0.1:HAPROXY_PORT/postgres, or
#                  multi-host: postgres://…@127.0.0.1:PA,127.0.0.1:PB/postgres; both with
#                  target_session_attrs=read-write
#   PATRONI_TTL    the leader key's TTL in seconds (default 10; loop_wait 1, retry_timeout 4)
#   PG_BIN         the PostgreSQL server binaries (default: the newest /usr/lib/postgresql/*/bin)
#
# Runs as root (the servers then run as the `postgres` user: initdb refuses root) or as a
# user that may run them. The configuration files it writes are those of deploy/patroni/,
# with local ports and paths.
# shellcheck shell=bash

pat_say() { printf 'patroni: %s\n' "$*" >&2; }
pat_die() { printf 'patroni: %s\n' "$*" >&2; return 1; }

# PG_BIN, as_pg (runs a command as the postgres user when we are root) and pair_free_port.
# shellcheck source=bench/pgpair.sh
source "$(dirname "${BASH_SOURCE[0]}")/pgpair.sh"

pat_now() { date +%s.%N; }
pat_since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(pat_now)"; }

pat_other() { if [[ "$1" == a ]]; then echo b; else echo a; fi; }
pat_pg_port() { if [[ "$1" == a ]]; then echo "$PAT_PG_A"; else echo "$PAT_PG_B"; fi; }
pat_rest_port() { if [[ "$1" == a ]]; then echo "$PAT_REST_A"; else echo "$PAT_REST_B"; fi; }

# pat_check NODE PATH: the HTTP status of Patroni's health check PATH on NODE (000: no answer).
pat_check() {
    curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$(pat_rest_port "$1")$2" || true
}

# pat_wait SECONDS WHAT CMD...: runs CMD every 0.1 s until it succeeds, for at most SECONDS.
pat_wait() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$(($(date +%s) + seconds))
    until "$@"; do
        (($(date +%s) < deadline)) || pat_die "timed out after ${seconds} s waiting for $what" || return 1
        sleep 0.1
    done
}

pat_is() { [[ "$(pat_check "$1" "$2")" == 200 ]]; }

# pat_writable NODE: NODE takes a write (the probe table on the leader).
pat_writable() {
    psql -qAtX -h 127.0.0.1 -p "$(pat_pg_port "$1")" -U postgres -d postgres \
        -c "INSERT INTO patroni_probe DEFAULT VALUES" >/dev/null 2>&1
}

# pat_route_writable: a write through the route the gateways use succeeds.
pat_route_writable() {
    psql -qAtX "$(pat_url)" -c "INSERT INTO patroni_probe DEFAULT VALUES" >/dev/null 2>&1
}

# pat_leader: the node whose /primary check answers 200 (none: empty).
pat_leader() {
    local node
    for node in a b; do
        pat_is "$node" /primary && { echo "$node"; return 0; }
    done
    echo ""
}

pat_node_config() {
    local node="$1" pg rest
    pg=$(pat_pg_port "$node")
    rest=$(pat_rest_port "$node")
    as_pg tee "$PAT_DIR/$node.yml" >/dev/null <<EOF
# Written by bench/patroni.sh; deploy/patroni/patroni.yml explains each line.
scope: keygate
name: $node
log:
  level: INFO
  dir: $PAT_DIR/log-$node
restapi:
  listen: 127.0.0.1:$rest
  connect_address: 127.0.0.1:$rest
etcd3:
  hosts: 127.0.0.1:$PAT_ETCD
bootstrap:
  dcs:
    ttl: ${PATRONI_TTL:-10}
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 200
  initdb:
    - encoding: UTF8
    - auth: trust
postgresql:
  listen: 127.0.0.1:$pg
  connect_address: 127.0.0.1:$pg
  data_dir: $PAT_DIR/$node
  bin_dir: $PG_BIN
  pgpass: $PAT_DIR/pgpass-$node
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: $PAT_DIR
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication postgres 127.0.0.1/32 trust
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
EOF
    as_pg mkdir -p "$PAT_DIR/log-$node"
}

# pat_node_start NODE: starts NODE's Patroni (which starts its PostgreSQL).
pat_node_start() {
    as_pg nohup patroni "$PAT_DIR/$1.yml" >>"$PAT_DIR/patroni-$1.out" 2>&1 </dev/null &
}

# pat_patroni_pids NODE: the pids of NODE's Patroni and of the runuser and nohup that
# started it (empty if none).
pat_patroni_pids() {
    pgrep -f "patroni $PAT_DIR/$1.yml" || true
}

# pat_kill NODE: NODE's Patroni, its PostgreSQL and all of its processes killed with SIGKILL.
pat_kill() {
    local node="$1" patroni postmaster=""
    patroni=$(pat_patroni_pids "$node")
    [[ -f "$PAT_DIR/$node/postmaster.pid" ]] && postmaster=$(head -n 1 "$PAT_DIR/$node/postmaster.pid")
    local victims=($patroni)
    if [[ -n "$postmaster" ]]; then
        victims+=("$postmaster")
        # Its children, listed before they are orphaned.
        victims+=($(pgrep -P "$postmaster" || true))
    fi
    ((${#victims[@]} > 0)) || pat_die "nothing of node $node runs" || return 1
    kill -KILL "${victims[@]}" 2>/dev/null || true
}

pat_url() {
    local query="target_session_attrs=read-write"
    case "${PATRONI_ROUTE:-haproxy}" in
        haproxy) echo "postgres://postgres@127.0.0.1:$PAT_HAPROXY/postgres?$query" ;;
        multi-host) echo "postgres://postgres@127.0.0.1:$PAT_PG_A,127.0.0.1:$PAT_PG_B/postgres?$query" ;;
        *) pat_die "PATRONI_ROUTE must be haproxy or multi-host, not $PATRONI_ROUTE" ;;
    esac
}

pat_haproxy_config() {
    cat >"$PAT_DIR/haproxy.cfg" <<EOF
# Written by bench/patroni.sh; deploy/patroni/haproxy.cfg explains each line.
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 1s
listen primary
    bind 127.0.0.1:$PAT_HAPROXY
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 500ms fastinter 250ms fall 2 rise 1 on-marked-down shutdown-sessions
    server a 127.0.0.1:$PAT_PG_A maxconn 200 check port $PAT_REST_A
    server b 127.0.0.1:$PAT_PG_B maxconn 200 check port $PAT_REST_B
EOF
}

# pat_start DIR: etcd, Patroni a (the first leader), Patroni b (its synchronous replica),
# HAProxy. Sets PAT_* and PAT_LEADER.
pat_start() {
    PAT_DIR="$1"
    local missing=()
    for tool in patroni patronictl etcd haproxy curl; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) \
        || pat_die "missing: ${missing[*]} (apt-get install patroni etcd-server haproxy curl)" || return 1
    [[ -x "$PG_BIN/initdb" ]] || pat_die "no PostgreSQL server binaries (PG_BIN=$PG_BIN)" || return 1
    mkdir -p "$PAT_DIR"
    if [[ $(id -u) -eq 0 ]]; then
        chmod o+x "$(dirname "$PAT_DIR")"
        chown postgres: "$PAT_DIR"
    fi
    PAT_ETCD=$(pair_free_port)
    PAT_ETCD_PEER=$(pair_free_port)
    PAT_PG_A=$(pair_free_port)
    PAT_PG_B=$(pair_free_port)
    PAT_REST_A=$(pair_free_port)
    PAT_REST_B=$(pair_free_port)
    PAT_HAPROXY=$(pair_free_port)
    pat_save

    as_pg nohup etcd --name etcd0 --data-dir "$PAT_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$PAT_ETCD" --advertise-client-urls "http://127.0.0.1:$PAT_ETCD" \
        --listen-peer-urls "http://127.0.0.1:$PAT_ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PAT_ETCD_PEER" \
        --initial-cluster "etcd0=http://127.0.0.1:$PAT_ETCD_PEER" --initial-cluster-state new \
        >"$PAT_DIR/etcd.log" 2>&1 </dev/null &
    pat_wait 30 "etcd" curl -sf -m 1 "http://127.0.0.1:$PAT_ETCD/health" -o /dev/null || return 1

    pat_node_config a
    pat_node_config b
    pat_node_start a
    pat_wait 60 "node a to lead" pat_is a /primary || return 1
    psql -qAtX -h 127.0.0.1 -p "$PAT_PG_A" -U postgres -d postgres \
        -c "CREATE TABLE IF NOT EXISTS patroni_probe (n bigserial PRIMARY KEY, at timestamptz DEFAULT now())" >/dev/null \
        || pat_die "could not create the probe table" || return 1
    pat_node_start b
    pat_wait 120 "node b to stream synchronously" pat_is b /sync || return 1
    PAT_LEADER=a

    pat_haproxy_config
    haproxy -f "$PAT_DIR/haproxy.cfg" -p "$PAT_DIR/haproxy.pid" -D >"$PAT_DIR/haproxy.log" 2>&1 \
        || pat_die "haproxy did not start: $(tail -n 3 "$PAT_DIR/haproxy.log")" || return 1
    local route="${PATRONI_ROUTE:-haproxy}"
    PATRONI_ROUTE=haproxy pat_wait 30 "a write through HAProxy" pat_route_writable || return 1
    PATRONI_ROUTE="$route"
    pat_save
    pat_say "etcd on $PAT_ETCD; leader a on $PAT_PG_A (REST $PAT_REST_A), synchronous replica b on $PAT_PG_B (REST $PAT_REST_B); HAProxy on $PAT_HAPROXY ($(patroni --version), $("$PG_BIN/postgres" --version))"
}

# pat_await_new_leader OLD STARTED: waits until the other node leads and a write through
# the route succeeds (PAT_WRITABLE_AFTER), then until OLD streams to it synchronously
# (PAT_REJOINED_AFTER); both in seconds since STARTED.
pat_await_new_leader() {
    local old="$1" started="$2" new
    new=$(pat_other "$old")
    pat_wait 90 "node $new to lead" pat_is "$new" /primary || return 1
    pat_wait 30 "a write through the route" pat_route_writable || return 1
    PAT_WRITABLE_AFTER=$(pat_since "$started")
    PAT_LEADER="$new"
    pat_save
    [[ -n "$(pat_patroni_pids "$old")" ]] || pat_node_start "$old"
    pat_wait 180 "node $old to stream synchronously to $new" pat_is "$old" /sync || return 1
    PAT_REJOINED_AFTER=$(pat_since "$started")
}

# pat_failover: the leader killed (Patroni and PostgreSQL, SIGKILL); Patroni promotes the
# synchronous replica once the leader key expires; the old node's Patroni is started again
# and rejoins as a replica (pg_rewind, or a new base backup).
pat_failover() {
    local old="$PAT_LEADER" started
    pat_is "$old" /primary || pat_die "node $old does not lead ($(pat_check "$old" /primary))" || return 1
    started=$(pat_now)
    pat_kill "$old" || return 1
    pat_say "failover: killed node $old (Patroni and PostgreSQL)"
    pat_await_new_leader "$old" "$started"
}

# pat_switchover: `patronictl switchover` from the leader to the synchronous replica.
pat_switchover() {
    local old="$PAT_LEADER" new started
    new=$(pat_other "$old")
    started=$(pat_now)
    patronictl -c "$PAT_DIR/$old.yml" switchover --leader "$old" --candidate "$new" --force keygate \
        >>"$PAT_DIR/patronictl.log" 2>&1 \
        || pat_die "patronictl switchover failed: $(tail -n 3 "$PAT_DIR/patronictl.log")" || return 1
    pat_say "switchover: $old to $new"
    pat_await_new_leader "$old" "$started"
}

# pat_stop: stops HAProxy, both Patronis (and their PostgreSQL), etcd; removes DIR.
# Never fails: it is what runs when anything else did.
pat_stop() {
    [[ -n "${PAT_DIR:-}" && -d "$PAT_DIR" ]] || return 0
    if [[ -f "$PAT_DIR/haproxy.pid" ]]; then
        kill "$(cat "$PAT_DIR/haproxy.pid")" 2>/dev/null || true
    fi
    pkill -TERM -f "patroni $PAT_DIR/" 2>/dev/null || true
    for _ in $(seq 1 100); do
        pgrep -f "patroni $PAT_DIR/" >/dev/null || break
        sleep 0.1
    done
    pkill -KILL -f "patroni $PAT_DIR/" 2>/dev/null || true
    # Whatever is left (a PostgreSQL whose Patroni was killed): its data dir is under DIR.
    pkill -KILL -f -- "-D $PAT_DIR/" 2>/dev/null || true
    pkill -TERM -f "etcd --name etcd0 --data-dir $PAT_DIR/" 2>/dev/null || true
    sleep 0.3
    pkill -KILL -f "etcd --name etcd0 --data-dir $PAT_DIR/" 2>/dev/null || true
    rm -rf "$PAT_DIR"
    PAT_DIR=""
    return 0
}

pat_save() {
    cat >"$PAT_DIR/cluster.env" <<EOF
PAT_ETCD=$PAT_ETCD
PAT_ETCD_PEER=$PAT_ETCD_PEER
PAT_PG_A=$PAT_PG_A
PAT_PG_B=$PAT_PG_B
PAT_REST_A=$PAT_REST_A
PAT_REST_B=$PAT_REST_B
PAT_HAPROXY=$PAT_HAPROXY
PAT_LEADER=${PAT_LEADER:-a}
EOF
}

pat_load() {
    PAT_DIR="$1"
    [[ -f "$PAT_DIR/cluster.env" ]] \
        || pat_die "no cluster in $PAT_DIR (start one with: bash bench/patroni.sh start $PAT_DIR)" || return 1
    # shellcheck disable=SC1091
    source "$PAT_DIR/cluster.env"
}

# selftest: a row written through HAProxy before a failover and a switchover is on the
# leader after each, and the leader moved each time.
pat_selftest() {
    set -euo pipefail
    PAT_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/keygate-patroni.XXXXXX")
    trap '[[ -n "${PAT_KEEP:-}" ]] || { pat_stop; rmdir "$PAT_ROOT"; }' EXIT
    pat_start "$PAT_ROOT/cluster"
    pat_route_writable
    local move
    for move in failover switchover; do
        "pat_$move"
        local rows
        rows=$(psql -qAtX "$(pat_url)" -c "SELECT count(*) FROM patroni_probe")
        ((rows >= 2)) || pat_die "after the $move the leader has $rows probe rows"
        pat_say "$move: $PAT_LEADER leads; writable after $PAT_WRITABLE_AFTER s, the old leader in sync after $PAT_REJOINED_AFTER s"
    done
    pat_say "selftest passed"
}

pat_usage() {
    echo "usage: bash bench/patroni.sh selftest | start DIR | failover DIR | switchover DIR | url DIR | list DIR | stop DIR" >&2
    exit 2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
        selftest) pat_selftest ;;
        start)
            [[ -n "${2:-}" ]] || pat_usage
            [[ ! -e "$2/cluster.env" ]] || pat_die "a cluster already runs in $2"
            pat_start "$2" || { pat_stop; exit 1; }
            pat_url
            ;;
        failover | switchover)
            [[ -n "${2:-}" ]] || pat_usage
            pat_load "$2"
            "pat_$1"
            echo "primary=$PAT_LEADER writable_after=$PAT_WRITABLE_AFTER rejoined_after=$PAT_REJOINED_AFTER"
            ;;
        url)
            [[ -n "${2:-}" ]] || pat_usage
            pat_load "$2"
            pat_url
            ;;
        list)
            [[ -n "${2:-}" ]] || pat_usage
            pat_load "$2"
            patronictl -c "$PAT_DIR/$PAT_LEADER.yml" list
            ;;
        stop)
            [[ -n "${2:-}" ]] || pat_usage
            [[ -d "$2" ]] || exit 0
            PAT_DIR="$2"
            pat_stop
            ;;
        *) pat_usage ;;
    esac
fi
