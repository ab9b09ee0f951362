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
#   round trip   10 open connections, 300 rounds of a 512-byte echo on each
# and prints the instructions per connection and per round trip. With KEEP=DIR the dumps are
# copied to DIR for `callgrind_annotate` (the round trip's is the newest).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shoal=${1:-$root/target/release/shoal}
shift || true
[ $# -gt 0 ] || set -- --no-cache "$root/target/plugins/echo.wasm"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }
out=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$out"' EXIT

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.%p" \
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
    python3 "$root/bench/callgrind_client.py" "$addr" "$workload" --ready "$out/ready.$workload" &
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
}
count connection 300 connection
count roundtrip 3000 "round trip"
[ -z "${KEEP:-}" ] || cp "$out"/cg.* "$KEEP"/
