"""AgentService.Session as an agent in any language would drive it: claims and reports as
requests on one stream of a real server, each answered as its own call would be; and the
Python agent's side of it, whose requests keep their calls' deadlines.
"""

from __future__ import annotations

import queue
import signal
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gaffer.agent._session import Session
from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import agent_service_pb2_grpc, job_pb2
from tests.e2e.conftest import Api, HandAgent, duration
from tests.helpers import METRICS, AgentProc, ServerProc, scrape, wait_until_async

S = job_pb2.JobState
OK = grpc.StatusCode.OK.value[0]
STREAM_TIMEOUT = 30.0


class Stream:
    """One Session stream: requests go in as the test sends them, answers come out in order
    of arrival."""

    def __init__(self, api: Api) -> None:
        self._requests: queue.Queue[apb.SessionRequest | None] = queue.Queue()
        self.call = api.agents.Session(iter(self._requests.get, None), timeout=STREAM_TIMEOUT)
        self._answers: Iterator[apb.SessionResponse] = iter(self.call)

    def send(self, request_id: int = 0, **call: Any) -> None:
        self._requests.put(apb.SessionRequest(id=request_id, **call))

    def answer(self) -> apb.SessionResponse:
        return next(self._answers)

    def close(self) -> None:
        self._requests.put(None)


@pytest.fixture
def stream(api: Api) -> Iterator[Stream]:
    opened = Stream(api)
    yield opened
    opened.close()
    opened.call.cancel()


def claim(agent: HandAgent, wait: float, max_jobs: int = 1) -> apb.ClaimJobRequest:
    return apb.ClaimJobRequest(agent_id=agent.id, max_jobs=max_jobs, wait=duration(wait))


def fenced(assignment: apb.JobAssignment) -> dict[str, Any]:
    return {
        "job_id": assignment.job.id,
        "attempt": assignment.attempt,
        "lease_token": assignment.lease_token,
    }


def test_a_job_claimed_run_and_finished_over_one_stream(api: Api, stream: Stream) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue)
    stream.send(1, claim=claim(agent, 5))
    claimed = stream.answer()
    assert (claimed.id, claimed.code) == (1, OK)
    [assignment] = claimed.claim.assignments
    assert (assignment.job.id, assignment.attempt) == (job.id, 1)

    running = apb.UpdateJobStatusRequest(state=S.JOB_STATE_RUNNING, **fenced(assignment))
    stream.send(2, update_status=running)
    updated = stream.answer()
    assert (updated.id, updated.code, updated.update_status.job.state) == (
        2,
        OK,
        S.JOB_STATE_RUNNING,
    )

    outcome = apb.CompleteJobRequest(state=S.JOB_STATE_COMPLETED, exit_code=0, **fenced(assignment))
    stream.send(3, complete=apb.CompleteJobsRequest(outcomes=[outcome]))
    completed = stream.answer()
    assert (completed.id, completed.code) == (3, OK)
    [result] = completed.complete.results
    assert result.code == OK and result.response.accepted

    stored = api.get(job.id)
    assert stored.state == S.JOB_STATE_COMPLETED
    assert [s.state for s in stored.history] == [
        S.JOB_STATE_PENDING,
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_COMPLETED,
    ]


def test_answers_come_when_ready_and_a_refusal_does_not_end_the_stream(
    api: Api, stream: Stream
) -> None:
    agent = api.agent()
    stream.send(1, claim=claim(agent, 20))  # nothing queued: it waits
    stale = apb.UpdateJobStatusRequest(
        job_id="j_missing", attempt=1, lease_token="t", state=S.JOB_STATE_RUNNING
    )
    stream.send(2, update_status=stale)
    refused = stream.answer()
    assert refused.id == 2, "the waiting claim held back the answer to a later request"
    assert refused.code == grpc.StatusCode.NOT_FOUND.value[0], refused
    assert "j_missing" in refused.message
    assert refused.WhichOneof("answer") is None

    job = api.submit(queue=agent.queue)
    handed = stream.answer()
    assert (handed.id, handed.code) == (1, OK)
    assert [a.job.id for a in handed.claim.assignments] == [job.id]


