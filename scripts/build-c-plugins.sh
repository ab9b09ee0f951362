#!/usr/bin/env bash
# Build the C plugins in plugins/c/ and leave each at target/plugins/<name>-c.wasm (echo.c
# becomes echo-c.wasm): bindings generated from wit/plugin.wit by tools/wit-c (the
# wit-bindgen-c library), each file compiled with Debian's clang for wasm32-wasi (a reactor),
# and made a component by tools/componentize. The toolchain is installed through apt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
llvm=19

"$root/scripts/apt-install.sh" build-c-plugins \
    "clang-$llvm" "lld-$llvm" "libclang-rt-$llvm-dev-wasm32" wasi-libc
(cd "$root" && env -u CARGO_TARGET_DIR "$cargo" build -q -p shoal-wit-c -p shoal-componentize)

out="$root/target/c-plugins"
mkdir -p "$out" "$root/target/plugins"
"$root/target/debug/shoal-wit-c" "$root/wit/plugin.wit" plugin "$out/bindings"
for source in "$root"/plugins/c/*.c; do
    name=$(basename "$source" .c)
    "clang-$llvm" --target=wasm32-wasi -O2 -Wall -Wextra -Werror -mexec-model=reactor \
        -Wl,--strip-all -I "$out/bindings" -o "$out/$name.core.wasm" \
        "$source" "$out/bindings/plugin.c" "$out/bindings/plugin_component_type.o"
    "$root/target/debug/shoal-componentize" "$out/$name.core.wasm" \
        "$root/target/plugins/$name-c.wasm"
done
echo "build-c-plugins: $(cd "$root/plugins/c" && ls ./*.c | sed 's|./\(.*\)\.c|\1-c.wasm|' | tr '\n' ' ')" >&2
