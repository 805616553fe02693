#!/usr/bin/env bash
# `just cluster`: keygate scaled out on one machine, without Docker. Builds release, makes a
# fresh schema in the local Postgres, runs `keygate migrate`, starts two gateways with the
# same master key and root key, puts HAProxy (round robin, health check on /readyz) in
# front of them, and creates an app through it. Ctrl-C stops everything and drops the
# schema.
#
#   bash bench/cluster.sh            start, print the addresses, run until Ctrl-C
#   bash bench/cluster.sh --bench    start, then renew and sign through HAProxy, then stop
#
# Knobs (environment):
#   KEYGATE_CLUSTER_DATABASE_URL  Postgres to make the schema in
#                                 (default postgres://postgres@127.0.0.1:5432/test)
#   CLUSTER_LB_PORT               HAProxy's port (default 8090)
#   CLUSTER_GATEWAY_PORTS         the gateways' ports, one gateway each (default "8091 8092")
#   CLUSTER_LOG                   the gateways' KEYGATE_LOG (default warn: no access log)
#   CLUSTER_NO_BUILD=1            use the binaries in target/release as they are
#   CLUSTER_BENCH_DURATION        per run with --bench (default 10s, after 2s of warm-up)
#   CLUSTER_BENCH_CONNS           connections with --bench (default 32)
#   CLUSTER_BENCH_MODES           with --bench (default "renew sign")
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYGATE="$ROOT/target/release/keygate"
BENCH="$ROOT/target/release/keygate-bench"
PG_BASE="${KEYGATE_CLUSTER_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
LB_PORT="${CLUSTER_LB_PORT:-8090}"
read -r -a GATEWAY_PORTS <<<"${CLUSTER_GATEWAY_PORTS:-8091 8092}"
RUN_BENCH=0

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
        --bench) RUN_BENCH=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'cluster: unknown argument %s (try --help)\n' "$arg" >&2; exit 64 ;;
    esac
done

