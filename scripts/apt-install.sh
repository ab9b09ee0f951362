#!/usr/bin/env bash
# scripts/apt-install.sh WHO PACKAGE...: install the Debian packages that are not installed
# yet (as root, through apt); WHO names the caller in messages.
set -euo pipefail
who=$1
shift
missing=()
for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "$who: missing ${missing[*]}; install them (apt-get install ${missing[*]}) and retry" >&2
    exit 1
fi
echo "$who: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
