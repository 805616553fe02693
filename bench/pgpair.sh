# A replicated PostgreSQL on this machine, from the installed server binaries: a primary
# and one synchronous streaming standby, each with a port and a data directory of its own
# under a temp dir, and the moves of a failover (stop the primary at once, promote the
# standby, make the old primary a standby of the new one from a fresh base backup).
#
#   source bench/pgpair.sh; pair_start DIR; ...; pair_stop
#   bash bench/pgpair.sh selftest      # two failovers, each checked, then removed
#
# Or from another program, one command per move; the pair's state is kept in DIR/pair.env:
#   bash bench/pgpair.sh start DIR     # prints the multi-host URL of both nodes
#   bash bench/pgpair.sh failover DIR  # prints "primary=b writable_after=0.26"
#   bash bench/pgpair.sh crash DIR     # the first half: the primary stopped, no node writable
#   bash bench/pgpair.sh promote DIR   # the second half: the standby promoted, the old one rejoins
#   bash bench/pgpair.sh stop DIR      # stops both servers and removes DIR
#
# The servers run as the `postgres` user when this runs as root (initdb refuses root).
# PG_BIN picks the binaries (default: the newest /usr/lib/postgresql/*/bin).
# PAIR_STOP_MODE is how failover and crash stop the primary: `immediate` (the default, as a
# crash would) or `fast` (as a planned switchover does: sessions are ended, and a commit that
# waits for the standby is cut short after it committed locally).
# shellcheck shell=bash

pair_say() { printf 'pgpair: %s\n' "$*" >&2; }
pair_die() { printf 'pgpair: %s\n' "$*" >&2; return 1; }

PG_BIN="${PG_BIN:-$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)}"

# as_pg CMD...: runs CMD as the postgres user when we are root, else as ourselves.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# pair_free_port: a TCP port nobody listens on.
pair_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pair_start DIR: initdb a primary in DIR/a, a standby in DIR/b (pg_basebackup -R),
# synchronous replication, both started. Sets PAIR_DIR, PAIR_PORT_A, PAIR_PORT_B and
# PAIR_PRIMARY (a or b).
pair_start() {
    PAIR_DIR="$1"
    [[ -x "$PG_BIN/initdb" ]] || pair_die "no PostgreSQL server binaries (PG_BIN=$PG_BIN)" || return 1
    mkdir -p "$PAIR_DIR"
    if [[ $(id -u) -eq 0 ]]; then
        # The postgres user must reach it: through its parent (a mktemp dir is 0700), into it.
        chmod o+x "$(dirname "$PAIR_DIR")"
        chown postgres: "$PAIR_DIR"
    fi
    PAIR_PORT_A=$(pair_free_port)
    PAIR_PORT_B=$(pair_free_port)
    as_pg "$PG_BIN/initdb" -D "$PAIR_DIR/a" -U postgres --auth=trust -E UTF8 >"$PAIR_DIR/initdb.log" 2>&1 \
        || pair_die "initdb failed: $(tail -n 3 "$PAIR_DIR/initdb.log")" || return 1
    as_pg tee -a "$PAIR_DIR/a/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PAIR_DIR'
wal_level = replica
max_wal_senders = 8
hot_standby = on
synchronous_commit = on
synchronous_standby_names = '*'
fsync = on
EOF
    as_pg tee -a "$PAIR_DIR/a/pg_hba.conf" >/dev/null <<EOF
host replication postgres 127.0.0.1/32 trust
EOF
    pair_node_start a "$PAIR_PORT_A" || return 1
    as_pg "$PG_BIN/pg_basebackup" --checkpoint=fast -h 127.0.0.1 -p "$PAIR_PORT_A" -U postgres -D "$PAIR_DIR/b" -R -X stream \
        >"$PAIR_DIR/basebackup.log" 2>&1 || pair_die "pg_basebackup failed: $(tail -n 3 "$PAIR_DIR/basebackup.log")" || return 1
    pair_node_start b "$PAIR_PORT_B" || return 1
    PAIR_PRIMARY=a
    pair_wait_sync || return 1
}

