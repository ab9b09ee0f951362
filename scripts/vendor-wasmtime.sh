#!/usr/bin/env bash
# shoal builds against wasmtime from crates.io with a few patches that upstream has not
# released yet (vendor/wasmtime-patches/README.md says which and why). The patched crate is
# committed in vendor/wasmtime, and Cargo.toml's [patch.crates-io] points at it.
#
#   scripts/vendor-wasmtime.sh          rebuild vendor/wasmtime: the crates.io crate of the
#                                       version in Cargo.lock, then each patch in order
#   scripts/vendor-wasmtime.sh --check  rebuild it in a scratch folder and fail unless it is
#                                       identical to vendor/wasmtime (nothing else changed)
#
# The crates.io crate is fetched by cargo (a scratch project that depends on it), so this
# needs what any build needs: crates.io, or a registry cache that holds the crate.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
patches="$root/vendor/wasmtime-patches"
version=$(grep -A1 '^name = "wasmtime"$' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p')
[ -n "$version" ] || { echo "vendor-wasmtime: no wasmtime in Cargo.lock" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The pristine crate, as cargo downloads it.
mkdir -p "$scratch/fetch/src"
printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasmtime = { version = "=%s", default-features = false }\n[workspace]\n' \
    "$version" > "$scratch/fetch/Cargo.toml"
touch "$scratch/fetch/src/lib.rs"
(cd "$scratch/fetch" && "$cargo" fetch -q)
pristine=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"wasmtime-$version" | head -1)
[ -d "$pristine" ] || { echo "vendor-wasmtime: wasmtime $version not in the registry cache" >&2; exit 1; }

built="$scratch/wasmtime"
cp -r "$pristine" "$built"
# Cargo's own bookkeeping of the download, not part of the crate's source.
rm -f "$built/.cargo-ok" "$built/.cargo_vcs_info.json"
for patch in "$patches"/*.patch; do
    patch -s -d "$built" -p1 --no-backup-if-mismatch < "$patch"
done

if [ "${1:-}" = "--check" ]; then
    if ! diff -r "$built" "$root/vendor/wasmtime" > "$scratch/diff"; then
        echo "vendor-wasmtime: vendor/wasmtime is not wasmtime $version + vendor/wasmtime-patches:" >&2
        head -40 "$scratch/diff" >&2
        exit 1
    fi
    echo "vendor-wasmtime: vendor/wasmtime is wasmtime $version + $(ls "$patches"/*.patch | wc -l) patches"
else
    rm -rf "$root/vendor/wasmtime"
    cp -r "$built" "$root/vendor/wasmtime"
    echo "vendor-wasmtime: vendor/wasmtime rebuilt from wasmtime $version + $(ls "$patches"/*.patch | wc -l) patches"
fi
