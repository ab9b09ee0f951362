#!/usr/bin/env bash
# Build the JavaScript plugins in plugins/js/ and leave each at target/plugins/<name>-js.wasm
# (echo.js becomes echo-js.wasm): componentize-js (pinned in plugins/js/package-lock.json,
# installed by `npm ci`) embeds each module in its JavaScript engine as a component of the
# `plugin` world. WASI stays for stdio only (an uncaught exception reaches the host's log);
# random, clocks and HTTP are left out. A component newer than its source is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
js="$root/plugins/js"

command -v npm >/dev/null 2>&1 || "$root/scripts/apt-install.sh" build-js-plugins nodejs npm
if [ ! -x "$js/node_modules/.bin/componentize-js" ] \
    || [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
fi
mkdir -p "$root/target/plugins"
built=()
for source in "$js"/*.js; do
    name=$(basename "$source" .js)
    out="$root/target/plugins/$name-js.wasm"
    if [ "$out" -nt "$source" ] && [ "$out" -nt "$root/wit/plugin.wit" ] \
        && [ "$out" -nt "$js/package-lock.json" ]; then
        built+=("$name-js.wasm (kept)")
        continue
    fi
    "$js/node_modules/.bin/componentize-js" "$source" --wit "$root/wit" --world-name plugin \
        --disable random clocks http fetch-event -o "$out.new" >/dev/null
    mv "$out.new" "$out"
    built+=("$name-js.wasm")
done
echo "build-js-plugins: ${built[*]}" >&2
