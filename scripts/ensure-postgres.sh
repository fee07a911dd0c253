#!/usr/bin/env bash
# Starts the machine's PostgreSQL cluster when it is not accepting connections, and waits for it.
# The tests create (and drop) their own throwaway databases on it.
set -euo pipefail
HOST=${PGHOST:-127.0.0.1}
PORT=${PGPORT:-5432}

ready() { pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; }

if ready; then
    exit 0
fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -1)
    echo "starting PostgreSQL $version" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
for _ in $(seq 60); do
    ready && exit 0
    sleep 0.5
done
echo "PostgreSQL is not reachable on $HOST:$PORT" >&2
exit 1
