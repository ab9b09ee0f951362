#!/usr/bin/env bash
# Measure a change to wasmtime beside the wasmtime shoal ships (vendor/wasmtime: crates.io's
# crate plus vendor/wasmtime-patches), in one run: the polyglot scenario's in-process
# lifecycles (instantiate, init, close, drop per language) with shoal-bench built against
# vendor/wasmtime, then against a copy of it with PATCH applied (or, with -R, taken out),
# alternating ROUNDS times. Nothing in the repository changes: the other build is made from
# a copy of HEAD in target/wasmtime-patch, sharing target/ (only wasmtime and the crates
# above it are rebuilt, ~2 minutes each way).
#
#   scripts/measure-wasmtime-patch.sh [-R] [PATCH] [ROUNDS]
#
# PATCH defaults to docs/research/wasmtime-48-warm-fiber-stacks.patch; ROUNDS to 3. With -R
# the patch is reversed: `-R vendor/wasmtime-patches/0002-defined-funcref-table.patch`
# measures what a shipped patch still gives. Needs `make plugins` first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
reverse=()
label=patched
if [ "${1:-}" = "-R" ]; then
    reverse=(-R)
    label=unpatched
    shift
fi
patch_file=$(realpath "${1:-$root/docs/research/wasmtime-48-warm-fiber-stacks.patch}")
rounds=${2:-3}
cargo=${CARGO:-cargo}
work="$root/target/wasmtime-patch"
export CARGO_TARGET_DIR="$root/target"
export SHOAL_ECHO_WASM="$root/target/plugins/echo.wasm"
[ -f "$SHOAL_ECHO_WASM" ] || { echo "measure-wasmtime-patch: run \`make plugins\` first" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work/tree"
cp -r "$root/vendor/wasmtime" "$work/wasmtime"
patch -s "${reverse[@]}" -d "$work/wasmtime" -p1 < "$patch_file"
git -C "$root" archive HEAD | tar -x -C "$work/tree"
sed -i "s|^wasmtime = { path = \"vendor/wasmtime\" }|wasmtime = { path = \"$work/wasmtime\" }|" "$work/tree/Cargo.toml"
grep -q "path = \"$work/wasmtime\"" "$work/tree/Cargo.toml" \
    || { echo "measure-wasmtime-patch: no [patch.crates-io] wasmtime in Cargo.toml" >&2; exit 1; }
cp "$root/Cargo.lock" "$work/tree/Cargo.lock"

echo "measure-wasmtime-patch: building shoal-bench on vendor/wasmtime, $label: $(basename "$patch_file")" >&2
(cd "$work/tree" && "$cargo" build -q --release -p shoal-bench)
cp "$root/target/release/shoal-bench" "$work/shoal-bench-$label"
echo "measure-wasmtime-patch: building shoal-bench on vendor/wasmtime" >&2
(cd "$root" && "$cargo" build -q --release -p shoal-bench)
cp "$root/target/release/shoal-bench" "$work/shoal-bench-shipped"

echo "| build | language | lifecycle p50 µs (copied) | p99 µs | lifecycle p50 µs (copy-on-write) | p99 µs |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
    for build in shipped $label; do
        echo "measure-wasmtime-patch: round $round/$rounds, $build" >&2
        (cd "$root" && "$work/shoal-bench-$build" --scenarios polyglot --rounds 0 2>/dev/null) \
            | awk -F' *\\| *' -v build="$build" \
                '$2 ~ /^(Rust|C|JavaScript|Python)$/ && $7 ~ /^[0-9.]+$/ {
                    printf "| %s | %s | %s | %s | %s | %s |\n", build, $2, $7, $8, $9, $10 }'
    done
done
