"""A test rig: a restartable server (or replicas on PostgreSQL), agents, raw stubs, and a marker
on every job process.

Used as a context manager by the fault tests and the chaos runner alike; leaving it stops every
agent, kills every job process it marked (orphans of killed agents included) and the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from gaffer.client._target import channel_target
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
    """Server(s), agents and stubs for one test; everything started here is stopped on exit.

    With ``database_url`` the servers are replicas on that PostgreSQL database (one shared data
    dir for artifact bytes); ``replicas`` of them are started, and each agent is given every
    address, its own replica first, so the agents spread over the replicas and move to another
    when theirs dies.
    """

    def __init__(
        self, root: Path, *server_flags: str, database_url: str = "", replicas: int = 1
    ) -> None:
        if replicas > 1 and not database_url:
            raise ValueError("replicas share a PostgreSQL database: give database_url")
        self.root = root
        self.database_url = database_url
        flags = (*server_flags, *(("--database-url", database_url) if database_url else ()))
        self.servers = [Server(root / "data", flags) for _ in range(replicas)]
        self.server = self.servers[0]
        self.marker = new_marker()
        self.agents: list[AgentProc] = []
        self._api: Api | None = None
        self._names = itertools.count(1)
        self._placed = itertools.count()

    def __enter__(self) -> Rig:
        try:
            for server in self.servers:
                server.start()
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
            for server in self.servers:
                server.stop()

    @property
    def address(self) -> str:
        """Every server's address, comma-separated (what clients and agents are given)."""
        return ",".join(server.address for server in self.servers)

    @property
    def api(self) -> Api:
        """Stubs on the server(s) as they run now (a restart gets a fresh channel)."""
        if self._api is None:
            self._api = Api.connect(channel_target(self.address))
        return self._api

    def restart_server(self, index: int = 0) -> None:
        """SIGKILL a server and start it again on the same port and data dir."""
        if self._api is not None:
            self._api.close()
            self._api = None
        self.servers[index].restart()

    def agent(self, *extra: str, name: str = "") -> AgentProc:
        first = next(self._placed) % len(self.servers)
        ordered = self.servers[first:] + self.servers[:first]
        address = ",".join(server.address for server in ordered)
        proc = launch_agent(address, name or f"agent-{next(self._names)}", *extra)
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
