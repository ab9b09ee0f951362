#!/usr/bin/env bash
# Build the JavaScript plugins in plugins/js/ and leave each at target/plugins/<name>-js.wasm
# (echo.js becomes echo-js.wasm): componentize-js (pinned in plugins/js/package-lock.json,
# installed by `npm ci`) embeds each module in its JavaScript engine as a component of the
# `plugin` world, or of `plugin-handoff` for a module that exports `handoff` (it can be hot
# swapped with its state and hibernate). WASI stays for stdio only (an uncaught exception
# reaches the host's log); random, clocks and HTTP are left out. A component newer than its
# source is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
js="$root/plugins/js"
# shellcheck source=plugin-lib.sh
. "$root/scripts/plugin-lib.sh"

command -v npm >/dev/null 2>&1 || "$root/scripts/apt-install.sh" build-js-plugins nodejs npm
if [ ! -x "$js/node_modules/.bin/componentize-js" ] \
    || [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
fi
componentize() {
    local world=plugin
    if grep -q '^export const handoff' "$1"; then
        world=plugin-handoff
    fi
    "$js/node_modules/.bin/componentize-js" "$1" --wit "$root/wit" --world-name "$world" \
        --disable random clocks http fetch-event -o "$3" >/dev/null
}
build_components build-js-plugins js "$js/package-lock.json" componentize "$js"/*.js
