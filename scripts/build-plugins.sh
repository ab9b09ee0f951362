#!/usr/bin/env bash
# Build every plugin crate in plugins/ for wasm32-wasip2 and copy each component to
# target/plugins/<name>.wasm (the crate's folder name).
#
#   scripts/build-plugins.sh            build (release)
#   scripts/build-plugins.sh --clippy   lint the plugins instead
#
# The wasm32-wasip2 target comes from rustup. Where rustup cannot fetch it, the plugins are
# built with Debian's toolchain instead (scripts/fallback-toolchain.sh); SHOAL_FORCE_FALLBACK=1
# takes that path on purpose.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
export CARGO_TARGET_DIR="$root/target/wasm"

have_wasip2() {
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2
}

if [ -n "${SHOAL_FORCE_FALLBACK:-}" ]; then
    exec "$root/scripts/fallback-toolchain.sh" "$@"
fi
if ! have_wasip2; then
    echo "build-plugins: adding the wasm32-wasip2 target through rustup" >&2
    if ! rustup target add wasm32-wasip2; then
        echo "build-plugins: rustup could not add wasm32-wasip2; using Debian's toolchain" >&2
        exec "$root/scripts/fallback-toolchain.sh" "$@"
    fi
fi

cd "$root/plugins"
if [ "${1:-}" = "--clippy" ]; then
    "$cargo" clippy --release --target wasm32-wasip2 --workspace --all-targets -- -D warnings
    exit 0
fi
"$cargo" build --release --target wasm32-wasip2 --workspace
mkdir -p "$root/target/plugins"
for manifest in "$root"/plugins/*/Cargo.toml; do
    name=$(basename "$(dirname "$manifest")")
    cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/${name//-/_}.wasm" "$root/target/plugins/$name.wasm"
done
echo "build-plugins: $(ls "$root/target/plugins" | tr '\n' ' ')" >&2
