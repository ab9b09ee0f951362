#!/usr/bin/env bash
# Install the system tools the tests use (nc; openssl's s_client for the TLS tests; promtool,
# from Debian's prometheus package, for the metrics test; headless chromium for the admin
# page's test),
# through apt, when they are missing; with --perf, also perf (for `make profile`).
set -euo pipefail
packages=()
command -v nc >/dev/null 2>&1 || packages+=(netcat-openbsd)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [ "${1:-}" = "--perf" ]; then
    command -v perf >/dev/null 2>&1 || packages+=(linux-perf)
fi
[ ${#packages[@]} -eq 0 ] && exit 0
exec "$(dirname "$0")/apt-install.sh" install-deps "${packages[@]}"
