#!/usr/bin/env bash
# Build every plugin crate in plugins/ and leave each component at target/plugins/<name>.wasm
# (the crate's folder name): plugins that use WASI for wasm32-wasip2, those marked
# `wasi = false` for wasm32-unknown-unknown, made components by tools/componentize.
#
#   scripts/build-plugins.sh            build (release)
#   scripts/build-plugins.sh --clippy   lint the plugins instead
#
# Both targets come from rustup. Where rustup cannot fetch it, the plugins are
# built with Debian's toolchain instead (scripts/fallback-toolchain.sh); SHOAL_FORCE_FALLBACK=1
# takes that path on purpose.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
export CARGO_TARGET_DIR="$root/target/wasm"
# shellcheck source=plugin-lib.sh
. "$root/scripts/plugin-lib.sh"

have_target() {
    rustup target list --installed 2>/dev/null | grep -qx "$1"
}

if [ -n "${SHOAL_FORCE_FALLBACK:-}" ]; then
    exec "$root/scripts/fallback-toolchain.sh" "$@"
fi
for target in wasm32-wasip2 wasm32-unknown-unknown; do
    if ! have_target "$target"; then
        echo "build-plugins: adding the $target target through rustup" >&2
        if ! rustup target add "$target"; then
            echo "build-plugins: rustup could not add $target; using Debian's toolchain" >&2
            exec "$root/scripts/fallback-toolchain.sh" "$@"
        fi
    fi
done

cd "$root/plugins"
if [ "${1:-}" = "--clippy" ]; then
    "$cargo" clippy --release --target wasm32-wasip2 --workspace --all-targets -- -D warnings
    exit 0
fi
"$cargo" build --release --target wasm32-wasip2 --workspace
# shellcheck disable=SC2046 # one word per -p and name
"$cargo" build --release --target wasm32-unknown-unknown $(wasi_free_packages)
install_plugins "$CARGO_TARGET_DIR/wasm32-wasip2/release" "" \
    "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release"
echo "build-plugins: $(ls "$root/target/plugins" | tr '\n' ' ')" >&2
