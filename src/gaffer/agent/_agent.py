"""The agent's loops: register, heartbeat (long poll for cancels), claim, and stop gracefully.

The server may go away and come back at any time (restart, deploy): every call has a deadline
and is retried with capped, jittered backoff; running attempts keep running meanwhile, since a
restarted server keeps held leases for one ttl. A server that forgot the agent (fresh store)
answers NOT_FOUND: the agent registers again and drops the attempts the server calls ``lost``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from gaffer.agent._attempt import Attempt
from gaffer.agent._completions import Completions
from gaffer.agent._config import AgentConfig
from gaffer.agent._errors import AgentError
from gaffer.agent._functions import builtin_functions
from gaffer.agent._retry import Backoff, code_of, describe, is_transient
from gaffer.agent._runner import children_watched_with_pidfds
from gaffer.agent._session import Session
from gaffer.client._target import CHANNEL_OPTIONS, channel_target
from gaffer.v1 import agent_service_pb2, agent_service_pb2_grpc

logger = logging.getLogger(__name__)

#: Extra time a long poll's deadline allows beyond its wait.
_POLL_SLACK = 5.0
_DEFAULT_HEARTBEAT = 5.0
_DEFAULT_LEASE_TTL = 15.0
_MAX_UNKNOWN_CANCELS = 256
#: The longest the next claim waits for the first reports of the attempts just started.
_CLAIM_AFTER_START = 0.002
#: Short reconnect backoff (a restarted server is noticed at once; the agent's calls back off on
#: top of it) and ``pick_first`` over ``config.server``'s addresses, which may list replicas:
#: when the replica in use goes away the channel moves to another, and the retried calls follow.
_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.max_receive_message_length", 64 * 1024 * 1024)]

OnRegistered = Callable[[str], object]


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


async def run_agent(
    config: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    on_registered: OnRegistered | None = None,
) -> None:
    """Registers with the server and runs jobs until ``stop`` is set or the task is cancelled.

    When ``stop`` is set the agent claims nothing more, gives running attempts
    ``config.stop_grace`` seconds to finish, then kills the rest and hands them back with
    ReleaseJob ("agent shutting down"): the server queues them again at once. Cancelling the
    task kills running processes without reporting.

    Args:
        config: What to connect to and how to run jobs.
        stop: Set it to stop gracefully.
        on_registered: Called with the agent id after the first registration. When None, a line
            ``gaffer agent NAME registered as ID on SERVER`` is printed to stdout (what the CLI
            and the test harness wait for).

    Raises:
        AgentError: the server refused to register the agent (not a transient failure: those
            are retried with backoff).
    """
    agent = _Agent(config, on_registered or _print_registered(config))
    with children_watched_with_pidfds():
        await agent.run(stop or asyncio.Event())


def _print_registered(config: AgentConfig) -> OnRegistered:
    def announce(agent_id: str) -> None:
        print(f"gaffer agent {config.name} registered as {agent_id} on {config.server}", flush=True)

    return announce


class _Agent:
    def __init__(self, config: AgentConfig, on_registered: OnRegistered) -> None:
        self._config = config
        self._on_registered = on_registered
        self._agent_id = ""
        self._generation = 0
        self._register_lock = asyncio.Lock()
        self._heartbeat_interval = _DEFAULT_HEARTBEAT
        self._lease_ttl = _DEFAULT_LEASE_TTL
        self._functions = {**builtin_functions(), **config.functions}
        self._draining = False
        self._attempts: dict[tuple[str, int], Attempt] = {}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._unknown_cancels: dict[tuple[str, int], None] = {}

    async def run(self, stop: asyncio.Event) -> None:
        temp_root = None
        root = self._config.work_dir
        if root is None:
            root = temp_root = Path(tempfile.mkdtemp(prefix="gaffer-agent-"))
        self._root = root
        try:
            target = channel_target(self._config.server)
            channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            async with channel:
                self._stub = agent_service_pb2_grpc.AgentServiceStub(channel)
                self._session = Session(self._stub)
                self._completions = Completions(self._stub, self._config.rpc_timeout, self._session)
                try:
                    await self._serve(stop)
                finally:
                    await self._session.close()
        finally:
            if temp_root is not None:
                shutil.rmtree(temp_root, ignore_errors=True)

    async def _serve(self, stop: asyncio.Event) -> None:
        if not await _until_stopped(self._register(), stop):
            return
        self._on_registered(self._agent_id)
        heartbeat = asyncio.create_task(self._heartbeat_loop())
        claim = asyncio.create_task(self._claim_loop())
        try:
            await _until_stopped(_forever(claim, heartbeat), stop)
            logger.info("stopping: %s attempts running", len(self._tasks))
            await _cancel(claim)
            await self._finish_attempts()
        finally:
            for task in (claim, *self._tasks.values()):
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await _cancel(heartbeat)

    async def _finish_attempts(self) -> None:
        """Lets attempts finish within the grace, then stops the rest and lets them report."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._config.stop_grace)
        if not pending:
            return
        for attempt in list(self._attempts.values()):
            attempt.shut_down()
        report_within = self._config.cancel_grace + 2 * self._config.rpc_timeout
        await asyncio.wait(pending, timeout=report_within)

    async def _register(self) -> None:
        request = agent_service_pb2.RegisterAgentRequest(
            name=self._config.name,
            labels=dict(self._config.labels),
            capacity=agent_service_pb2.Capacity(slots=self._config.slots),
            queues=list(self._config.queues),
        )
        backoff = Backoff()
        while True:
            try:
                response = await self._stub.RegisterAgent(request, timeout=self._config.rpc_timeout)
                break
            except grpc.RpcError as error:
                if not is_transient(error):
                    raise AgentError(f"cannot register: {error}") from error
                logger.warning(
                    "cannot reach %s (%s); retrying", self._config.server, describe(error)
                )
            await backoff.sleep()
        self._agent_id = response.agent_id
        if response.HasField("heartbeat_interval"):
            seconds = response.heartbeat_interval.ToTimedelta().total_seconds()
            self._heartbeat_interval = seconds or _DEFAULT_HEARTBEAT
        if response.HasField("lease_ttl"):
            self._lease_ttl = response.lease_ttl.ToTimedelta().total_seconds() or self._lease_ttl
        self._generation += 1
        self._session.open()  # before the first job: see Session.open
        logger.info("registered %s as %s", self._config.name, self._agent_id)

    async def _reregister(self, generation: int) -> None:
        """Registers again after the server forgot us (fresh store), once per forgetting."""
        async with self._register_lock:
            if generation == self._generation:
                logger.warning("server does not know agent %s; registering again", self._agent_id)
                await self._register()

    async def _heartbeat_loop(self) -> None:
        """Long polls Heartbeat back to back.

        A poll lists the attempts running when it started; the server also watches the ones
        claimed since (a cancel of one wakes the poll), so a claim need not restart it.
        """
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        warned = False
        while True:
            generation = self._generation
            interval = self._heartbeat_interval
            request = self._heartbeat_request(interval)
            try:
                response = await self._heartbeat(request, interval + _POLL_SLACK)
            except grpc.RpcError as error:
                if code_of(error) == grpc.StatusCode.NOT_FOUND:
                    await self._reregister(generation)
                    continue
                logger.warning("heartbeat failed (%s); retrying", describe(error))
                if self._attempts and not warned and loop.time() - renewed > self._lease_ttl:
                    # Nothing to do but carry on: the server fences what it gave away.
                    logger.warning(
                        "leases not renewed for over %gs; running attempts may be fenced",
                        self._lease_ttl,
                    )
                    warned = True
                await backoff.sleep()
                continue
            backoff.reset()
            renewed, warned = loop.time(), False
            self._on_heartbeat(response)

    async def _heartbeat(
        self, request: agent_service_pb2.HeartbeatRequest, deadline: float
    ) -> agent_service_pb2.HeartbeatResponse:
        response: agent_service_pb2.HeartbeatResponse = await self._stub.Heartbeat(
            request, timeout=deadline
        )
        return response

    def _heartbeat_request(self, interval: float) -> agent_service_pb2.HeartbeatRequest:
        def ref(key: tuple[str, int]) -> agent_service_pb2.AttemptRef:
            return agent_service_pb2.AttemptRef(job_id=key[0], attempt=key[1])

        stopping = [key for key, attempt in self._attempts.items() if attempt.stopping]
        return agent_service_pb2.HeartbeatRequest(
            agent_id=self._agent_id,
            running=[ref(key) for key in self._attempts],
            wait=_duration(interval),
            canceling=[ref(key) for key in [*stopping, *self._unknown_cancels]],
        )

    def _on_heartbeat(self, response: agent_service_pb2.HeartbeatResponse) -> None:
        for order in response.cancel:
            key = (order.job_id, order.attempt)
            attempt = self._attempts.get(key)
            if attempt is not None:
                attempt.cancel(order.reason)
            else:
                # Already finished here: say so on every later call, or the server asks again.
                self._unknown_cancels[key] = None
                while len(self._unknown_cancels) > _MAX_UNKNOWN_CANCELS:
                    del self._unknown_cancels[next(iter(self._unknown_cancels))]
        for ref in response.lost:
            attempt = self._attempts.get((ref.job_id, ref.attempt))
            if attempt is not None:
                attempt.lose()
        if response.draining != self._draining:
            logger.info("server says draining=%s", response.draining)
            self._draining = response.draining
            self._changed.set()

    async def _claim_loop(self) -> None:
        backoff = Backoff()
        wait = self._config.claim_wait
        while True:
            self._changed.clear()
            free = self._config.slots - len(self._tasks)
            if free <= 0 or self._draining:
                await self._changed.wait()
                continue
            generation = self._generation
            request = agent_service_pb2.ClaimJobRequest(
                agent_id=self._agent_id, max_jobs=free, wait=_duration(wait)
            )
            try:
                # A unary call, not a Session request: under load a claim that answers sooner
                # takes fewer jobs. With 5,000 jobs submitted one by one (64 in flight), claims
                # on the session took 1.2 jobs each (4,160 claims) against 8 (629), and the
                # jobs ran at 560 jobs/s against 1,450. Measured again with the handoff (3 runs
                # or pairs each): one function job at a time went about 3% faster with claims
                # on the Session, but the fan-out's 1,000 jobs took 3.1-4.6 s against 3.0-3.8:
                # the Session answers one message at a time, and behind 1,000 followers' sends
                # a claim's answer waited for the outcomes' answers before it.
                response = await self._stub.ClaimJob(request, timeout=wait + _POLL_SLACK)
            except grpc.RpcError as error:
                if code_of(error) == grpc.StatusCode.NOT_FOUND:
                    await self._reregister(generation)
                    continue
                logger.warning("claim failed (%s); retrying", describe(error))
                await backoff.sleep()
                continue
            backoff.reset()
            started = [self._start(assignment) for assignment in response.assignments]
            reports = [attempt.first_report for attempt in started if attempt is not None]
            if reports:
                # Outcomes before claims: a job that ends at once sends its outcome before
                # the next claim goes out. A claim sent first took the agent's loop between
                # the job's start and its outcome, and the server's between the outcome's
                # arrival and its commit (one job at a time: claim -> outcome sent 0.32 ms,
                # against 0.15 ms after).
                await asyncio.wait(reports, timeout=_CLAIM_AFTER_START)

    def _start(self, assignment: agent_service_pb2.JobAssignment) -> Attempt | None:
        attempt = Attempt(
            self._stub,
            self._config,
            assignment,
            self._root,
            self._functions,
            self._completions,
            self._session,
        )
        key = (attempt.key.job_id, attempt.key.attempt)
        if key in self._tasks:
            logger.warning("attempt %s/%s assigned twice; ignoring the repeat", *key)
            return None
        logger.info("claimed %s attempt %s", *key)
        task = asyncio.create_task(attempt.run(), name=f"attempt {key[0]}/{key[1]}")
        self._attempts[key] = attempt
        self._tasks[key] = task
        if key in self._unknown_cancels:  # the cancel order overtook the claim's answer
            del self._unknown_cancels[key]
            attempt.cancel("canceled before it started")

        def finished(_: asyncio.Task[None]) -> None:
            self._attempts.pop(key, None)
            self._tasks.pop(key, None)
            self._changed.set()

        task.add_done_callback(finished)
        return attempt


async def _forever(*tasks: asyncio.Task[None]) -> None:
    """Waits on background loops, re-raising if one of them dies."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()


async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Runs ``work`` until it ends (True) or ``stop`` is set first (False, work cancelled)."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            await _cancel(task)
    if task.done() and not task.cancelled():
        task.result()
        return True
    return False


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancels ``task`` and waits for it, without swallowing a cancellation of our own."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
