#!/usr/bin/env bash
# `just bench-peer`: keygate against the peer to beat, panva's oidc-provider (npm) doing the
# refresh_token grant with rotation, ES256 JWT access tokens and SQLite (better-sqlite3, WAL,
# synchronous=FULL; keygate's SQLite store uses the same), both on this machine, driven by
# the same load tool (keygate-bench, renew, closed loop) in ABBA order: A = keygate, B = the
# peer, A B B A A B B A for 4 rounds each. Prints each round's req/s, the ratio
# keygate/peer per round and its median, and exits non-zero unless both sides had no failed
# request, no failed renew and no refresh token sent twice.
#
#   BENCH_CONNS=32 BENCH_DURATION=10s BENCH_WARMUP=2s BENCH_ROUNDS=4 PEER_WORKERS=1 bash bench/peer.sh
#
# The peer is installed with `npm ci` from bench/peer/package-lock.json into
# ${XDG_CACHE_HOME:-~/.cache}/keygate-peer (again only when the lock changed); its
# refresh tokens are pre-minted through the provider's models before the load, fresh ones
# for every round. keygate-bench opens fresh keygate sessions for every round itself.
# PEER_WORKERS > 1 runs the peer as that many node:cluster processes (its CPU column then
# shows the primary's only). PEER_SYNCHRONOUS=NORMAL puts the peer's SQLite on NORMAL, for a
# diagnosis only (what the peer does when fsync is not its bound): keygate stays on FULL.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PEER_SRC="$ROOT/bench/peer"
PEER_HOME="${XDG_CACHE_HOME:-$HOME/.cache}/keygate-peer"
conns="${BENCH_CONNS:-32}"
duration="${BENCH_DURATION:-10s}"
warmup="${BENCH_WARMUP:-2s}"
rounds="${BENCH_ROUNDS:-4}"
workers="${PEER_WORKERS:-1}"
synchronous="${PEER_SYNCHRONOUS:-FULL}"
export BENCH_DURATION="$duration" BENCH_WARMUP="$warmup"

[[ "$conns" =~ ^[1-9][0-9]*$ ]] || die "BENCH_CONNS must be one number of connections (got '$conns')"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROUNDS must be a positive number (got '$rounds')"
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "PEER_WORKERS must be a positive number (got '$workers')"
[[ "$synchronous" =~ ^(FULL|NORMAL)$ ]] || die "PEER_SYNCHRONOUS must be FULL or NORMAL (got '$synchronous')"
export PEER_SYNCHRONOUS="$synchronous"
command -v node >/dev/null || die "node (20.19 or later) is needed for the peer"
command -v npm >/dev/null || die "npm is needed to install the peer"
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
    || die "node $(node --version) is too old for oidc-provider 9: 20.19 or later is needed"

# Installs the peer into $PEER_HOME unless the same lock is installed there and loads.
install_peer() {
    mkdir -p "$PEER_HOME"
    if cmp -s "$PEER_SRC/package.json" "$PEER_HOME/package.json" \
        && cmp -s "$PEER_SRC/package-lock.json" "$PEER_HOME/package-lock.json" \
        && (cd "$PEER_HOME" && node -e 'new (require("better-sqlite3"))(":memory:"); require.resolve("oidc-provider")') 2>/dev/null; then
        return
    fi
    say "== installing the peer (oidc-provider, better-sqlite3) into $PEER_HOME"
    say "   better-sqlite3 compiles from source (a minute or two) when its prebuilt binary cannot be downloaded"
    cp "$PEER_SRC/package.json" "$PEER_SRC/package-lock.json" "$PEER_HOME/"
    (cd "$PEER_HOME" && npm ci --no-audit --no-fund) >&2 || die "npm ci failed in $PEER_HOME"
    (cd "$PEER_HOME" && node -e 'new (require("better-sqlite3"))(":memory:")') \
        || die "better-sqlite3 does not load in $PEER_HOME (its native build failed?)"
}

# start_peer DIR: starts the peer on DIR; sets PEER_PID and PEER_URL.
start_peer() {
    local dir="$1"
    (cd "$PEER_HOME" && exec env PEER_WORKERS="$workers" node server.mjs "$dir" >"$dir/stdout" 2>"$dir/stderr") &
    PEER_PID=$!
    local line=""
    for _ in $(seq 1 300); do
        line=$(grep -m1 '^peer listening on ' "$dir/stdout" 2>/dev/null || true)
        [[ -n "$line" ]] && break
        kill -0 "$PEER_PID" 2>/dev/null || { cat "$dir/stderr" >&2; die "the peer exited"; }
        sleep 0.1
    done
    [[ -n "$line" ]] || die "the peer did not start"
    PEER_URL=$(awk '{print $4}' <<<"$line")
}

stop_peer() {
    [[ -n "${PEER_PID:-}" ]] && kill "$PEER_PID" 2>/dev/null && wait "$PEER_PID" 2>/dev/null || true
    PEER_PID=""
}

