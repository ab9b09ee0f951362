#!/usr/bin/env bash
# Build the plugins without rustup's wasm32-wasip2 target, from Debian's packages:
# Debian's Rust (rustc-web, cargo-web, rust-web-src) builds each plugin for wasm32-wasip1 with
# -Zbuild-std against Debian's wasi-libc, linked by lld-22 (plugins marked `wasi = false` for
# wasm32-unknown-unknown); tools/componentize then turns each core module into a component,
# with the WASI preview 1 reactor adapter where the plugin uses WASI.
#
#   scripts/fallback-toolchain.sh            build to target/plugins/<name>.wasm
#   scripts/fallback-toolchain.sh --clippy   lint the plugins (for the host target)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
# shellcheck source=plugin-lib.sh
. "$root/scripts/plugin-lib.sh"
packages=(rustc-web cargo-web rust-web-src lld-22 wasi-libc)

if [ "${1:-}" = "--clippy" ]; then
    # Debian's Rust has no clippy; the plugins compile for the host too, so lint them there.
    cd "$root/plugins"
    exec "${CARGO:-cargo}" clippy --workspace --all-targets -- -D warnings
fi

"$root/scripts/apt-install.sh" fallback-toolchain "${packages[@]}"

export RUSTC=/usr/bin/rustc
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$root/target/wasm-fallback"
export CARGO_TARGET_WASM32_WASIP1_LINKER=wasm-ld-22
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C link-self-contained=no -L native=/usr/lib/wasm32-wasi"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-22
(
    cd "$root/plugins"
    /usr/bin/cargo build --release --target wasm32-wasip1 -Zbuild-std=std,panic_abort --workspace
    # shellcheck disable=SC2046 # one word per -p and name
    /usr/bin/cargo build --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort \
        $(wasi_free_packages)
)
unset RUSTC RUSTC_BOOTSTRAP CARGO_TARGET_DIR

install_plugins "" "$root/target/wasm-fallback/wasm32-wasip1/release" \
    "$root/target/wasm-fallback/wasm32-unknown-unknown/release"
echo "fallback-toolchain: built $(ls "$root/target/plugins" | tr '\n' ' ')" >&2
