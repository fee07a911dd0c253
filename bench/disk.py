"""8. Cost of a stored job: bytes on disk per finished job with 1 KB of logs.

A server on a fresh data dir is started and stopped once (the empty store: schema, WAL
header), then started again on the same dir; K ``exec`` jobs each print 1,024 bytes and
finish. The data dir is measured live (database, WAL and blobs) and again after a graceful
stop, when SQLite has checkpointed the WAL into the database. Per job: (after - empty) / K.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from bench._config import Config
from bench._gaffer import Finishes, exec_spec, submit_many
from bench._load import channel
from bench._procs import Procs, emit
from bench._stats import summary
from gaffer.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

NAME = "disk"
LOG_BYTES = 1024


def one_kb_spec() -> job_pb2.JobSpec:
    """Prints 1,023 zeros and a newline."""
    return exec_spec("printf", f"%0{LOG_BYTES - 1}d\\n", "0")


def dir_size(path: Path) -> dict[str, int]:
    """Apparent bytes and allocated bytes of every file under ``path``."""
    apparent = allocated = 0
    files: dict[str, int] = {}
    for item in path.rglob("*"):
        if item.is_file():
            st = item.stat()
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files[str(item.relative_to(path))] = st.st_size
    return {"apparent": apparent, "allocated": allocated, "files": files}  # type: ignore[dict-item]


def run(cfg: Config, procs: Procs) -> dict[str, Any]:
    """Figures: disk_bytes_per_job (after checkpoint), disk_bytes_per_job_live (with WAL)."""
    runs: dict[str, list[float]] = {}
    details: list[dict[str, Any]] = []
    k = cfg.disk_jobs
    for _ in range(cfg.reps):
        data_dir = procs.temp_dir("disk")
        server, _ = procs.gaffer_server(data_dir)
        procs.stop(server, keep_dir=True)
        empty = dir_size(data_dir)
        server, address = procs.gaffer_server(data_dir)
        agent = procs.gaffer_agent(address, "bench-disk", cfg.exec_slots)
        out = procs.load("disk", address, str(k))
        procs.stop(agent)
        live = dir_size(data_dir)
        procs.stop(server, keep_dir=True)
        after = dir_size(data_dir)
        runs.setdefault("disk_bytes_per_job", []).append(
            (after["apparent"] - empty["apparent"]) / k
        )
        runs.setdefault("disk_bytes_per_job_live", []).append(
            (live["apparent"] - empty["apparent"]) / k
        )
        runs.setdefault("disk_allocated_bytes_per_job", []).append(
            (after["allocated"] - empty["allocated"]) / k
        )
        details.append({"empty": empty, "live": live, "after": after, "load": out})
    return {
        "figures": {key: summary(v) for key, v in runs.items()},
        "params": {"jobs": k, "log_bytes_per_job": LOG_BYTES},
        "details": details[-1:],
    }


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    async with channel(args.target) as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        finishes = Finishes(stub, args.jobs)
        finishes.start()
        ids = await submit_many(stub, one_kb_spec(), args.jobs, 64)
        if not await finishes.wait(300):
            raise SystemExit(f"only {len(finishes.finished)} of {args.jobs} jobs finished")
        failed = [i for i, s in finishes.states.items() if s != job_pb2.JOB_STATE_COMPLETED]
        if failed:
            raise SystemExit(f"{len(failed)} jobs failed, e.g. {failed[0]}")
        size = 0
        request = job_service_pb2.StreamLogsRequest(job_id=ids[0])
        async for frame in stub.StreamLogs(request):
            if frame.HasField("chunk"):
                size += len(frame.chunk.data)
        if size != LOG_BYTES:
            raise SystemExit(f"a job's log is {size} bytes, not {LOG_BYTES}")
        return {"jobs": len(ids)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.disk load")
    parser.add_argument("load", choices=["load"])
    parser.add_argument("target")
    parser.add_argument("jobs", type=int)
    emit(asyncio.run(_load(parser.parse_args())))


if __name__ == "__main__":
    main()
