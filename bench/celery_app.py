"""The Celery peer: a no-op task on the Redis broker and result backend.

The worker and the load processes import this module; the queue comes from
``BENCH_CELERY_QUEUE`` (one per run, so runs never see each other's messages) and Redis from
``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "gaffer-bench")

app = Celery("gaffer_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> None:
    """Does nothing."""