STEP=0
step() { STEP=$((STEP + 1)); printf '[%d] %s\n' "$STEP" "$*" >&2; }
say() { printf '    %s\n' "$*" >&2; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

WORK=""
SCHEMA=""
HAPROXY_PID=""
GATEWAY_PIDS=()
CLEANED=0

# Stops what this script started (by pid), drops the schema, removes the work directory.
cleanup() {
    local status=$?
    [[ "$CLEANED" == 1 ]] && return
    CLEANED=1
    trap - EXIT INT TERM
    if [[ -n "$HAPROXY_PID$SCHEMA" || ${#GATEWAY_PIDS[@]} -gt 0 ]]; then
        printf '[-] stopping the cluster\n' >&2
    fi
    local pid
    for pid in $HAPROXY_PID "${GATEWAY_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $HAPROXY_PID "${GATEWAY_PIDS[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$SCHEMA" ]]; then
        if psql -q "$PG_BASE" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1; then
            say "dropped schema $SCHEMA"
        else
            say "could not drop schema $SCHEMA: drop it with psql '$PG_BASE' -c 'DROP SCHEMA $SCHEMA CASCADE'"
        fi
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "$status" != 0 && "$status" != 130 && "$status" != 143 ]]; then
            say "logs kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_status URL: the HTTP status of a GET, or 000 when nothing answers.
http_status() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# --- checks and build --------------------------------------------------------------------

step "checking tools"
for tool in curl psql python3; do
    command -v "$tool" >/dev/null || die "$tool is needed (Debian: apt-get install -y curl postgresql-client python3)"
done
[[ ${#GATEWAY_PORTS[@]} -ge 1 ]] || die "CLUSTER_GATEWAY_PORTS names no port"
for port in "$LB_PORT" "${GATEWAY_PORTS[@]}"; do
    [[ "$port" =~ ^[0-9]+$ ]] || die "not a port: $port"
    port_in_use "$port" && die "port $port is in use (set CLUSTER_LB_PORT / CLUSTER_GATEWAY_PORTS)"
done

if [[ "${CLUSTER_NO_BUILD:-0}" != 1 ]]; then
    step "building release binaries (cargo build --release -p keygate-gateway -p keygate-loadgen)"
    (cd "$ROOT" && cargo build --release -p keygate-gateway -p keygate-loadgen) >&2 \
        || die "cargo build failed"
fi
[[ -x "$KEYGATE" ]] || die "$KEYGATE is missing (build it, or unset CLUSTER_NO_BUILD)"
[[ "$RUN_BENCH" == 0 || -x "$BENCH" ]] || die "$BENCH is missing"

if ! command -v haproxy >/dev/null; then
    step "installing haproxy (apt-get install -y haproxy)"
    sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >&2; then
        "${sudo[@]}" apt-get update >&2 || true
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >&2 \
            || die "could not install haproxy; install it and run again"
    fi
    # The package may start a system-wide haproxy on its own default configuration; this
    # script runs its own instance and leaves that one alone.
fi
HAPROXY="$(command -v haproxy)"
say "$("$HAPROXY" -v | head -n 1)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/keygate-cluster.XXXXXX")"

# --- database ----------------------------------------------------------------------------

step "creating a fresh schema in $PG_BASE"
SCHEMA="kgc_$(date +%s)_$$"
psql -q "$PG_BASE" -v ON_ERROR_STOP=1 -c "CREATE SCHEMA $SCHEMA" >/dev/null 2>"$WORK/psql.err" || {
    SCHEMA=""
    cat "$WORK/psql.err" >&2
    die "cannot create a schema in $PG_BASE (is Postgres running? set KEYGATE_CLUSTER_DATABASE_URL)"
}
sep='?'
[[ "$PG_BASE" == *\?* ]] && sep='&'
DATABASE_URL="${PG_BASE}${sep}options=-c%20search_path%3D${SCHEMA}"
say "schema $SCHEMA"

# One master key and one root key for every gateway, made for this cluster only.
MASTER_KEY="$("$KEYGATE" master-key generate)"
ROOT_KEY="kgr_cluster_$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
cat >"$WORK/cluster.env" <<EOF
export KEYGATE_DATABASE_URL='$DATABASE_URL'
export KEYGATE_MASTER_KEY='$MASTER_KEY'
export KEYGATE_ROOT_KEY='$ROOT_KEY'
EOF
chmod 600 "$WORK/cluster.env"
# shellcheck source=/dev/null
source "$WORK/cluster.env"
export KEYGATE_LOG="${CLUSTER_LOG:-warn}"
# Only HAProxy's X-Forwarded-For is believed, so the rate limits see the real client.
export KEYGATE_TRUSTED_PROXIES=127.0.0.1

step "keygate migrate"
"$KEYGATE" migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; die "keygate migrate failed"; }
say "$(tail -n 1 "$WORK/migrate.log")"

# --- gateways ----------------------------------------------------------------------------

# wait_ready URL PID LOG WHAT: until URL/readyz answers 200.
wait_ready() {
    local url="$1" pid="$2" log="$3" what="$4"
    for _ in $(seq 1 300); do
        [[ "$(http_status "$url/readyz")" == 200 ]] && return 0
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            die "$what exited (log above)"
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    die "$what is not ready after 30 s (log above)"
}

GATEWAY_URLS=()
for i in "${!GATEWAY_PORTS[@]}"; do
    n=$((i + 1))
    port="${GATEWAY_PORTS[$i]}"
    step "starting gateway-$n on 127.0.0.1:$port"
    mkdir -p "$WORK/gateway-$n"
    (cd "$WORK/gateway-$n" && exec "$KEYGATE" serve --listen "127.0.0.1:$port") \
        >"$WORK/gateway-$n.log" 2>&1 &
    GATEWAY_PIDS+=("$!")
    GATEWAY_URLS+=("http://127.0.0.1:$port")
done
for i in "${!GATEWAY_PIDS[@]}"; do
    wait_ready "${GATEWAY_URLS[$i]}" "${GATEWAY_PIDS[$i]}" "$WORK/gateway-$((i + 1)).log" "gateway-$((i + 1))"
    say "gateway-$((i + 1)) ready (pid ${GATEWAY_PIDS[$i]}, ${GATEWAY_URLS[$i]})"
done

# --- load balancer -----------------------------------------------------------------------

step "starting haproxy on 127.0.0.1:$LB_PORT"
{
    cat <<EOF
# Generated by bench/cluster.sh for this run only. (No maxconn: HAProxy derives it from
# the file-descriptor limit.)
global

defaults
    mode http
    option forwardfor
    retries 2
    option redispatch
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 5s
    timeout http-keep-alive 5s
    timeout queue 5s

frontend keygate
    bind 127.0.0.1:$LB_PORT
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 1
    # Which gateway answered, to see the round robin (for this local cluster only).
    http-response set-header X-Keygate-Gateway %s
EOF
    for i in "${!GATEWAY_PORTS[@]}"; do
        printf '    server gateway-%d 127.0.0.1:%s check\n' "$((i + 1))" "${GATEWAY_PORTS[$i]}"
    done
} >"$WORK/haproxy.cfg"
"$HAPROXY" -c -q -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 \
    || { cat "$WORK/haproxy.log" >&2; die "haproxy refused $WORK/haproxy.cfg"; }
"$HAPROXY" -db -f "$WORK/haproxy.cfg" >>"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
LB_URL="http://127.0.0.1:$LB_PORT"
wait_ready "$LB_URL" "$HAPROXY_PID" "$WORK/haproxy.log" "haproxy"

# Until HAProxy has seen every gateway healthy, requests go round robin over fewer.
seen=""
for _ in $(seq 1 100); do
    gw=$(curl -s -D - -o /dev/null -m 2 "$LB_URL/readyz" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-keygate-gateway"{print $2}')
    [[ -n "$gw" && " $seen " != *" $gw "* ]] && seen="$seen $gw"
    [[ $(wc -w <<<"$seen") -ge ${#GATEWAY_PORTS[@]} ]] && break
    sleep 0.1
done
[[ $(wc -w <<<"$seen") -ge ${#GATEWAY_PORTS[@]} ]] \
    || die "haproxy routes to only:$seen (log: $WORK/haproxy.log)"
say "haproxy ready (pid $HAPROXY_PID), round robin over:$seen"

# --- an app, through the load balancer ---------------------------------------------------

step "creating an app through the load balancer (POST $LB_URL/root/apps)"
body=$(curl -sS -f -m 10 -X POST "$LB_URL/root/apps" -H "Authorization: $ROOT_KEY" \
    -H 'Content-Type: application/json' -d '{"name":"cluster"}') \
    || die "could not create an app through $LB_URL"
APP_ID=$(json_field app_id <<<"$body")
APP_KEY=$(json_field app_key <<<"$body")
printf "export APP_ID='%s'\nexport APP_KEY='%s'\n" "$APP_ID" "$APP_KEY" >>"$WORK/cluster.env"
say "app $APP_ID"

step "one session, renewed through the load balancer"
tokens=$(curl -sS -f -m 10 -X POST "$LB_URL/app/$APP_ID/sign" -H "Authorization: $APP_KEY" \
    -H 'Content-Type: application/json' -d '{"sub":"cluster-user","ip":"203.0.113.7","useragent":"cluster.sh"}') \
    || die "sign through the load balancer failed"
refresh=$(json_field refresh_token <<<"$tokens")
for round in 1 2 3 4; do
    headers="$WORK/renew.headers"
    tokens=$(curl -sS -f -m 10 -D "$headers" -X POST "$LB_URL/app/$APP_ID/renew" -H "Authorization: $APP_KEY" \
        -H 'Content-Type: application/json' \
        -d "{\"refresh_token\":\"$refresh\",\"ip\":\"203.0.113.7\",\"useragent\":\"cluster.sh\"}") \
        || die "renew $round through the load balancer failed"
    refresh=$(json_field refresh_token <<<"$tokens")
    gw=$(tr -d '\r' <"$headers" | awk -F': ' 'tolower($1)=="x-keygate-gateway"{print $2}')
    say "renew $round: 200 from $gw"
done

cat >&2 <<EOF

keygate cluster on one machine
  load balancer   $LB_URL   (haproxy, round robin, health check GET /readyz)
$(for i in "${!GATEWAY_URLS[@]}"; do printf '  gateway-%d       %s   (pid %s, log %s)\n' "$((i + 1))" "${GATEWAY_URLS[$i]}" "${GATEWAY_PIDS[$i]}" "$WORK/gateway-$((i + 1)).log"; done)
  database        Postgres schema $SCHEMA in ${PG_BASE}
  root key        $ROOT_KEY
  app             $APP_ID (key in $WORK/cluster.env)

  The CLI, on the same database:
    source $WORK/cluster.env
    $KEYGATE app list
  Load through the load balancer:
    source $WORK/cluster.env
    KEYGATE_BENCH_APP_KEY=\$APP_KEY $BENCH run --url $LB_URL --app \$APP_ID --mode renew -c 32 -d 10s
EOF

# --- benchmark or wait -------------------------------------------------------------------

# cpu_ticks PID...: user + system clock ticks used so far by these processes.
cpu_ticks() {
    local total=0 pid stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        read -r -a fields <<<"$stat"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

if [[ "$RUN_BENCH" == 1 ]]; then
    duration="${CLUSTER_BENCH_DURATION:-10s}"
    warmup="${CLUSTER_BENCH_WARMUP:-2s}"
    conns="${CLUSTER_BENCH_CONNS:-32}"
    results="$WORK/results.jsonl"
    : >"$results"
    hz=$(getconf CLK_TCK)
    for mode in ${CLUSTER_BENCH_MODES:-renew sign}; do
        step "keygate-bench $mode through $LB_URL, c=$conns, $duration after $warmup of warm-up"
        gw0=$(cpu_ticks "${GATEWAY_PIDS[@]}")
        lb0=$(cpu_ticks "$HAPROXY_PID")
        t0=$(date +%s%N)
        KEYGATE_BENCH_APP_KEY="$APP_KEY" "$BENCH" run --url "$LB_URL" --app "$APP_ID" \
            --mode "$mode" -c "$conns" -d "$duration" --warmup "$warmup" \
            --label "haproxy+${#GATEWAY_PORTS[@]}gw" --json | tee -a "$results" >&2 \
            || say "keygate-bench reported failures (above)"
        t1=$(date +%s%N)
        gw1=$(cpu_ticks "${GATEWAY_PIDS[@]}")
        lb1=$(cpu_ticks "$HAPROXY_PID")
        say "$(python3 -c '
import sys
gw, lb, hz, ns = (float(x) for x in sys.argv[1:])
secs = ns / 1e9
print(f"CPU over the run (warm-up included): gateways {100 * gw / hz / secs:.0f}%, haproxy {100 * lb / hz / secs:.0f}% (100% = one core)")
' "$((gw1 - gw0))" "$((lb1 - lb0))" "$hz" "$((t1 - t0))")"
    done
    echo
    echo "keygate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${#GATEWAY_PORTS[@]} gateways on Postgres behind haproxy"
    python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
head = ["setup", "mode", "conns", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for r in rows:
    print("| " + " | ".join(str(x) for x in [
        r["label"], r["mode"], r["connections"], int(r["rps"]),
        r["p50_ms"], r["p99_ms"], r["p999_ms"], r["failures"]]) + " |")
' "$results"
    exit 0
fi

printf '\nRunning. Press Ctrl-C to stop the cluster and drop the schema.\n' >&2
# Wake up when any of them exits; Ctrl-C interrupts the wait and runs the cleanup.
while true; do
    for pid in $HAPROXY_PID "${GATEWAY_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited unexpectedly (logs in $WORK)"
    done
    sleep 1 &
    wait $! || true
done
