# Shared by build-plugins.sh and fallback-toolchain.sh (sourced; expects $root and $cargo).
#
# A plugin whose Cargo.toml says `wasi = false` under [package.metadata.shoal] uses no WASI:
# it is built for wasm32-unknown-unknown and made a component without the WASI adapter, so it
# imports only shoal:plugin (one core instance instead of three; ~29 % fewer instructions to
# instantiate). Every other plugin is built for a WASI target.

# The names of the plugins that use no WASI, one per line.
wasi_free_plugins() {
    local manifest
    for manifest in "$root"/plugins/*/Cargo.toml; do
        if grep -qx 'wasi = false' "$manifest"; then
            basename "$(dirname "$manifest")"
        fi
    done
}

# `-p NAME` for each plugin that uses no WASI.
wasi_free_packages() {
    local name
    for name in $(wasi_free_plugins); do
        printf -- '-p %s ' "$name"
    done
}

# Copy every plugin to target/plugins/<name>.wasm: WASI plugins from the component folder
# $1 (already components), or through tools/componentize from the core module folder $2
# (with the preview 1 adapter) when $1 is empty; WASI-free plugins from the core module
# folder $3, through tools/componentize.
install_plugins() {
    local wasi_components=$1 wasi_modules=$2 free_modules=$3 manifest name file
    (cd "$root" && env -u CARGO_TARGET_DIR "$cargo" build -q -p shoal-componentize)
    mkdir -p "$root/target/plugins"
    for manifest in "$root"/plugins/*/Cargo.toml; do
        name=$(basename "$(dirname "$manifest")")
        file="${name//-/_}.wasm"
        if grep -qx 'wasi = false' "$manifest"; then
            "$root/target/debug/shoal-componentize" "$free_modules/$file" "$root/target/plugins/$name.wasm"
        elif [ -n "$wasi_components" ]; then
            cp "$wasi_components/$file" "$root/target/plugins/$name.wasm"
        else
            "$root/target/debug/shoal-componentize" "$wasi_modules/$file" "$root/target/plugins/$name.wasm"
        fi
    done
}
