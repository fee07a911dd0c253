"""The real agent (run_agent, in this process) against the real server, running real commands.

Most tests use the ``server`` fixture, a `gaffer server` subprocess. Tests that must control the
server itself (restart it on the same port, shorten its leases) start the real server in this
process with ``start_server``. What happened is read back from the server through the generated
stubs: the job's status history, its stored output and its artifacts.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from gaffer.agent import AgentConfig, run_agent
from gaffer.agent._attempt import Attempt
from gaffer.agent._session import Session
from gaffer.server import RunningServer, ServerConfig, start_server
from gaffer.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from tests.helpers import ServerProc, wait_until_async

apb = agent_service_pb2
jpb = job_service_pb2
S = job_pb2.JobState
STDOUT, STDERR = job_pb2.LOG_STREAM_STDOUT, job_pb2.LOG_STREAM_STDERR
CALL_TIMEOUT = 10.0
ACTIVE = {S.JOB_STATE_CLAIMED, S.JOB_STATE_VALIDATING, S.JOB_STATE_RUNNING, S.JOB_STATE_UPLOADING}

_names = itertools.count(1)


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


def exec_spec(*argv: str, **fields: Any) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=list(argv)), **fields)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


@dataclass
class Api:
    """The generated stubs on one aio channel, with a few shortcuts."""

    channel: grpc.aio.Channel
    jobs: job_service_pb2_grpc.JobServiceStub
    agents: agent_service_pb2_grpc.AgentServiceStub

    @classmethod
    def connect(cls, address: str) -> Api:
        channel = grpc.aio.insecure_channel(address)
        return cls(
            channel,
            job_service_pb2_grpc.JobServiceStub(channel),
            agent_service_pb2_grpc.AgentServiceStub(channel),
        )

    async def submit(self, spec: job_pb2.JobSpec) -> job_pb2.Job:
        request = jpb.SubmitJobRequest(spec=spec)
        response = await self.jobs.SubmitJob(request, timeout=CALL_TIMEOUT, wait_for_ready=True)
        job: job_pb2.Job = response.job
        return job

    async def get(self, job_id: str) -> job_pb2.Job:
        response = await self.jobs.GetJob(jpb.GetJobRequest(job_id=job_id), timeout=CALL_TIMEOUT)
        job: job_pb2.Job = response.job
        return job

    async def wait(self, job_id: str, timeout: float = 15.0) -> job_pb2.Job:
        """The job once finished; fails if it is not finished within ``timeout``."""
        request = jpb.WaitJobRequest(job_id=job_id, timeout=seconds(timeout))
        response = await self.jobs.WaitJob(request, timeout=timeout + CALL_TIMEOUT)
        assert response.finished, f"{job_id} is still {S.Name(response.job.state)}"
        job: job_pb2.Job = response.job
        return job

    async def state_is(self, job_id: str, state: int) -> job_pb2.Job | None:
        job = await self.get(job_id)
        return job if job.state == state else None

    async def cancel(self, job_id: str) -> job_pb2.Job:
        request = jpb.CancelJobRequest(job_id=job_id, reason="test")
        response = await self.jobs.CancelJob(request, timeout=CALL_TIMEOUT)
        job: job_pb2.Job = response.job
        return job

    async def output(self, job_id: str, attempt: int = 0) -> dict[int, bytes]:
        """A job's stored output per stream, checking the offsets run on with no gap."""
        out = {STDOUT: b"", STDERR: b""}
        request = jpb.StreamLogsRequest(job_id=job_id, attempt=attempt)
        async for frame in self.jobs.StreamLogs(request, timeout=CALL_TIMEOUT):
            if frame.WhichOneof("frame") == "chunk":
                chunk = frame.chunk
                assert chunk.offset == len(out[chunk.stream]), "gap or overlap in stored output"
                out[chunk.stream] += chunk.data
        return out

    async def first_line(self, job_id: str, attempt: int = 0) -> bytes:
        """The first line the job wrote to stdout, waiting for it."""

        async def line() -> bytes | None:
            if (await self.get(job_id)).attempt < max(attempt, 1):
                return None  # not claimed yet
            out = (await self.output(job_id, attempt))[STDOUT]
            return out.split(b"\n")[0] if b"\n" in out else None

        return await wait_until_async(line, what=f"a line from {job_id}")

    async def artifact(self, job_id: str, name: str) -> bytes:
        request = jpb.ReadArtifactRequest(job_id=job_id, name=name)
        data = b""
        async for piece in self.jobs.ReadArtifact(request, timeout=CALL_TIMEOUT):
            assert piece.offset == len(data)
            data += piece.data
        return data

    async def agent_names(self) -> set[str]:
        response = await self.agents.ListAgents(
            apb.ListAgentsRequest(), timeout=CALL_TIMEOUT, wait_for_ready=True
        )
        return {agent.name for agent in response.agents}


