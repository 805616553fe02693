#!/usr/bin/env bash
# `just bench-instructions`: the gateway's instructions per request, counted by valgrind's
# callgrind: one connection (so every write commits alone, and the count does not depend on
# how requests happen to batch), SQLite, a release keygate. Unlike CPU time, the count is the
# same from run to run whatever else the machine does, so two builds can be compared by it
# when the load curve's CPU figures are lost in the noise of shared cores. It counts user-space
# instructions only: the kernel's side (system calls, context switches, the fsync) is not in
# it, and under valgrind aws-lc and sha2 take their portable code paths, so the share of the
# cryptography is not the share a native run sees.
#
#   BENCH_KEYGATE=FILE BENCH_MODES="renew sign" INSTRUCTIONS_DURATION=10s bash bench/instructions.sh
#
# Prints one line per mode: requests, instructions, instructions per request; with
# INSTRUCTIONS_KEEP=DIR the callgrind output stays in DIR for callgrind_annotate.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

command -v valgrind >/dev/null || die "valgrind is needed (Debian: apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control (valgrind) is needed"
build_release
work=$(mktemp -d)
keep="${INSTRUCTIONS_KEEP:-$work}"
mkdir -p "$keep"
trap 'stop_gateway; rm -rf "$work"' EXIT

# keygate under callgrind, instrumented only between the two callgrind_control calls (not
# while it starts, runs migrations and argon2 for the root key, or during the warm-up).
measured="$KEYGATE"
wrapper="$work/keygate-callgrind"
for mode in ${BENCH_MODES:-renew sign}; do
    out="$keep/callgrind.$mode.out"
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=%s %s "$@"\n' \
        "$out" "$measured" >"$wrapper"
    chmod +x "$wrapper"
    KEYGATE="$wrapper"
    start_gateway "$work/$mode" ""
    create_app "instructions-$mode"
    run() {
        KEYGATE_BENCH_APP_KEY="$APP_KEY" "$BENCH" run --url "$GATEWAY_URL" --app "$APP_ID" \
            --mode "$mode" -c 1 --json "$@"
    }
    run -d 3s --warmup 1s >/dev/null
    callgrind_control -i on "$GATEWAY_PID" >/dev/null
    report=$(run -d "${INSTRUCTIONS_DURATION:-10s}" --warmup 0s)
    callgrind_control -i off "$GATEWAY_PID" >/dev/null
    stop_gateway
    requests=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["requests"])' "$report")
    total=$(callgrind_annotate "$out" | awk '/PROGRAM TOTALS/ && !seen { gsub(",", "", $1); print $1; seen = 1 }')
    [[ -n "$total" && "$requests" -gt 0 ]] || die "no count for $mode (see $out)"
    printf '%s: %s requests, %s instructions, %s per request\n' \
        "$mode" "$requests" "$total" "$((total / requests))"
done
