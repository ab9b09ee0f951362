#!/usr/bin/env bash
# Two shoal builds' Wasm echo, side by side: many short alternating rounds of one load, and the
# per-round ratios A / B with their median. For a small difference (a few per cent) that
# `make bench`'s five rounds cannot separate from noise; run it A/A (a build against a copy
# of itself) to see what the noise is.
#
#   bench/ab.sh A_SHOAL B_SHOAL [ROUNDS]          (after `make bench` has built loadgen)
#   B_FLAGS=--no-cache bench/ab.sh target/release/shoal target/baseline/shoal 16
#
# Each round starts A and B in turn (every other round B first), pinned to core 1 with the
# load generator on core 0 when `taskset` is there, serving target/plugins/echo.wasm:
# `loadgen echo --conns 100 --size 64` for 4 s each. A gets `--no-cache` (A_FLAGS to change);
# B gets B_FLAGS (empty by default: builds older than the compile cache have no such flag).
# A_PLUGIN and B_PLUGIN serve another component than target/plugins/echo.wasm (to compare two
# builds of a plugin on one shoal: `A_PLUGIN=new.wasm B_PLUGIN=old.wasm bench/ab.sh S S`).
#
# LOAD picks the load and what is compared:
#   echo           (default) `loadgen echo`: round trips per second at saturation;
#   paced          `loadgen paced --rate 30000`: server CPU µs per round trip at a fixed load;
#   paced-connect  `loadgen paced --connect --rate 5000` after 1 s of the paced load: server CPU
#                  µs per new connection.
# For the paced loads lower is better: A / B below 1 means A costs less.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
a=$1
b=$2
rounds=${3:-12}
a_flags=${A_FLAGS---no-cache}
b_flags=${B_FLAGS:-}
a_plugin=${A_PLUGIN:-$root/target/plugins/echo.wasm}
b_plugin=${B_PLUGIN:-$root/target/plugins/echo.wasm}
loadgen=$root/target/release/loadgen
[ -x "$loadgen" ] || { echo "ab.sh: build loadgen first (make bench)" >&2; exit 1; }
load=${LOAD:-echo}
case $load in
    echo | paced | paced-connect) ;;
    *) echo "ab.sh: LOAD is echo, paced or paced-connect, not $load" >&2; exit 1 ;;
esac
pin=()
command -v taskset >/dev/null && pin=(taskset -c 1)
pin_client=()
command -v taskset >/dev/null && pin_client=(taskset -c 0)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# One server's figure for one 4-second load: round trips per second (echo), or its CPU time
# per operation (paced loads).
rate() {
    local binary=$1 flags=$2 plugin=$3
    # shellcheck disable=SC2086 # flags are words
    "${pin[@]}" "$binary" serve --listen 127.0.0.1:0 $flags "$plugin" \
        >"$out/stdout" 2>/dev/null &
    local server=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$out/stdout" 2>/dev/null && break
        sleep 0.1
    done
    local addr
    addr=$(sed -n 's/^listening on //p' "$out/stdout")
    local load_args field=server_cpu_us_per_op
    case $load in
        echo)
            load_args=(echo --conns 100 --size 64)
            field=round_trips_per_sec ;;
        paced)
            load_args=(paced --rate 30000 --server-pid "$server") ;;
        paced-connect)
            # As in `make bench`'s paced scenario, the server has first held 100 connections
            # at once: its pools have that many slots freed, as a server past a busy moment.
            "${pin_client[@]}" "$loadgen" paced --addr "$addr" --rate 30000 --seconds 1 >/dev/null
            load_args=(paced --connect --rate 5000 --server-pid "$server") ;;
    esac
    "${pin_client[@]}" "$loadgen" "${load_args[@]}" --addr "$addr" --seconds 4 |
        sed -n "s/.*$field=\([0-9.]*\).*/\1/p"
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
}

ratios=()
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then
        x=$(rate "$a" "$a_flags" "$a_plugin")
        y=$(rate "$b" "$b_flags" "$b_plugin")
    else
        y=$(rate "$b" "$b_flags" "$b_plugin")
        x=$(rate "$a" "$a_flags" "$a_plugin")
    fi
    ratio=$(python3 -c "print(f'{$x / $y:.3f}')")
    ratios+=("$ratio")
    unit="round trips/s"
    [ "$load" = echo ] || unit="server CPU µs per op"
    echo "round $round: A $x, B $y $unit: A / B $ratio"
done
python3 - "${ratios[@]}" <<'EOF'
import statistics, sys
r = sorted(float(x) for x in sys.argv[1:])
print(f"A / B: median {statistics.median(r):.3f} over {len(r)} rounds (range {r[0]:.3f}–{r[-1]:.3f})")
EOF