def test_a_request_without_a_call_is_refused_with_the_field_named(api: Api, stream: Stream) -> None:
    stream.send(9)
    refused = stream.answer()
    assert (refused.id, refused.code) == (9, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert refused.reason and "call" in refused.message
    agent = api.agent()
    stream.send(10, claim=claim(agent, 0))
    after = stream.answer()
    assert (after.id, after.code, list(after.claim.assignments)) == (10, OK, [])


def test_a_cancelled_claim_hands_out_nothing(api: Api, stream: Stream) -> None:
    agent = api.agent()
    stream.send(1, claim=claim(agent, 20))
    stream.send(cancel=1)
    cancelled = stream.answer()
    assert (cancelled.id, cancelled.code) == (1, grpc.StatusCode.CANCELLED.value[0])

    job = api.submit(queue=agent.queue)
    stream.send(2, claim=claim(agent, 5))
    handed = stream.answer()
    assert handed.id == 2
    assert [(a.job.id, a.attempt) for a in handed.claim.assignments] == [(job.id, 1)]


def test_shutdown_answers_a_waiting_claim_and_ends_the_stream_at_once(tmp_path: Path) -> None:
    grace = 5.0  # the server's default for calls under way at shutdown
    server = ServerProc.launch(tmp_path / "data")
    api = Api.connect(server.address)
    stream = Stream(api)
    try:
        agent = api.agent()
        stream.send(1, claim=claim(agent, 25))
        stream.send(2, claim=claim(agent, 0))  # answered: the stream is open and read
        assert stream.answer().id == 2
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        waiting = stream.answer()
        assert (waiting.id, waiting.code) == (1, grpc.StatusCode.UNAVAILABLE.value[0])
        with pytest.raises(grpc.RpcError) as ended:
            stream.answer()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.popen.wait(timeout=grace) == 0
        assert time.monotonic() - started < grace / 2, "the open session held the shutdown"
    finally:
        stream.close()
        api.close()
        server.stop()


async def test_the_agents_request_past_its_deadline_is_cancelled_on_the_server(
    tmp_path: Path,
) -> None:
    server = ServerProc.launch(tmp_path / "data", "--metrics-listen", "127.0.0.1:0")
    metrics_at = server.wait_for_line(METRICS).group(1)
    api = Api.connect(server.address)
    try:
        agent = api.agent()

        async def waiting() -> float:
            return (await scrape(metrics_at))["gaffer_notifier_subscriptions"]

        idle = await waiting()
        async with grpc.aio.insecure_channel(server.address) as channel:
            session = Session(agent_service_pb2_grpc.AgentServiceStub(channel))
            with pytest.raises(grpc.RpcError) as late:
                await session.claim(claim(agent, 20), timeout=0.5)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # The claim stops waiting on the server, as a call past its deadline would.
            await wait_until_async(
                lambda: _equals(waiting(), idle), what="the claim no longer waiting"
            )
            job = api.submit(queue=agent.queue)
            handed = await session.claim(claim(agent, 5), timeout=10)
            assert [(a.job.id, a.attempt) for a in handed.assignments] == [(job.id, 1)]
            await session.close()
    finally:
        api.close()
        server.stop()


async def _equals(value: Awaitable[float], wanted: float) -> bool:
    return await value == wanted


async def test_an_agent_opens_its_session_when_it_registers_before_any_job(
    tmp_path: Path,
) -> None:
    """Opening the stream is a new call, which a busy server accepts late: opened with the
    first outcome, it held that outcome back (see Session.open)."""
    server = ServerProc.launch(tmp_path / "data", "--metrics-listen", "127.0.0.1:0")
    metrics_at = server.wait_for_line(METRICS).group(1)
    session_calls = 'gaffer_rpcs_total{method="/gaffer.v1.AgentService/Session"}'
    agent = AgentProc.launch(server.address, "early")
    try:

        async def opened() -> bool:
            return (await scrape(metrics_at)).get(session_calls, 0) == 1

        await wait_until_async(opened, what="the agent's session to open")
        submits = 'gaffer_rpcs_total{method="/gaffer.v1.JobService/SubmitJob"}'
        assert (await scrape(metrics_at)).get(submits, 0) == 0  # no job to report on yet
    finally:
        agent.stop()
        server.stop()
