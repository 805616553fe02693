#!/usr/bin/env bash
# `just bench-scale`: renew throughput with 10k live sessions, then with 1M, on SQLite (FULL).
# The sessions are loaded through the store in bulk, not over HTTP.
#   SCALE_SESSIONS=1000000 BENCH_DURATION=10s bash bench/scale.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

build_release
work=$(mktemp -d)
trap 'stop_gateway; rm -rf "$work"' EXIT
results="$work/results.jsonl"
small=10000
large="${SCALE_SESSIONS:-1000000}"
conns="${SCALE_CONNS:-32}"

start_gateway "$work/sqlite"
create_app "bench-scale"
db="sqlite://$work/sqlite/keygate-data/keygate.db"

preload() {
    KEYGATE_DATABASE_URL="$db" "$BENCH" preload --app "$APP_ID" --sessions "$1" >&2
}

say "== preloading $small sessions"
preload "$small"
load renew "$conns" "sqlite-10k" | tee -a "$results" >&2
say "== preloading up to $large sessions"
preload "$((large - small))"
load renew "$conns" "sqlite-1M" | tee -a "$results" >&2

echo
echo "keygate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
table <"$results"
python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
small, large = rows[0]["rps"], rows[1]["rps"]
label = rows[1]["label"]
print(f"\nrenew at {label} is {100 * large / small:.1f}% of its 10k figure ({large:.0f} vs {small:.0f} req/s)")
' "$results"
