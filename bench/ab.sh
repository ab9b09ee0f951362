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
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
a=$1
b=$2
rounds=${3:-12}
a_flags=${A_FLAGS---no-cache}
b_flags=${B_FLAGS:-}
loadgen=$root/target/release/loadgen
[ -x "$loadgen" ] || { echo "ab.sh: build loadgen first (make bench)" >&2; exit 1; }
pin=()
command -v taskset >/dev/null && pin=(taskset -c 1)
pin_client=()
command -v taskset >/dev/null && pin_client=(taskset -c 0)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Round trips per second of one server for one 4-second load.
rate() {
    local binary=$1 flags=$2
    # shellcheck disable=SC2086 # flags are words
    "${pin[@]}" "$binary" serve --listen 127.0.0.1:0 $flags "$root/target/plugins/echo.wasm" \
        >"$out/stdout" 2>/dev/null &
    local server=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$out/stdout" 2>/dev/null && break
        sleep 0.1
    done
    local addr
    addr=$(sed -n 's/^listening on //p' "$out/stdout")
    "${pin_client[@]}" "$loadgen" echo --addr "$addr" --conns 100 --size 64 --seconds 4 |
        sed -n 's/.*round_trips_per_sec=\([0-9.]*\).*/\1/p'
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
}

ratios=()
for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then
        x=$(rate "$a" "$a_flags")
        y=$(rate "$b" "$b_flags")
    else
        y=$(rate "$b" "$b_flags")
        x=$(rate "$a" "$a_flags")
    fi
    ratio=$(python3 -c "print(f'{$x / $y:.3f}')")
    ratios+=("$ratio")
    echo "round $round: A $x, B $y round trips/s: A / B $ratio"
done
python3 - "${ratios[@]}" <<'EOF'
import statistics, sys
r = sorted(float(x) for x in sys.argv[1:])
print(f"A / B: median {statistics.median(r):.3f} over {len(r)} rounds (range {r[0]:.3f}–{r[-1]:.3f})")
EOF
