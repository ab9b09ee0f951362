#!/usr/bin/env bash
# Install the system tools the tests use (nc), through apt, when they are missing.
set -euo pipefail
command -v nc >/dev/null 2>&1 && exit 0
exec "$(dirname "$0")/apt-install.sh" install-deps netcat-openbsd
