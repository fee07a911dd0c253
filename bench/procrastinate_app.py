"""The procrastinate peer of ``bench.pg``: one app and a no-op task.

The database comes from ``BENCH_PROCRASTINATE_DSN`` (a libpq conninfo or URL).
"""

from __future__ import annotations

import os

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get("BENCH_PROCRASTINATE_DSN", "postgresql://postgres@127.0.0.1/")
    )
)


@app.task(name="noop")
async def noop() -> None:
    """Does nothing, like ``gaffer.noop``."""
