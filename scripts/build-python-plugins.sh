#!/usr/bin/env bash
# Build the Python plugins in plugins/python/ and leave each at target/plugins/<name>-py.wasm
# (echo.py becomes echo-py.wasm): componentize-py (pinned in plugins/python/requirements.txt,
# installed from PyPI in a virtual environment at target/python) bundles each module with
# CPython as a component of the `plugin` world, or of `plugin-handoff` for a module with a
# `Handoff` class (it can be hot swapped with its state and hibernate). A component newer
# than its source is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/plugins/python"
venv="$root/target/python"
# shellcheck source=plugin-lib.sh
. "$root/scripts/plugin-lib.sh"

if [ ! -x "$venv/bin/componentize-py" ] || [ "$py/requirements.txt" -nt "$venv/bin/componentize-py" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
        "$root/scripts/apt-install.sh" build-python-plugins python3-venv
        python3 -m venv "$venv"
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$py/requirements.txt"
    touch "$venv/bin/componentize-py"
fi
componentize() {
    local world=plugin
    if grep -q '^class Handoff(exports.Handoff)' "$1"; then
        world=plugin-handoff
    fi
    "$venv/bin/componentize-py" --quiet -d "$root/wit" -w "$world" componentize -p "$py" "$2" \
        -o "$3"
}
build_components build-python-plugins py "$py/requirements.txt" componentize "$py"/*.py
