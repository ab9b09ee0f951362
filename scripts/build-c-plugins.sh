#!/usr/bin/env bash
# Build the C plugins in plugins/c/ and leave each at target/plugins/<name>-c.wasm (echo.c
# becomes echo-c.wasm): bindings generated from wit/plugin.wit by tools/wit-c (the
# wit-bindgen-c library) for the `plugin` world, or for `plugin-handoff` when the file defines
# the `handoff` export (it can then be hot swapped with its state and hibernate); each file
# compiled with Debian's clang for wasm32-wasi (a reactor), and made a component by
# tools/componentize. The toolchain is installed through apt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
llvm=19

"$root/scripts/apt-install.sh" build-c-plugins \
    "clang-$llvm" "lld-$llvm" "libclang-rt-$llvm-dev-wasm32" wasi-libc
(cd "$root" && env -u CARGO_TARGET_DIR "$cargo" build -q -p shoal-wit-c -p shoal-componentize)

out="$root/target/c-plugins"
mkdir -p "$out" "$root/target/plugins"
for world in plugin plugin-handoff; do
    "$root/target/debug/shoal-wit-c" "$root/wit/plugin.wit" "$world" "$out/$world"
done
for source in "$root"/plugins/c/*.c; do
    name=$(basename "$source" .c)
    bindings="$out/plugin"
    if grep -q '^bool exports_shoal_plugin_handoff_resume' "$source"; then
        bindings="$out/plugin-handoff"
    fi
    "clang-$llvm" --target=wasm32-wasi -O2 -Wall -Wextra -Werror -mexec-model=reactor \
        -Wl,--strip-all -I "$bindings" -o "$out/$name.core.wasm" \
        "$source" "$bindings/plugin.c" "$bindings/plugin_component_type.o"
    "$root/target/debug/shoal-componentize" "$out/$name.core.wasm" \
        "$root/target/plugins/$name-c.wasm"
done
echo "build-c-plugins: $(cd "$root/plugins/c" && ls ./*.c | sed 's|./\(.*\)\.c|\1-c.wasm|' | tr '\n' ' ')" >&2
