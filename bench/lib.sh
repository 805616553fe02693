# Shared helpers for the benchmark scripts: start a release gateway, create an app.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# BENCH_KEYGATE: another keygate binary to measure (to compare two builds on one machine).
KEYGATE="${BENCH_KEYGATE:-$ROOT/target/release/keygate}"
BENCH="$ROOT/target/release/keygate-bench"
BENCH_ROOT_KEY="kgr_bench_root_key_not_for_production_0000"
PG_BASE="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

say() { printf '%s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

build_release() {
    if [[ -n "${BENCH_KEYGATE:-}" ]]; then
        say "== measuring $BENCH_KEYGATE (building keygate-bench only)"
        (cd "$ROOT" && cargo build --release -p keygate-loadgen) >&2
        return
    fi
    say "== building release binaries"
    (cd "$ROOT" && cargo build --release -p keygate-gateway -p keygate-loadgen) >&2
}

# A fresh Postgres schema; prints a URL that uses it.
fresh_pg_url() {
    command -v psql >/dev/null || die "psql is needed for the Postgres runs"
    local schema="kgb_$(date +%s)_$$_$RANDOM"
    psql -q "$PG_BASE" -c "CREATE SCHEMA $schema" >/dev/null || die "cannot reach Postgres at $PG_BASE"
    local sep='?'
    [[ "$PG_BASE" == *\?* ]] && sep='&'
    printf '%s%soptions=-c%%20search_path%%3D%s\n' "$PG_BASE" "$sep" "$schema"
}

# drop_pg_schema URL: drops the one schema a URL from fresh_pg_url uses.
drop_pg_schema() {
    command -v psql >/dev/null || return 0
    local schema="${1##*search_path%3D}"
    [[ "$schema" =~ ^kgb_[0-9a-z_]+$ ]] || return 0
    psql -q "$PG_BASE" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
}

drop_pg_schemas() {
    command -v psql >/dev/null || return 0
    psql -qAt "$PG_BASE" -c "SELECT 'DROP SCHEMA ' || nspname || ' CASCADE;' FROM pg_namespace WHERE nspname LIKE 'kgb\_%'" \
        | psql -q "$PG_BASE" >/dev/null 2>&1 || true
}

# start_gateway DIR [DATABASE_URL]: starts keygate in DIR; sets GATEWAY_PID and GATEWAY_URL.
start_gateway() {
    local dir="$1" url="${2:-}"
    mkdir -p "$dir"
    local env=(KEYGATE_ROOT_KEY="$BENCH_ROOT_KEY" KEYGATE_LOG=warn)
    [[ -n "$url" ]] && env+=(KEYGATE_DATABASE_URL="$url")
    (cd "$dir" && exec env "${env[@]}" "$KEYGATE" serve --listen 127.0.0.1:0 >"$dir/stdout" 2>"$dir/stderr") &
    GATEWAY_PID=$!
    local line=""
    for _ in $(seq 1 300); do
        line=$(grep -m1 '^keygate listening on ' "$dir/stdout" 2>/dev/null || true)
        [[ -n "$line" ]] && break
        kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$dir/stderr" >&2; die "keygate exited"; }
        sleep 0.1
    done
    [[ -n "$line" ]] || die "keygate did not start"
    GATEWAY_URL=$(awk '{print $4}' <<<"$line")
}

stop_gateway() {
    [[ -n "${GATEWAY_PID:-}" ]] && kill "$GATEWAY_PID" 2>/dev/null && wait "$GATEWAY_PID" 2>/dev/null || true
    GATEWAY_PID=""
}

# create_app NAME: sets APP_ID and APP_KEY.
create_app() {
    local body
    body=$(curl -sf -X POST "$GATEWAY_URL/root/apps" -H "Authorization: $BENCH_ROOT_KEY" \
        -H 'Content-Type: application/json' -d "{\"name\":\"$1\",\"dpop\":\"allowed\"}") \
        || die "cannot create an app"
    APP_ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["app_id"])' <<<"$body")
    APP_KEY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["app_key"])' <<<"$body")
}

# load MODE CONNECTIONS LABEL [extra keygate-bench args]: one run; prints its JSON line.
load() {
    local mode="$1" conns="$2" label="$3"
    shift 3
    KEYGATE_BENCH_APP_KEY="$APP_KEY" "$BENCH" run --url "$GATEWAY_URL" --app "$APP_ID" \
        --mode "$mode" -c "$conns" -d "${BENCH_DURATION:-10s}" --warmup "${BENCH_WARMUP:-2s}" \
        --pid "$GATEWAY_PID" --label "$label" --json "$@" || true
}

# Prints JSON lines (stdin) as one table.
table() {
    python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip().startswith("{")]
head = ["backend", "mode", "conns", "rate", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "gateway CPU %", "gateway CPU µs/req", "of which, by thread", "database CPU µs/req", "peak RSS MiB"]
def threads(r):
    by = r.get("server_cpu_us_per_req_by_thread") or {}
    busy = sorted(((us, name) for name, us in by.items() if us >= 0.5), reverse=True)
    return ", ".join(f"{name.strip()} {us}" for us, name in busy) or "-"
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for r in rows:
    print("| " + " | ".join(str(x) for x in [
        r["label"], r["mode"], r["connections"], r["rate"] or "closed", int(r["rps"]),
        r["p50_ms"], r["p99_ms"], r["p999_ms"], r["failures"],
        r["server_cpu_pct"] if r["server_cpu_pct"] is not None else "-",
        r.get("server_cpu_us_per_req") if r.get("server_cpu_us_per_req") is not None else "-",
        threads(r),
        r.get("db_cpu_us_per_req") if r.get("db_cpu_us_per_req") is not None else "-",
        r["server_peak_rss_mib"] if r["server_peak_rss_mib"] is not None else "-"]) + " |")
'
}