@dataclass
class Served:
    """The real server in this process; it can be stopped and started again on the same port."""

    data_dir: Path
    options: dict[str, Any]
    running: RunningServer | None = None
    port: int = 0

    async def start(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir or self.data_dir
        config = ServerConfig(
            listen=f"127.0.0.1:{self.port}",
            data_dir=self.data_dir,
            shutdown_grace=0.2,
            **self.options,
        )
        self.running = await start_server(config)
        self.port = int(self.running.address.rpartition(":")[2])

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.stop()
            self.running = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """Starts the real server in this process, with ServerConfig ``options``."""
    started: list[Served] = []

    async def start(**options: Any) -> Served:
        served = Served(tmp_path / f"data-{len(started)}", options)
        await served.start()
        started.append(served)
        return served

    yield start
    for served in started:
        await served.stop()


@dataclass
class RunningAgent:
    config: AgentConfig
    stop: asyncio.Event
    task: asyncio.Task[None]
    registrations: list[str]

    @property
    def id(self) -> str:
        return self.registrations[0]

    async def exit(self, timeout: float = 20.0) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout)


@pytest.fixture
async def launch_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RunningAgent]]]:
    """Runs the real agent in this process; every agent is stopped at teardown."""
    agents: list[RunningAgent] = []

    async def launch(address: str, **options: Any) -> RunningAgent:
        options.setdefault("name", f"agent-{next(_names)}")
        options.setdefault("work_dir", tmp_path / "work")
        options.setdefault("claim_wait", 1.0)
        config = AgentConfig(server=address, **options)
        registrations: list[str] = []
        registered = asyncio.Event()

        def on_registered(agent_id: str) -> None:
            registrations.append(agent_id)
            registered.set()

        stop = asyncio.Event()
        task = asyncio.create_task(run_agent(config, stop=stop, on_registered=on_registered))
        agent = RunningAgent(config, stop, task, registrations)
        agents.append(agent)
        waiter = asyncio.create_task(registered.wait())
        await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()
        assert registered.is_set(), "the agent did not register within 10 s"
        return agent

    yield launch
    for agent in agents:
        if not agent.task.done():
            await agent.exit()


@pytest.fixture
async def api(server: ServerProc) -> AsyncIterator[Api]:
    client = Api.connect(server.address)
    yield client
    await client.channel.close()


def history(job: job_pb2.Job) -> list[tuple[int, int]]:
    return [(status.state, status.attempt) for status in job.history]


def whole_run_times(job: job_pb2.Job) -> list[int]:
    """The times (ns) of the history of a job that ran once and completed, which must hold
    every state in order."""
    assert [s for s, _ in history(job)] == [
        S.JOB_STATE_PENDING,
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_VALIDATING,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_COMPLETED,
    ]
    times = [status.time.ToNanoseconds() for status in job.history]
    assert times == sorted(times)
    return times


