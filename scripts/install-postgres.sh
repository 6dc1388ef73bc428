#!/usr/bin/env bash
# The PostgreSQL server the tests start (tests/support/postgres.py runs its own throwaway
# cluster on a free loopback port; nothing here starts or configures the system one).
# Idempotent and quiet: does nothing when a server (initdb) is already installed.
# Needs root (apt-get) on Debian or Ubuntu.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-postgres.sh: the PostgreSQL server is not installed; run this script as root (it uses apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
