"""A test rig: one restartable server, agents, raw stubs, and a marker on every job process.

Used as a context manager by the fault tests and the chaos runner alike; leaving it stops every
agent, kills every job process it marked (orphans of killed agents included) and the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.chaos.procs import (
    MARKER,
    Server,
    hard_kill,
    kill_marked,
    launch_agent,
    marked_pids,
    new_marker,
    stop_all,
)
from tests.e2e.conftest import CALL_TIMEOUT, Api
from tests.helpers import AgentProc

S = job_pb2.JobState
FINISHED = (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELED)
#: Short leases so that lapses happen within a test's time (flags the server takes).
FAST_LEASES = ("--lease-ttl", "2", "--heartbeat-interval", "0.5", "--sweep-interval", "0.5")


def finals(job: job_pb2.Job) -> list[job_pb2.JobStatus]:
    """The finished statuses of a job's history (exactly one once it is finished)."""
    return [s for s in job.history if s.state in FINISHED]


def claims(job: job_pb2.Job) -> list[job_pb2.JobStatus]:
    return [s for s in job.history if s.state == S.JOB_STATE_CLAIMED]


def status_time(status: job_pb2.JobStatus) -> float:
    return status.time.ToNanoseconds() / 1e9


class Rig:
    """Server, agents and stubs for one test; everything started here is stopped on exit."""

    def __init__(self, root: Path, *server_flags: str) -> None:
        self.root = root
        self.server = Server(root / "data", tuple(server_flags))
        self.marker = new_marker()
        self.agents: list[AgentProc] = []
        self._api: Api | None = None
        self._names = itertools.count(1)

    def __enter__(self) -> Rig:
        try:
            self.server.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            stop_all(self.agents)
            kill_marked(self.marker)
        finally:
            if self._api is not None:
                self._api.close()
                self._api = None
            self.server.stop()

    @property
    def api(self) -> Api:
        """Stubs on the server as it runs now (a restart gets a fresh channel)."""
        if self._api is None:
            self._api = Api.connect(self.server.address)
        return self._api

    def restart_server(self) -> None:
        """SIGKILL the server and start it again on the same port and data dir."""
        if self._api is not None:
            self._api.close()
            self._api = None
        self.server.restart()

    def agent(self, *extra: str, name: str = "") -> AgentProc:
        proc = launch_agent(self.server.address, name or f"agent-{next(self._names)}", *extra)
        self.agents.append(proc)
        return proc

    def kill_agent(self, proc: AgentProc) -> None:
        """SIGKILL: no shutdown, no release; its job processes live on as orphans."""
        hard_kill(proc)

    def spec(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **fields: Any
    ) -> job_pb2.JobSpec:
        """An exec spec whose processes carry this rig's marker."""
        executor = job_pb2.ExecExecutor(argv=list(argv), env={**(env or {}), MARKER: self.marker})
        return job_pb2.JobSpec(exec=executor, **fields)

    def submit(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **fields: Any
    ) -> job_pb2.Job:
        request = jpb.SubmitJobRequest(spec=self.spec(argv, env, **fields))
        return self.api.jobs.SubmitJob(request, timeout=CALL_TIMEOUT).job

    def get(self, job_id: str) -> job_pb2.Job:
        return self.api.get(job_id)

    def pids(self, job_id: str, attempt: int | None = None) -> list[int]:
        """Live processes of a job (of one attempt)."""
        env = {"GAFFER_JOB_ID": job_id}
        if attempt is not None:
            env["GAFFER_ATTEMPT"] = str(attempt)
        return marked_pids(self.marker, **env)

    def stdout(self, job_id: str, attempt: int = 0) -> bytes:
        """An attempt's stored stdout (0: the latest attempt), offsets checked."""
        out = b""
        for frame in self.api.logs(job_id, attempt=attempt, streams=[job_pb2.LOG_STREAM_STDOUT]):
            if frame.WhichOneof("frame") == "chunk":
                assert frame.chunk.offset == len(out), "a gap or an overlap in the stored log"
                out += frame.chunk.data
        return out
