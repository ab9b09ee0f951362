# Shared by the plugin build scripts (sourced; expects $root, and $cargo for install_plugins).
#
# A plugin whose Cargo.toml says `wasi = false` under [package.metadata.shoal] uses no WASI:
# it is built for wasm32-unknown-unknown and made a component without the WASI adapter, so it
# imports only shoal:plugin (~29 % fewer instructions to instantiate; with `--import-memory`,
# plugins/.cargo/config.toml, two core instances: its memory's and its own). Every other
# plugin is built for a WASI target.

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

# Build the guest sources given after the first four arguments into
# target/plugins/<name>-SUFFIX.wasm with `BUILD SOURCE NAME OUT`, keeping a component newer
# than its source, wit/plugin.wit and the toolchain's pin file PIN; WHO names the caller in
# the summary line.   build_components WHO SUFFIX PIN BUILD SOURCE...
build_components() {
    local who=$1 suffix=$2 pin=$3 build=$4 source name out
    shift 4
    local built=()
    mkdir -p "$root/target/plugins"
    for source in "$@"; do
        name=$(basename "${source%.*}")
        out="$root/target/plugins/$name-$suffix.wasm"
        if [ "$out" -nt "$source" ] && [ "$out" -nt "$root/wit/plugin.wit" ] \
            && [ "$out" -nt "$pin" ]; then
            built+=("$name-$suffix.wasm (kept)")
            continue
        fi
        "$build" "$source" "$name" "$out.new"
        mv "$out.new" "$out"
        built+=("$name-$suffix.wasm")
    done
    echo "$who: ${built[*]}" >&2
}
