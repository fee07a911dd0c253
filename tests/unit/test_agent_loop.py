"""The agent's loops against an in-process fake AgentService: claim, run, report, cancel, stop."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from gaffer.agent import AgentConfig, run_agent
from gaffer.v1 import agent_service_pb2 as pb
from gaffer.v1 import agent_service_pb2_grpc, job_pb2
from tests.helpers import wait_until_async

ENV = {"PATH": os.defpath, "LANG": "C.UTF-8"}


class FakeAgentService(agent_service_pb2_grpc.AgentServiceServicer):
    """Just enough of the server: a job queue, cancel orders, and a record of every write."""

    def __init__(self) -> None:
        self.registrations: list[pb.RegisterAgentRequest] = []
        self.queue: asyncio.Queue[pb.JobAssignment] = asyncio.Queue()
        self.statuses: list[pb.UpdateJobStatusRequest] = []
        self.logs: dict[tuple[str, int], dict[int, bytes]] = {}
        self.artifacts: dict[tuple[str, str], bytes] = {}
        self.completions: dict[str, pb.CompleteJobRequest] = {}
        self.cancel_orders: set[tuple[str, int]] = set()
        self.changed = asyncio.Event()
        self.forget_agents = False
        self.heartbeats: list[pb.HeartbeatRequest] = []

    def submit(self, job_id: str, spec: job_pb2.JobSpec, attempt: int = 1) -> None:
        job = job_pb2.Job(id=job_id, spec=spec, attempt=attempt)
        self.queue.put_nowait(pb.JobAssignment(job=job, attempt=attempt, lease_token=f"t-{job_id}"))

    def cancel(self, job_id: str, attempt: int = 1) -> None:
        self.cancel_orders.add((job_id, attempt))
        self.changed.set()

    def output(self, job_id: str, stream: int) -> bytes:
        chunks = self.logs.get((job_id, stream), {})
        data = b""
        for offset in sorted(chunks):
            assert offset == len(data)
            data += chunks[offset]
        return data

    def states(self, job_id: str) -> list[tuple[int, bool]]:
        return [(s.state, s.reject) for s in self.statuses if s.job_id == job_id]

    async def _check_agent(self, agent_id: str, context: grpc.aio.ServicerContext) -> None:
        if self.forget_agents and agent_id != f"agent-{len(self.registrations)}":
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown agent")

    async def RegisterAgent(self, request, context):  # type: ignore[no-untyped-def]
        self.registrations.append(request)
        interval = duration_pb2.Duration(seconds=1)
        return pb.RegisterAgentResponse(
            agent_id=f"agent-{len(self.registrations)}", heartbeat_interval=interval
        )

    async def ClaimJob(self, request, context):  # type: ignore[no-untyped-def]
        await self._check_agent(request.agent_id, context)
        try:
            first = await asyncio.wait_for(self.queue.get(), request.wait.ToTimedelta().seconds)
        except TimeoutError:
            return pb.ClaimJobResponse()
        return pb.ClaimJobResponse(assignments=[first])

    async def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        await self._check_agent(request.agent_id, context)
        self.heartbeats.append(request)
        deadline = asyncio.get_running_loop().time() + request.wait.ToTimedelta().total_seconds()
        canceling = {(r.job_id, r.attempt) for r in request.canceling}
        while True:
            self.changed.clear()
            orders = self.cancel_orders - canceling
            remaining = deadline - asyncio.get_running_loop().time()
            if orders or remaining <= 0:
                break
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                break
        cancel = [pb.CancelOrder(job_id=j, attempt=a, reason="asked") for j, a in orders]
        return pb.HeartbeatResponse(cancel=cancel)

    async def UpdateJobStatus(self, request, context):  # type: ignore[no-untyped-def]
        self.statuses.append(request)
        self.changed.set()
        return pb.UpdateJobStatusResponse()

    async def PushLogs(self, request_iterator, context):  # type: ignore[no-untyped-def]
        accepted = 0
        async for request in request_iterator:
            chunk = request.chunk
            self.logs.setdefault((request.job_id, chunk.stream), {})[chunk.offset] = chunk.data
            accepted += 1
        return pb.PushLogsResponse(accepted=accepted)

    async def UploadArtifact(self, request_iterator, context):  # type: ignore[no-untyped-def]
        header = None
        data = b""
        async for request in request_iterator:
            if request.HasField("header"):
                header = request.header
            else:
                data += request.chunk
        assert header is not None and header.size_bytes == len(data)
        assert header.digest == "sha256:" + hashlib.sha256(data).hexdigest()
        self.artifacts[(header.job_id, header.name)] = data
        return pb.UploadArtifactResponse()

    async def CompleteJob(self, request, context):  # type: ignore[no-untyped-def]
        self.completions[request.job_id] = request
        self.cancel_orders.discard((request.job_id, request.attempt))
        return pb.CompleteJobResponse(accepted=True)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAgentService, str]]:
    service = FakeAgentService()
    server = grpc.aio.server()
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield service, f"127.0.0.1:{port}"
    await server.stop(None)


class RunningAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.stop = asyncio.Event()
        self.registered = asyncio.Event()
        self.task = asyncio.create_task(
            run_agent(config, stop=self.stop, on_registered=lambda _: self.registered.set())
        )

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[object]:
    agents: list[RunningAgent] = []

    async def launch(server: str, **options: object) -> RunningAgent:
        config = AgentConfig(
            server=server,
            name="test-agent",
            work_dir=tmp_path / "work",
            claim_wait=1.0,
            base_env=ENV,
            **options,  # type: ignore[arg-type]
        )
        agent = RunningAgent(config)
        agents.append(agent)
        await asyncio.wait_for(agent.registered.wait(), 10)
        return agent

    yield launch
    for agent in agents:
        if not agent.task.done():
            await agent.close()


def exec_spec(*argv: str, **fields: object) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=argv), **fields)  # type: ignore[arg-type]


async def completion(
    service: FakeAgentService, job_id: str, timeout: float = 10.0
) -> pb.CompleteJobRequest:
    async def done() -> pb.CompleteJobRequest | None:
        return service.completions.get(job_id)

    return await wait_until_async(done, timeout=timeout, what=f"{job_id} completed")


async def test_runs_a_job_and_reports_everything(fake, start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    await start(address)
    script = (
        'cat in/data.txt; echo "$GAFFER_JOB_ID $GAFFER_ATTEMPT $X" >&2; '
        "cp in/data.txt out.txt; exit 3"
    )
    spec = exec_spec(
        "sh",
        "-c",
        script,
        inputs=[job_pb2.InputFile(path="in/data.txt", content=b"payload\n")],
        outputs=["*.txt"],
    )
    spec.exec.env["X"] = "from-spec"
    service.submit("job-a", spec, attempt=2)

    done = await completion(service, "job-a")

    assert (done.state, done.exit_code, done.message) == (
        job_pb2.JOB_STATE_FAILED,
        3,
        "exit code 3",
    )
    assert (done.attempt, done.lease_token) == (2, "t-job-a")
    assert service.states("job-a") == [
        (job_pb2.JOB_STATE_VALIDATING, False),
        (job_pb2.JOB_STATE_RUNNING, False),
        (job_pb2.JOB_STATE_UPLOADING, False),
    ]
    assert service.output("job-a", job_pb2.LOG_STREAM_STDOUT) == b"payload\n"
    assert service.output("job-a", job_pb2.LOG_STREAM_STDERR) == b"job-a 2 from-spec\n"
    assert service.artifacts == {("job-a", "out.txt"): b"payload\n"}
    assert not await asyncio.to_thread((tmp_path / "work" / "job-a-2").exists)


async def test_success_completes(fake, start) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    await start(address)
    service.submit("job-ok", exec_spec("true"))
    done = await completion(service, "job-ok")
    assert (done.state, done.exit_code) == (job_pb2.JOB_STATE_COMPLETED, 0)


async def test_invalid_spec_is_rejected(fake, start) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    await start(address)
    bad_input = exec_spec("true", inputs=[job_pb2.InputFile(path="../x", content=b"")])
    service.submit("job-bad", bad_input)

    async def rejected() -> bool:
        return (job_pb2.JOB_STATE_VALIDATING, True) in service.states("job-bad")

    await wait_until_async(rejected, what="reject")
    assert "job-bad" not in service.completions


async def test_cancel_kills_the_process_group_quickly(fake, start) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    await start(address)
    service.submit("job-c", exec_spec("sh", "-c", "echo $$; sleep 60 & wait"))

    async def pid() -> int | None:
        out = service.output("job-c", job_pb2.LOG_STREAM_STDOUT)
        return int(out) if out.endswith(b"\n") else None

    pgid = await wait_until_async(pid, what="job started")
    loop = asyncio.get_running_loop()
    asked = loop.time()
    service.cancel("job-c")
    done = await completion(service, "job-c")

    assert loop.time() - asked < 2.0
    assert (done.state, done.message) == (job_pb2.JOB_STATE_FAILED, "canceled")

    async def group_gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_until_async(group_gone, what="process group gone")
    assert any(
        ("job-c", 1) in {(r.job_id, r.attempt) for r in h.canceling} for h in service.heartbeats
    )


async def test_timeout_fails_the_attempt(fake, start) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    await start(address, kill_grace=0.5)
    service.submit(
        "job-t", exec_spec("sleep", "60", timeout=duration_pb2.Duration(nanos=300_000_000))
    )
    done = await completion(service, "job-t")
    assert (done.state, done.message, done.exit_code) == (
        job_pb2.JOB_STATE_FAILED,
        "timeout after 0.3s",
        143,
    )


async def test_slots_bound_concurrency(fake, start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    await start(address, slots=2)
    gate = tmp_path / "gate"
    for i in range(3):
        service.submit(
            f"job-{i}", exec_spec("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.01; done")
        )

    async def two_running() -> bool:
        running = {s.job_id for s in service.statuses if s.state == job_pb2.JOB_STATE_RUNNING}
        return len(running) == 2

    await wait_until_async(two_running, what="two attempts running")
    assert service.queue.qsize() == 1, "the third job waits for a free slot"
    await asyncio.to_thread(gate.touch)
    for i in range(3):
        assert (await completion(service, f"job-{i}")).state == job_pb2.JOB_STATE_COMPLETED


async def test_reregisters_when_the_server_forgot_it(fake, start) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    await start(address)
    service.registrations.append(pb.RegisterAgentRequest(name="someone-else"))
    service.forget_agents = True  # agent-1 is now unknown

    async def registered_again() -> bool:
        return len(service.registrations) >= 3

    await wait_until_async(registered_again, what="a second registration")
    service.submit("job-r", exec_spec("true"))
    assert (await completion(service, "job-r")).state == job_pb2.JOB_STATE_COMPLETED


async def test_graceful_stop_fails_what_outlives_the_grace(fake, start) -> None:  # type: ignore[no-untyped-def]
    service, address = fake
    agent = await start(address, stop_grace=0.2)
    service.submit("job-s", exec_spec("sleep", "60"))

    async def running() -> bool:
        return (job_pb2.JOB_STATE_RUNNING, False) in service.states("job-s")

    await wait_until_async(running, what="job running")
    await agent.close()

    done = service.completions["job-s"]
    assert (done.state, done.message) == (job_pb2.JOB_STATE_FAILED, "agent shutting down")
