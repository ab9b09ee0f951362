#!/usr/bin/env bash
# Instructions a shoal server runs per connection and per round trip, counted by callgrind:
# repeatable whatever else the machine is doing, so two builds can be compared exactly.
#
#   bench/callgrind.sh [SHOAL] [SERVE ARGS...]
#   bench/callgrind.sh target/release/shoal --no-cache target/plugins/echo.wasm
#   bench/callgrind.sh target/baseline/shoal target/plugins/echo.wasm
#
# Starts `SHOAL serve --max-connections 200 SERVE ARGS` under callgrind with instrumentation
# off (a small pool: valgrind cannot reserve the default pool's address space), then counts
# two fixed client workloads (bench/callgrind_client.py), each between `callgrind_control
# -i on` and a dump:
#   connection   300 connections, one after another: connect, 64-byte echo, close
#   round trip   10 open connections, 300 rounds of a 512-byte echo on each (CONNS=100:
#                100 connections, 30 rounds: 3,000 round trips either way)
# and prints the instructions per connection and per round trip. With KEEP=DIR the dumps are
# copied to DIR for `callgrind_annotate` (the round trip's is the newest).
#
# CACHE=1 also simulates the caches of one core of the machines this project is measured on
# (32 KiB L1 instruction and data caches, and a 1 MiB L2 as callgrind's last level; user
# space only: the kernel's own use of the caches is not simulated) and prints the misses per
# operation: I1 (instruction fetches that missed L1), D1 (data reads and writes that missed
# L1) and L2 (data that missed the L2 as well). With CONNS=100 the connections are served in
# turn, as under real load, so that each one's state has left the caches by its next echo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shoal=${1:-$root/target/release/shoal}
shift || true
[ $# -gt 0 ] || set -- --no-cache "$root/target/plugins/echo.wasm"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }
out=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$out"' EXIT

cache=()
[ -z "${CACHE:-}" ] || cache=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64)
valgrind --tool=callgrind --instr-atstart=no "${cache[@]}" --callgrind-out-file="$out/cg.%p" \
    "$shoal" serve --listen 127.0.0.1:0 --max-connections 200 "$@" \
    >"$out/stdout" 2>"$out/stderr" &
server=$!
for _ in $(seq 600); do
    grep -q "listening on" "$out/stdout" 2>/dev/null && break
    sleep 0.1
done
addr=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$out/stdout" | head -1)
[ -n "$addr" ] || { cat "$out/stderr" >&2; echo "callgrind.sh: the server did not start" >&2; exit 1; }

# Run one workload with instrumentation on; print the instructions it cost the server.
count() {
    local workload=$1 units=$2
    python3 "$root/bench/callgrind_client.py" "$addr" "$workload" --ready "$out/ready.$workload" \
        --conns "${CONNS:-10}" &
    local client=$!
    while [ ! -e "$out/ready.$workload" ]; do sleep 0.05; done
    callgrind_control -i on "$server" >/dev/null 2>&1
    touch "$out/go.$workload"
    while [ ! -e "$out/done.$workload" ]; do sleep 0.05; done
    callgrind_control -i off "$server" >/dev/null 2>&1
    touch "$out/stop.$workload"
    wait "$client"
    callgrind_control -d "$workload" "$server" >/dev/null 2>&1
    local dump
    dump=$(ls -t "$out"/cg.* | head -1)
    local total
    total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump")
    echo "$workload: $((total / units)) instructions per $3 ($total over $units)"
    # `events:` names the columns of `totals:`, both after the line's first word.
    [ -z "${CACHE:-}" ] || awk -v workload="$workload" -v units="$units" -v what="$3" '
        /^events:/ { for (i = 2; i <= NF; i++) field[$i] = i }
        /^totals:/ {
            printf "%s: per %s, %.1f I1 misses, %.1f D1 misses, %.1f L2 misses (data)\n", \
                workload, what, $field["I1mr"] / units,
                ($field["D1mr"] + $field["D1mw"]) / units,
                ($field["DLmr"] + $field["DLmw"]) / units
        }' "$dump"
}
count connection 300 connection
count roundtrip 3000 "round trip"
[ -z "${KEEP:-}" ] || cp "$out"/cg.* "$KEEP"/
