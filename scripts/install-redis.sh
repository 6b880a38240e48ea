#!/usr/bin/env bash
# redis-server for the prediction cache's tests (tests/test_cache.py start it on a loopback port).
# Idempotent: does nothing when redis-server is on PATH. Installs the Debian package as root (or
# through sudo); where neither works it says why and exits 0, and the Redis tests skip with that reason.
set -uo pipefail

say() { echo "install-redis: $*" >&2; }

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    run=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    run=(sudo -n)
else
    say "redis-server is missing and this user cannot install packages (not root, no sudo): the Redis tests will skip"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "redis-server is missing and there is no apt-get here: install it with this system's package manager"
    exit 0
fi
say "installing redis-server (Debian package)"
if ! { "${run[@]}" apt-get install -y -qq redis-server >/dev/null 2>&1 \
        || { "${run[@]}" apt-get update -qq >/dev/null 2>&1 && "${run[@]}" apt-get install -y -qq redis-server >/dev/null 2>&1; }; }; then
    say "apt-get could not install redis-server: the Redis tests will skip"
    exit 0
fi
# Debian starts the packaged service; the tests run their own servers on free ports.
"${run[@]}" service redis-server stop >/dev/null 2>&1 || true
say "$(redis-server --version | cut -d' ' -f1-3)"
