#!/usr/bin/env bash
# Measure a local patch of wasmtime beside the stock crate, in one run: the polyglot
# scenario's in-process lifecycles (instantiate, init, close, drop per language) with
# shoal-bench built against the wasmtime of Cargo.lock, then against the same crate with
# PATCH applied, alternating ROUNDS times. Nothing in the repository changes: the patched
# build is made from a copy of HEAD in target/wasmtime-patch, sharing target/ (only wasmtime
# and the crates above it are rebuilt, ~2 minutes each way).
#
#   scripts/measure-wasmtime-patch.sh [PATCH] [ROUNDS]
#
# PATCH defaults to docs/research/wasmtime-48-pagemap-scan-resume.patch (BENCHMARKS.md,
# "A wasmtime patch measured"); ROUNDS to 3. Needs `make plugins` first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
patch_file=$(realpath "${1:-$root/docs/research/wasmtime-48-pagemap-scan-resume.patch}")
rounds=${2:-3}
cargo=${CARGO:-cargo}
work="$root/target/wasmtime-patch"
export CARGO_TARGET_DIR="$root/target"
export SHOAL_ECHO_WASM="$root/target/plugins/echo.wasm"
[ -f "$SHOAL_ECHO_WASM" ] || { echo "measure-wasmtime-patch: run \`make plugins\` first" >&2; exit 1; }

version=$(grep -A1 '^name = "wasmtime"$' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')
(cd "$root" && "$cargo" fetch -q)
stock=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"wasmtime-$version" | head -1)

rm -rf "$work"
mkdir -p "$work/tree"
cp -r "$stock" "$work/wasmtime"
patch -s -d "$work/wasmtime" -p1 < "$patch_file"
git -C "$root" archive HEAD | tar -x -C "$work/tree"
printf '\n[patch.crates-io]\nwasmtime = { path = "%s" }\n' "$work/wasmtime" >> "$work/tree/Cargo.toml"
cp "$root/Cargo.lock" "$work/tree/Cargo.lock"

echo "measure-wasmtime-patch: building shoal-bench on wasmtime $version + $(basename "$patch_file")" >&2
(cd "$work/tree" && "$cargo" build -q --release -p shoal-bench)
cp "$root/target/release/shoal-bench" "$work/shoal-bench-patched"
echo "measure-wasmtime-patch: building shoal-bench on wasmtime $version as locked" >&2
(cd "$root" && "$cargo" build -q --release -p shoal-bench)
cp "$root/target/release/shoal-bench" "$work/shoal-bench-stock"

echo "| build | language | lifecycle p50 µs (copied) | p99 µs | lifecycle p50 µs (copy-on-write) | p99 µs |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
    for build in stock patched; do
        echo "measure-wasmtime-patch: round $round/$rounds, $build" >&2
        (cd "$root" && "$work/shoal-bench-$build" --scenarios polyglot --rounds 0 2>/dev/null) \
            | awk -F' *\\| *' -v build="$build" \
                '$2 ~ /^(Rust|C|JavaScript|Python)$/ && $7 ~ /^[0-9.]+$/ {
                    printf "| %s | %s | %s | %s | %s | %s |\n", build, $2, $7, $8, $9, $10 }'
    done
done