# pair_node_start NODE PORT: starts the server in $PAIR_DIR/NODE on PORT.
pair_node_start() {
    as_pg "$PG_BIN/pg_ctl" -D "$PAIR_DIR/$1" -o "-p $2" -l "$PAIR_DIR/$1.log" -w -t 60 start >/dev/null \
        || pair_die "node $1 did not start: $(tail -n 5 "$PAIR_DIR/$1.log")"
}

# pair_port NODE: the port of a or b.
pair_port() {
    if [[ "$1" == a ]]; then echo "$PAIR_PORT_A"; else echo "$PAIR_PORT_B"; fi
}

# pair_other NODE: b for a, a for b.
pair_other() {
    if [[ "$1" == a ]]; then echo b; else echo a; fi
}

# pair_psql NODE SQL: one statement on NODE, its rows unaligned.
pair_psql() {
    psql -qAtX -h 127.0.0.1 -p "$(pair_port "$1")" -U postgres -d postgres -c "$2"
}

# pair_wait_sync: waits (up to 30 s) until the primary streams to the standby synchronously.
pair_wait_sync() {
    local state=""
    for _ in $(seq 1 300); do
        state=$(pair_psql "$PAIR_PRIMARY" "SELECT sync_state FROM pg_stat_replication" 2>/dev/null || true)
        [[ "$state" == sync ]] && return 0
        sleep 0.1
    done
    pair_die "the standby of $PAIR_PRIMARY is not synchronous (state: ${state:-none})"
}

# pair_url: a multi-host URL of both nodes, primary first, as libpq reads it.
pair_url() {
    echo "postgres://postgres@127.0.0.1:$PAIR_PORT_A,127.0.0.1:$PAIR_PORT_B/postgres?target_session_attrs=read-write"
}

# pair_failover: stops the primary at once (as a crash would), promotes the standby, and
# makes the old primary a standby of the new one (a base backup, then a start), synchronous
# again. Sets PAIR_PRIMARY, and PAIR_WRITABLE_AFTER: the seconds from the stop until the
# new primary was out of recovery. (Call it directly, not in $(…): it sets variables.)
pair_failover() {
    local started
    started=$(date +%s.%N)
    pair_crash || return 1
    pair_promote "$started"
}

# pair_crash: stops the primary (PAIR_STOP_MODE: at once, as a crash would, or fast); no
# node takes writes until pair_promote.
pair_crash() {
    local mode="${PAIR_STOP_MODE:-immediate}"
    [[ "$mode" == immediate || "$mode" == fast ]] \
        || pair_die "PAIR_STOP_MODE must be immediate or fast, not $mode" || return 1
    as_pg "$PG_BIN/pg_ctl" -D "$PAIR_DIR/$PAIR_PRIMARY" -m "$mode" -w stop >/dev/null \
        || pair_die "could not stop $PAIR_PRIMARY"
}

# pair_promote [STARTED]: promotes the standby of the stopped primary and makes the old
# primary its standby (the rest of pair_failover). PAIR_WRITABLE_AFTER counts from STARTED
# (a date +%s.%N; default now).
pair_promote() {
    local old="$PAIR_PRIMARY" new started="${1:-$(date +%s.%N)}"
    new=$(pair_other "$old")
    as_pg "$PG_BIN/pg_ctl" -D "$PAIR_DIR/$new" -w -t 60 promote >/dev/null \
        || pair_die "could not promote $new" || return 1
    for _ in $(seq 1 300); do
        [[ "$(pair_psql "$new" "SELECT pg_is_in_recovery()" 2>/dev/null || true)" == f ]] && break
        sleep 0.1
    done
    PAIR_WRITABLE_AFTER=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$started" "$(date +%s.%N)")
    PAIR_PRIMARY="$new"
    # The old primary follows the new one: a fresh base backup of it (the databases of a
    # test are small; pg_rewind would need the WAL since they parted kept on both).
    rm -rf "${PAIR_DIR:?}/${old:?}"
    as_pg "$PG_BIN/pg_basebackup" --checkpoint=fast -h 127.0.0.1 -p "$(pair_port "$new")" -U postgres -D "$PAIR_DIR/$old" \
        -R -X stream >"$PAIR_DIR/basebackup.log" 2>&1 \
        || pair_die "pg_basebackup of $old failed: $(tail -n 3 "$PAIR_DIR/basebackup.log")" || return 1
    pair_node_start "$old" "$(pair_port "$old")" || return 1
    pair_wait_sync || return 1
}

