#!/usr/bin/env bash
# Starts a Redis on 127.0.0.1:6379 when none answers there (the bench's Celery peer uses it as
# broker and result backend), and waits for it. It keeps nothing on disk.
set -euo pipefail
PORT=${REDIS_PORT:-6379}

ready() { redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; }

if ready; then
    exit 0
fi
echo "starting redis-server on 127.0.0.1:$PORT" >&2
redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no --daemonize yes >/dev/null
for _ in $(seq 60); do
    ready && exit 0
    sleep 0.5
done
echo "Redis is not reachable on 127.0.0.1:$PORT" >&2
exit 1
