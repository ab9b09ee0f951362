#!/usr/bin/env bash
# Build the Python plugins in plugins/python/ and leave each at target/plugins/<name>-py.wasm
# (echo.py becomes echo-py.wasm): componentize-py (pinned in plugins/python/requirements.txt,
# installed from PyPI in a virtual environment at target/python) bundles each module with
# CPython as a component of the `plugin` world. A component newer than its source is kept.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/plugins/python"
venv="$root/target/python"

if [ ! -x "$venv/bin/componentize-py" ] || [ "$py/requirements.txt" -nt "$venv/bin/componentize-py" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
        "$root/scripts/apt-install.sh" build-python-plugins python3-venv
        python3 -m venv "$venv"
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$py/requirements.txt"
    touch "$venv/bin/componentize-py"
fi
mkdir -p "$root/target/plugins"
built=()
for source in "$py"/*.py; do
    name=$(basename "$source" .py)
    out="$root/target/plugins/$name-py.wasm"
    if [ "$out" -nt "$source" ] && [ "$out" -nt "$root/wit/plugin.wit" ] \
        && [ "$out" -nt "$py/requirements.txt" ]; then
        built+=("$name-py.wasm (kept)")
        continue
    fi
    "$venv/bin/componentize-py" --quiet -d "$root/wit" -w plugin componentize -p "$py" "$name" \
        -o "$out.new"
    mv "$out.new" "$out"
    built+=("$name-py.wasm")
done
echo "build-python-plugins: ${built[*]}" >&2