# pair_stop: stops both servers and removes their data.
pair_stop() {
    [[ -n "${PAIR_DIR:-}" && -d "$PAIR_DIR" ]] || return 0
    local node
    for node in a b; do
        [[ -f "$PAIR_DIR/$node/postmaster.pid" ]] \
            && as_pg "$PG_BIN/pg_ctl" -D "$PAIR_DIR/$node" -m immediate -w stop >/dev/null 2>&1
    done
    rm -rf "$PAIR_DIR"
    PAIR_DIR=""
}

# selftest: a write acknowledged by the primary is on the standby; after a failover the
# new primary has it and takes writes; after a second one, so does the first node again.
pair_selftest() {
    set -euo pipefail
    PAIR_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/keygate-pgpair.XXXXXX")
    trap '[[ -n "${PAIR_KEEP:-}" ]] || { pair_stop; rmdir "$PAIR_ROOT"; }' EXIT
    pair_start "$PAIR_ROOT/pair"
    pair_say "primary a on $PAIR_PORT_A, synchronous standby b on $PAIR_PORT_B ($("$PG_BIN/postgres" --version))"
    pair_psql a "CREATE TABLE acked (n int PRIMARY KEY); INSERT INTO acked VALUES (1)"
    [[ "$(pair_psql b "SELECT count(*) FROM acked")" == 1 ]] || pair_die "the standby lacks an acknowledged row"
    local round
    for round in 1 2; do
        pair_failover
        pair_psql "$PAIR_PRIMARY" "INSERT INTO acked VALUES ($((round + 1)))"
        local rows
        rows=$(pair_psql "$(pair_other "$PAIR_PRIMARY")" "SELECT count(*) FROM acked")
        [[ "$rows" == $((round + 1)) ]] || pair_die "after failover $round the standby has $rows rows"
        pair_say "failover $round: $PAIR_PRIMARY is primary, out of recovery ${PAIR_WRITABLE_AFTER} s after the stop; the old primary follows it synchronously"
    done
    pair_say "selftest passed"
}

# pair_save / pair_load: the pair's state in $PAIR_DIR/pair.env, for the one-move commands.
pair_save() {
    printf 'PAIR_PORT_A=%s\nPAIR_PORT_B=%s\nPAIR_PRIMARY=%s\n' "$PAIR_PORT_A" "$PAIR_PORT_B" "$PAIR_PRIMARY" \
        >"$PAIR_DIR/pair.env"
}
pair_load() {
    PAIR_DIR="$1"
    [[ -f "$PAIR_DIR/pair.env" ]] || pair_die "no pair in $PAIR_DIR (start one with: bash bench/pgpair.sh start $PAIR_DIR)" || return 1
    # shellcheck disable=SC1091
    source "$PAIR_DIR/pair.env"
}

pair_usage() {
    echo "usage: bash bench/pgpair.sh selftest | start DIR | failover DIR | crash DIR | promote DIR | url DIR | stop DIR (or source it)" >&2
    exit 2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
        selftest) pair_selftest ;;
        start)
            [[ -n "${2:-}" ]] || pair_usage
            [[ ! -e "$2/pair.env" ]] || pair_die "a pair already runs in $2"
            pair_start "$2" || { pair_stop; exit 1; }
            pair_save
            pair_url
            ;;
        failover | promote)
            [[ -n "${2:-}" ]] || pair_usage
            pair_load "$2"
            if [[ "$1" == failover ]]; then pair_failover; else pair_promote; fi
            pair_save
            echo "primary=$PAIR_PRIMARY writable_after=$PAIR_WRITABLE_AFTER"
            ;;
        crash)
            [[ -n "${2:-}" ]] || pair_usage
            pair_load "$2"
            pair_crash
            ;;
        url)
            [[ -n "${2:-}" ]] || pair_usage
            pair_load "$2"
            pair_url
            ;;
        stop)
            [[ -n "${2:-}" ]] || pair_usage
            [[ -d "$2" ]] || exit 0
            PAIR_DIR="$2"
            pair_stop
            ;;
        *) pair_usage ;;
    esac
fi