build_release
install_peer
cp "$PEER_SRC"/*.mjs "$PEER_HOME/"

work=$(mktemp -d)
trap 'stop_gateway; stop_peer; rm -rf "$work"' EXIT
results="$work/results.jsonl"
: >"$results"

# Fresh refresh tokens for every peer round, minted before either server takes load.
mkdir -p "$work/peer"
chain_files=()
for r in $(seq 1 "$rounds"); do chain_files+=("$work/peer/chains.$r"); done
say "== minting $((conns * rounds)) refresh tokens for the peer ($conns per round)"
(cd "$PEER_HOME" && node mint.mjs "$work/peer" "$conns" "${chain_files[@]}") 2>&1 | grep -v '^oidc-provider WARNING' >&2 || true
for f in "${chain_files[@]}"; do [[ -s "$f" ]] || die "minting the peer's refresh tokens failed"; done

start_gateway "$work/keygate"
create_app "bench-peer"
start_peer "$work/peer"
say "== keygate pid $GATEWAY_PID at $GATEWAY_URL; peer pid $PEER_PID at $PEER_URL ($workers process(es))"
say "== renew, c=$conns, $duration per run after $warmup of warmup, $rounds rounds each, ABBA"
read -r load1 _ < /proc/loadavg
awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }' \
    && say "   note: the 1-minute load average is $load1 before the run: something else is (or was just) using the CPU"

pattern=(A B B A)
a=0
b=0
for slot in $(seq 0 $((2 * rounds - 1))); do
    side=${pattern[$((slot % 4))]}
    if [[ "$side" == A ]]; then
        a=$((a + 1))
        say "-- slot $((slot + 1)): keygate, round $a"
        line=$(load renew "$conns" "keygate" | tail -n1)
        round=$a
    else
        b=$((b + 1))
        say "-- slot $((slot + 1)): peer, round $b"
        line=$("$BENCH" run --target oidc --url "$PEER_URL" --chains "${chain_files[$((b - 1))]}" \
            --mode renew -c "$conns" -d "$duration" --warmup "$warmup" --pid "$PEER_PID" \
            --label peer --json | tail -n1) || true
        round=$b
    fi
    [[ "$line" == \{* ]] || line='{"label":"'"$([[ $side == A ]] && echo keygate || echo peer)"'","missing":true}'
    printf '%s\n' "$line" >&2
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["round"] = int(sys.argv[2]); r["slot"] = int(sys.argv[3]); print(json.dumps(r))' \
        "$line" "$round" "$((slot + 1))" >>"$results"
done

echo
echo "keygate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') vs oidc-provider $(cd "$PEER_HOME" && node -p 'require("oidc-provider/package.json").version') (better-sqlite3 $(cd "$PEER_HOME" && node -p 'require("better-sqlite3/package.json").version'), node $(node --version), $workers process(es)), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
echo "renew, closed loop, c=$conns, $duration per run ($warmup warmup), ABBA; SQLite WAL, synchronous=FULL for keygate and $synchronous for the peer"
command -v python3 >/dev/null && [[ -f "$ROOT/bench/fsync.py" ]] && python3 "$ROOT/bench/fsync.py" "$work" 200 || true
python3 - "$results" <<'EOF'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sides = {"keygate": {}, "peer": {}}
for r in rows:
    sides[r["label"]][r["round"]] = r

def cell(r, key, fmt="{}"):
    return "-" if r is None or r.get(key) is None else fmt.format(r[key])

head = ["round", "keygate req/s", "peer req/s", "ratio", "keygate p50/p99 ms", "peer p50/p99 ms", "keygate cpu %", "peer cpu %", "keygate CPU µs/req", "peer CPU µs/req"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
ratios = []
for n in sorted(set(sides["keygate"]) | set(sides["peer"])):
    k, p = sides["keygate"].get(n), sides["peer"].get(n)
    ratio = None
    if k and p and not k.get("missing") and not p.get("missing") and p["rps"] > 0:
        ratio = k["rps"] / p["rps"]
        ratios.append(ratio)
    print("| " + " | ".join([
        str(n), cell(k, "rps", "{:.0f}"), cell(p, "rps", "{:.0f}"),
        "-" if ratio is None else f"{ratio:.2f}",
        f"{cell(k, 'p50_ms')} / {cell(k, 'p99_ms')}", f"{cell(p, 'p50_ms')} / {cell(p, 'p99_ms')}",
        cell(k, "server_cpu_pct", "{:.0f}"), cell(p, "server_cpu_pct", "{:.0f}"),
        cell(k, "server_cpu_us_per_req", "{:.1f}"), cell(p, "server_cpu_us_per_req", "{:.1f}"),
    ]) + " |")
print()
if ratios:
    print(f"median ratio keygate/peer: {statistics.median(ratios):.2f}  (per round: {', '.join(f'{x:.2f}' for x in ratios)}; goal >= 4)")
    for side in ("keygate", "peer"):
        rps = [r["rps"] for r in sides[side].values() if not r.get("missing")]
        if rps:
            print(f"{side}: median {statistics.median(rps):.0f} req/s, min {min(rps):.0f}, max {max(rps):.0f}")
else:
    print("median ratio keygate/peer: - (no complete round)")

bad = []
for side in ("keygate", "peer"):
    runs = list(sides[side].values())
    missing = sum(1 for r in runs if r.get("missing"))
    renews = sum(r.get("renews", 0) for r in runs)
    failed = sum(r.get("failed_renews", 0) for r in runs)
    resent = sum(r.get("resent", 0) for r in runs)
    failures = sum(r.get("failures", 0) for r in runs)
    print(f"{side}: {renews} renews over {len(runs)} runs (warmup included), {failed} failed renews, {resent} refresh tokens sent twice, {failures} failed measured requests" + (f", {missing} runs without a result" if missing else ""))
    if missing or failed or resent or failures or not runs:
        bad.append(side)
if bad:
    print(f"CHECK FAILED: {' and '.join(bad)} had failed renews, resent tokens or missing runs")
    sys.exit(1)
print("check: both sides clean (no failed renews, no refresh token sent twice)")
EOF
