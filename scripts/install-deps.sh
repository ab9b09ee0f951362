#!/usr/bin/env bash
# Install the system tools the tests use (nc), through apt, when they are missing;
# with --perf, also perf (for `make profile`).
set -euo pipefail
packages=()
command -v nc >/dev/null 2>&1 || packages+=(netcat-openbsd)
if [ "${1:-}" = "--perf" ]; then
    command -v perf >/dev/null 2>&1 || packages+=(linux-perf)
fi
[ ${#packages[@]} -eq 0 ] && exit 0
exec "$(dirname "$0")/apt-install.sh" install-deps "${packages[@]}"