async def test_full_run_reports_states_logs_artifacts_and_removes_its_work_dir(
    server: ServerProc, api: Api, launch_agent: Any, tmp_path: Path
) -> None:
    agent = await launch_agent(server.address)
    payload = bytes(range(256)) * 40 + b"no newline at the end"
    big_size = 1536 * 1024 + 7  # uploaded in more than one chunk
    script = (
        'cat in/data.bin; printf "job %s attempt %s %s\\n" "$GAFFER_JOB_ID" "$GAFFER_ATTEMPT" "$X" '
        '>&2; pwd >&2; mkdir out; cp in/data.bin out/copy.bin; yes gaffer | head -c "$BIG" '
        "> out/big.txt; echo not uploaded > skipped.log"
    )
    spec = exec_spec(
        "sh",
        "-c",
        script,
        inputs=[job_pb2.InputFile(path="in/data.bin", content=payload)],
        outputs=["out/*"],
    )
    spec.exec.env.update({"X": "from-spec", "BIG": str(big_size)})

    submitted = await api.submit(spec)
    job = await api.wait(submitted.id)

    assert (job.state, job.exit_code, job.attempt) == (S.JOB_STATE_COMPLETED, 0, 1)
    assert history(job) == [
        (S.JOB_STATE_PENDING, 0),
        (S.JOB_STATE_CLAIMED, 1),
        (S.JOB_STATE_VALIDATING, 1),
        (S.JOB_STATE_RUNNING, 1),
        (S.JOB_STATE_UPLOADING, 1),
        (S.JOB_STATE_COMPLETED, 1),
    ]
    assert {status.agent_id for status in job.history[1:]} == {agent.id}

    output = await api.output(job.id)
    assert output[STDOUT] == payload
    first, workdir, rest = output[STDERR].split(b"\n", 2)
    assert first == f"job {job.id} attempt 1 from-spec".encode()
    assert rest == b""

    big = (b"gaffer\n" * (big_size // 7 + 1))[:big_size]
    response = await api.jobs.ListArtifacts(
        jpb.ListArtifactsRequest(job_id=job.id), timeout=CALL_TIMEOUT
    )
    listed = {a.name: (a.digest, a.size_bytes, a.attempt) for a in response.artifacts}
    assert listed == {
        "out/copy.bin": ("sha256:" + hashlib.sha256(payload).hexdigest(), len(payload), 1),
        "out/big.txt": ("sha256:" + hashlib.sha256(big).hexdigest(), big_size, 1),
    }
    assert await api.artifact(job.id, "out/copy.bin") == payload
    assert await api.artifact(job.id, "out/big.txt") == big

    # The attempt ran in a fresh directory under work_dir, removed once it finished.
    work = Path(workdir.decode())
    assert work.parent == tmp_path / "work"

    async def removed() -> bool:
        return not await asyncio.to_thread(work.exists)

    await wait_until_async(removed, timeout=5, what="the work dir removed")


async def test_non_zero_exit_fails_with_its_exit_code(
    server: ServerProc, api: Api, launch_agent: Any
) -> None:
    await launch_agent(server.address)
    job = await api.wait((await api.submit(exec_spec("sh", "-c", "echo bye; exit 3"))).id)
    assert (job.state, job.exit_code, job.message) == (S.JOB_STATE_FAILED, 3, "exit code 3")
    assert [s for s, _ in history(job)][-2:] == [S.JOB_STATE_RUNNING, S.JOB_STATE_FAILED]
    assert (await api.output(job.id))[STDOUT] == b"bye\n"


@pytest.mark.parametrize("seconds", [0, 0.3])
async def test_short_and_long_runs_keep_the_whole_history(
    server: ServerProc, api: Api, launch_agent: Any, seconds: float
) -> None:
    """VALIDATING and RUNNING are reported together once the process is up (with the outcome
    when it is done by then); a longer run is seen RUNNING while it runs. Either way the
    history is whole and in order."""
    await launch_agent(server.address)
    job = await api.submit(exec_spec("sleep", str(seconds)))
    if seconds:
        await wait_until_async(
            lambda: api.state_is(job.id, S.JOB_STATE_RUNNING), timeout=10, what="RUNNING"
        )
    times = whole_run_times(await api.wait(job.id))
    ran = (times[4] - times[3]) / 1e9
    assert seconds <= ran < seconds + 5


async def _claim_as_new_agent(api: Api, name: str) -> apb.JobAssignment:
    """The one job queued, claimed by an agent registered here (no agent process)."""
    register = apb.RegisterAgentRequest(name=name, capacity=apb.Capacity(slots=1))
    agent_id = (await api.agents.RegisterAgent(register, timeout=CALL_TIMEOUT)).agent_id
    claim = apb.ClaimJobRequest(agent_id=agent_id, max_jobs=1)
    (assignment,) = (await api.agents.ClaimJob(claim, timeout=CALL_TIMEOUT)).assignments
    return assignment


async def test_a_refused_running_report_ends_the_run_at_once(
    server: ServerProc, api: Api, tmp_path: Path
) -> None:
    """An attempt that is not current (here, a wrong lease token) has its RUNNING report,
    sent once the process is up, refused: the process is killed then, not left to run."""
    await api.submit(exec_spec("sleep", "60"))
    assignment = await _claim_as_new_agent(api, "stale")
    assignment.lease_token = "not-the-token"
    attempt = Attempt(
        api.agents, AgentConfig(server=server.address, name="stale"), assignment, tmp_path
    )
    started = time.monotonic()
    await asyncio.wait_for(attempt.run(), timeout=20)
    assert time.monotonic() - started < 10
    assert attempt.stopping


class _HeldStatusReports:
    """The agent's stub, sending no UpdateJobStatus until ``release`` is set; notes how the
    server answered each one it then sent."""

    def __init__(self, stub: agent_service_pb2_grpc.AgentServiceStub) -> None:
        self._stub = stub
        self.release = asyncio.Event()
        self.holding = asyncio.Event()  # a report is being held
        self.answers: list[grpc.StatusCode] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def UpdateJobStatus(self, request: Any, **kwargs: Any) -> Any:
        self.holding.set()
        await self.release.wait()
        try:
            response = await self._stub.UpdateJobStatus(request, **kwargs)
        except grpc.aio.AioRpcError as error:
            self.answers.append(error.code())
            raise
        self.answers.append(grpc.StatusCode.OK)
        return response


def _attempt_with_held_reports(
    api: Api, server: ServerProc, assignment: apb.JobAssignment, work_root: Path
) -> tuple[_HeldStatusReports, Attempt]:
    """An attempt whose status reports are unary calls, held until ``release`` is set."""
    stub = _HeldStatusReports(api.agents)
    session = Session(stub)  # type: ignore[arg-type]
    session.unary = True
    config = AgentConfig(server=server.address, name="held")
    return stub, Attempt(stub, config, assignment, work_root, session=session)  # type: ignore[arg-type]


async def test_an_exec_outcome_goes_without_waiting_for_the_running_report(
    server: ServerProc, api: Api, tmp_path: Path
) -> None:
    """A process that ends at once sends its outcome without waiting for the answer to the
    RUNNING report sent as it started. Here that report reaches the server only after the
    job is finished (as a retried or overtaken one could): the outcome, which carries the
    times of VALIDATING and RUNNING, made the history whole, and the report's refusal then
    ends nothing."""
    job = await api.submit(exec_spec("true"))
    assignment = await _claim_as_new_agent(api, "held")
    stub, attempt = _attempt_with_held_reports(api, server, assignment, tmp_path)
    run = asyncio.create_task(attempt.run())
    try:
        await wait_until_async(
            lambda: api.state_is(job.id, S.JOB_STATE_COMPLETED), timeout=10, what="COMPLETED"
        )
    finally:
        stub.release.set()
    await asyncio.wait_for(run, timeout=10)
    assert stub.answers == [grpc.StatusCode.FAILED_PRECONDITION]
    assert not attempt.stopping
    whole_run_times(await api.get(job.id))


async def test_a_cancelled_attempt_does_not_wait_for_its_running_report(
    server: ServerProc, api: Api, tmp_path: Path
) -> None:
    """The agent's stop cancels its attempts. One whose RUNNING report cannot get through (the
    server unreachable, say: the report retries) ends at once, its process killed, instead of
    holding the stop until the report is answered."""
    job = await api.submit(exec_spec("sh", "-c", "echo $$; exec sleep 60"))
    assignment = await _claim_as_new_agent(api, "held")
    stub, attempt = _attempt_with_held_reports(api, server, assignment, tmp_path)
    run = asyncio.create_task(attempt.run())
    await asyncio.wait_for(stub.holding.wait(), timeout=10)  # the RUNNING report
    pgid = int(await api.first_line(job.id))
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, timeout=5)
    assert not await asyncio.to_thread(group_members, pgid)
    assert stub.answers == []  # never sent


@pytest.mark.parametrize("field", ["outputs", "inputs"])
async def test_submit_refuses_paths_every_agent_rejects(api: Api, field: str) -> None:
    spec = exec_spec("true")
    if field == "outputs":
        spec.outputs.append(".")
    else:
        spec.inputs.append(job_pb2.InputFile(path=".", content=b""))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.submit(spec)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_kills_the_process_group_within_two_seconds(
    server: ServerProc, api: Api, launch_agent: Any
) -> None:
    await launch_agent(server.address)
    job = await api.submit(exec_spec("sh", "-c", "echo $$; sleep 60 & wait"))

    async def group() -> list[int] | None:
        out = (await api.output(job.id))[STDOUT]
        if not out.endswith(b"\n"):
            return None
        members = await asyncio.to_thread(group_members, int(out))
        return members if len(members) == 2 else None  # the shell and its sleep

    members = await wait_until_async(group, what="the job's shell and sleep running")
    pgid = min(members)

    started = time.monotonic()
    await api.cancel(job.id)
    job = await api.wait(job.id, timeout=5)
    elapsed = time.monotonic() - started

    assert job.state == S.JOB_STATE_CANCELED
    assert elapsed < 2.0, f"cancel took {elapsed:.2f}s"
    assert job.canceled_by.startswith("client:")

    async def gone() -> bool:
        return not await asyncio.to_thread(group_members, pgid)

    await wait_until_async(gone, timeout=2, what="the process group gone")


async def test_timeout_fails_the_job_and_kills_it(
    server: ServerProc, api: Api, launch_agent: Any
) -> None:
    await launch_agent(server.address, kill_grace=0.5)
    spec = exec_spec("sh", "-c", "echo $$; exec sleep 60", timeout=seconds(0.5))
    started = time.monotonic()
    job = await api.wait((await api.submit(spec)).id, timeout=10)
    elapsed = time.monotonic() - started

    assert job.state == S.JOB_STATE_FAILED
    assert "timeout" in job.message
    assert job.exit_code == 143, "TERM ended it"
    assert elapsed < 5.0
    assert S.JOB_STATE_RUNNING in [s for s, _ in history(job)]
    pgid = int((await api.output(job.id))[STDOUT])
    assert not await asyncio.to_thread(group_members, pgid)


async def test_slots_bound_how_many_jobs_run_at_once(
    server: ServerProc, api: Api, launch_agent: Any, tmp_path: Path
) -> None:
    await launch_agent(server.address, slots=2)
    events = tmp_path / "events"
    script = (
        f'echo "start $N" >> {events}; '
        f'while [ ! -e {tmp_path}/gate-$N ]; do sleep 0.01; done; echo "end $N" >> {events}'
    )
    ids = []
    for n in range(4):
        spec = exec_spec("sh", "-c", script)
        spec.exec.env["N"] = str(n)
        ids.append((await api.submit(spec)).id)

    def started() -> list[int]:
        if not events.exists():
            return []
        return [int(line.split()[1]) for line in events.read_text().split("\n") if "start" in line]

    async def started_exactly(count: int) -> list[int] | None:
        numbers = await asyncio.to_thread(started)
        assert len(numbers) <= count, f"{len(numbers)} jobs started, expected {count}"
        return numbers if len(numbers) == count else None

    released: list[int] = []
    for wanted in (2, 3, 4):
        running = await wait_until_async(
            functools.partial(started_exactly, wanted), what=f"{wanted} jobs started"
        )
        jobs = [await api.get(job_id) for job_id in ids]
        active = [i for i, job in enumerate(jobs) if job.state in ACTIVE]
        assert len(active) == 2, f"{len(active)} jobs hold a slot"
        pending = [i for i, job in enumerate(jobs) if job.state == S.JOB_STATE_PENDING]
        assert len(pending) == 4 - wanted, "a job beyond the two slots was claimed"
        # Let the oldest running job finish; the freed slot takes the next one.
        n = next(n for n in running if n not in released)
        released.append(n)
        await asyncio.to_thread((tmp_path / f"gate-{n}").touch)
        assert (await api.wait(ids[n])).state == S.JOB_STATE_COMPLETED
    for n in range(4):
        await asyncio.to_thread((tmp_path / f"gate-{n}").touch)
    finished = [await api.wait(job_id) for job_id in ids]
    assert all(job.state == S.JOB_STATE_COMPLETED for job in finished)

    # The server's clock agrees: never more than two jobs RUNNING at once, and two did overlap.
    changes = []
    for job in finished:
        for status in job.history:
            if status.state == S.JOB_STATE_RUNNING:
                changes.append((status.time.ToNanoseconds(), 1))
            elif status.state == S.JOB_STATE_COMPLETED:
                changes.append((status.time.ToNanoseconds(), -1))
    level, peak = 0, 0
    for _, step in sorted(changes):  # at a tie, a finish (-1) sorts before a start
        level += step
        peak = max(peak, level)
    assert peak == 2
    # And so do the jobs themselves, in the order they wrote their lines.
    level, peak = 0, 0
    for line in events.read_text().split("\n")[:-1]:
        level += 1 if line.startswith("start") else -1
        peak = max(peak, level)
    assert peak == 2


async def test_registers_again_after_the_server_restarts_on_a_fresh_store(
    serve: Any, launch_agent: Any, tmp_path: Path
) -> None:
    served = await serve()
    agent = await launch_agent(served.address)
    client = Api.connect(served.address)
    try:
        job = await client.wait((await client.submit(exec_spec("true"))).id)
        assert job.state == S.JOB_STATE_COMPLETED

        await served.stop()
        await served.start(tmp_path / "fresh-data")  # same port, empty store: agent unknown

        async def known() -> bool:
            return agent.config.name in await client.agent_names()

        await wait_until_async(known, timeout=15, what="the agent registered again")
        job = await client.wait((await client.submit(exec_spec("echo", "again"))).id)
        assert job.state == S.JOB_STATE_COMPLETED
        assert job.agent_id != agent.id, "the fresh store gave the agent a new id"
        assert (await client.output(job.id))[STDOUT] == b"again\n"
        assert len(agent.registrations) == 1, "on_registered reports the first registration"
        assert not agent.task.done()
    finally:
        await client.channel.close()


async def test_graceful_stop_lets_jobs_finish_then_hands_the_rest_back_and_exits(
    server: ServerProc, api: Api, launch_agent: Any, tmp_path: Path
) -> None:
    agent = await launch_agent(server.address, slots=2, stop_grace=1.0)
    gate = tmp_path / "gate"
    quick = await api.submit(
        exec_spec("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.01; done; echo done")
    )
    slow = await api.submit(exec_spec("sh", "-c", "echo $$; exec sleep 60"))
    for job in (quick, slow):
        running = functools.partial(api.state_is, job.id, S.JOB_STATE_RUNNING)
        await wait_until_async(running, what=f"{job.id} running")
    later = await api.submit(exec_spec("true"))  # no free slot: it stays PENDING

    pgid = int(await api.first_line(slow.id))
    started = time.monotonic()
    agent.stop.set()
    await asyncio.to_thread(gate.touch)  # the quick job finishes within the grace
    await asyncio.wait_for(agent.task, 15)
    elapsed = time.monotonic() - started

    assert (await api.wait(quick.id, timeout=1)).state == S.JOB_STATE_COMPLETED
    # The job that outlived the grace was killed and handed back: queued again at once.
    slow_job = await api.get(slow.id)
    assert (slow_job.state, slow_job.attempt, slow_job.agent_id) == (S.JOB_STATE_PENDING, 1, "")
    assert [s for s, _ in history(slow_job)][-2:] == [S.JOB_STATE_RUNNING, S.JOB_STATE_PENDING]
    assert slow_job.history[-1].message.endswith("agent shutting down")
    assert not await asyncio.to_thread(group_members, pgid)
    assert elapsed < 1.0 + agent.config.cancel_grace + 2.0
    later_job = await api.get(later.id)
    assert (later_job.state, later_job.attempt) == (S.JOB_STATE_PENDING, 0), "claimed when stopping"


@dataclass
class Usurper:
    """A second agent driven through the stubs, to take over a lapsed attempt."""

    api: Api
    agent_id: str

    async def claim(self) -> apb.JobAssignment:
        request = apb.ClaimJobRequest(agent_id=self.agent_id, wait=seconds(5))
        response = await self.api.agents.ClaimJob(request, timeout=CALL_TIMEOUT)
        (assignment,) = response.assignments
        return assignment

    async def complete(self, a: apb.JobAssignment) -> apb.CompleteJobResponse:
        request = apb.CompleteJobRequest(
            job_id=a.job.id,
            attempt=a.attempt,
            lease_token=a.lease_token,
            state=S.JOB_STATE_COMPLETED,
            exit_code=0,
        )
        response: apb.CompleteJobResponse = await self.api.agents.CompleteJob(
            request, timeout=CALL_TIMEOUT
        )
        return response


@dataclass
class Takeover:
    """A job whose attempt 1 still runs on ``agent`` while ``usurper`` holds attempt 2."""

    api: Api
    agent: RunningAgent
    job: job_pb2.Job
    usurper: Usurper
    assignment: apb.JobAssignment
    pid: int
    workdir: Path


async def lapse_and_take_over(serve: Any, launch_agent: Any, script: str) -> Takeover:
    """Runs ``script`` on an agent whose lease then lapses; a second agent claims attempt 2.

    The server's leases are short and its heartbeat interval long, so the running attempt's
    lease lapses while the agent still runs it and has not heard it was lost. ``script`` must
    first print "before $$ $PWD".
    """
    served = await serve(lease_ttl=1.5, heartbeat_interval=30.0, sweep_interval=0.1)
    agent = await launch_agent(served.address, slots=1, stop_grace=0.2)
    api = Api.connect(served.address)
    spec = exec_spec("sh", "-c", script, retry_policy=job_pb2.RetryPolicy(max_attempts=2))
    job = await api.submit(spec)
    _, pid, workdir = (await api.first_line(job.id, 1)).split()

    async def requeued() -> bool:
        current = await api.get(job.id)
        return current.state == S.JOB_STATE_PENDING and current.attempt == 1

    await wait_until_async(requeued, what="attempt 1's lease lapsed")
    registered = await api.agents.RegisterAgent(
        apb.RegisterAgentRequest(name="usurper"), timeout=CALL_TIMEOUT
    )
    usurper = Usurper(api, registered.agent_id)
    assignment = await usurper.claim()
    assert (assignment.job.id, assignment.attempt) == (job.id, 2)
    return Takeover(api, agent, job, usurper, assignment, int(pid), Path(workdir.decode()))


async def test_fenced_attempt_is_dropped_and_changes_nothing(
    serve: Any, launch_agent: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    script = f'echo before $$ "$PWD"; while [ ! -e {gate} ]; do sleep 0.01; done; echo after'
    takeover = await lapse_and_take_over(serve, launch_agent, script)
    api, job, usurper = takeover.api, takeover.job, takeover.usurper
    pid, workdir = takeover.pid, takeover.workdir
    try:
        await asyncio.to_thread(gate.touch)  # attempt 1 writes more, exits 0 and tries to finish

        async def dropped() -> bool:
            return not await asyncio.to_thread(workdir.exists)

        await wait_until_async(dropped, what="attempt 1 ended on the agent")
        current = await api.get(job.id)
        assert (current.state, current.attempt, current.agent_id) == (
            S.JOB_STATE_CLAIMED,
            2,
            usurper.agent_id,
        ), "the stale attempt changed the job"
        requeue = max(i for i, s in enumerate(current.history) if s.state == S.JOB_STATE_PENDING)
        assert all(s.attempt == 2 for s in current.history[requeue + 1 :])
        output = await api.output(job.id, 1)
        assert output[STDOUT] == f"before {pid} {workdir}\n".encode(), "'after' was refused"
        assert not await asyncio.to_thread(group_members, pid)

        # The successor finishes the job; the agent, its slot free again, runs the next one.
        assert (await usurper.complete(takeover.assignment)).accepted
        assert (await api.wait(job.id)).state == S.JOB_STATE_COMPLETED
        following = await api.wait((await api.submit(exec_spec("true"))).id)
        assert (following.state, following.agent_id) == (S.JOB_STATE_COMPLETED, takeover.agent.id)
    finally:
        await api.channel.close()


async def test_fenced_attempt_process_is_killed_promptly(
    serve: Any, launch_agent: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    script = (
        f'echo before $$ "$PWD"; while [ ! -e {gate} ]; do sleep 0.01; done; '
        "echo after; exec sleep 60"
    )
    takeover = await lapse_and_take_over(serve, launch_agent, script)
    pid = takeover.pid
    try:
        await asyncio.to_thread(gate.touch)  # its "after" is refused: the attempt is not current

        async def gone() -> bool:
            return not await asyncio.to_thread(group_members, pid)

        await wait_until_async(gone, timeout=3, what="the stale attempt's process killed")
    finally:
        await takeover.api.channel.close()
