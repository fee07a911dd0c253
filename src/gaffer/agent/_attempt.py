"""One attempt from assignment to CompleteJob: validate, prepare, run, upload, report.

Exec jobs run as a process (:mod:`gaffer.agent._runner`); function jobs call a registered
Python callable (:mod:`gaffer.agent._functions`) on a fast path with no work dir and no
VALIDATING step. An attempt stopped because its agent is shutting down is handed back
(ReleaseJob), so the server queues it again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from gaffer.agent._artifacts import upload_artifacts
from gaffer.agent._completions import Completions
from gaffer.agent._config import AgentConfig
from gaffer.agent._errors import Fenced
from gaffer.agent._functions import CallOutcome, call_function, work_dir_var
from gaffer.agent._logs import AttemptKey, LogShipper
from gaffer.agent._retry import call_with_retry, describe
from gaffer.agent._runner import (
    InputFile,
    InvalidPathError,
    Process,
    RunResult,
    RunSpec,
    check_relative,
    resolve_outputs,
    write_inputs,
)
from gaffer.agent._session import Session
from gaffer.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2

logger = logging.getLogger(__name__)

# Why an attempt is being stopped early; "lost" and "fenced" attempts report nothing more.
CANCELED = "canceled"
SHUTDOWN = "agent shutting down"
LOST = "lease lost"
FENCED = "fenced"
_SILENT = {LOST, FENCED}
#: Most bytes of a function's traceback written to the job's stderr.
_MAX_TRACEBACK = 64 * 1024
# A function call still going after this long reports RUNNING; one that ends sooner goes
# from CLAIMED to its outcome in one report, RUNNING recorded at the time it began
# (start_time). Exec attempts report VALIDATING and RUNNING together once the process is up.
_RUNNING_REPORT_DELAY = 0.02
#: Calls given up on (timeout, cancel, stop) that have not ended yet: the loop holds tasks
#: only weakly.
_abandoned: set[asyncio.Future[CallOutcome]] = set()


def _safe_name(job_id: str) -> str:
    """A job id made safe as a directory name (ids are opaque: never trust them as paths)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", job_id).lstrip(".")
    return name or "job"


def spec_problem(spec: job_pb2.JobSpec) -> str | None:
    """Why this agent cannot run ``spec`` as an exec job, or None when it can."""
    if spec.WhichOneof("executor") != "exec":
        return "this agent runs only exec jobs"
    if not spec.exec.argv or not spec.exec.argv[0]:
        return "exec.argv must not be empty"
    return paths_problem(spec)


def paths_problem(spec: job_pb2.JobSpec) -> str | None:
    """Why the inputs or outputs of ``spec`` cannot be used, or None."""
    try:
        for item in spec.inputs:
            check_relative(item.path)
        for pattern in spec.outputs:
            check_relative(pattern)
    except InvalidPathError as error:
        return str(error)
    return None


def outcome(result: RunResult, timeout: float | None) -> tuple[job_pb2.JobState, str]:
    """The final state and message of an attempt whose process ran."""
    if result.killed_by is not None:
        return job_pb2.JOB_STATE_FAILED, result.killed_by
    if result.timed_out:
        return job_pb2.JOB_STATE_FAILED, f"timeout after {timeout:g}s"
    if result.exit_code == 0:
        return job_pb2.JOB_STATE_COMPLETED, "exit code 0"
    if result.signal is not None:
        name = signal.Signals(result.signal).name
        return job_pb2.JOB_STATE_FAILED, f"killed by {name} (exit code {result.exit_code})"
    return job_pb2.JOB_STATE_FAILED, f"exit code {result.exit_code}"


class Attempt:
    """Runs one assignment; the agent's heartbeat loop may cancel, lose or stop it meanwhile."""

    def __init__(
        self,
        stub: agent_service_pb2_grpc.AgentServiceStub,
        config: AgentConfig,
        assignment: agent_service_pb2.JobAssignment,
        work_root: Path,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        completions: Completions | None = None,
        session: Session | None = None,
    ) -> None:
        self._stub = stub
        # The agent's, shared by its attempts (outcomes that come together go in one call).
        self._session = session or Session(stub)
        self._completions = completions or Completions(stub, config.rpc_timeout, self._session)
        self._config = config
        self._functions = functions if functions is not None else config.functions
        self._job = assignment.job
        self.key = AttemptKey(assignment.job.id, assignment.attempt, assignment.lease_token)
        self._work_root = work_root
        self._made_workdir = False
        self._completed = False
        self._outcome_sent = False
        #: Set while a function call runs: a stop ends the wait for it.
        self._interrupt: asyncio.Future[None] | None = None
        self._exit_code: int | None = None
        self._stop_reason: str | None = None
        self._process: Process | None = None
        self._shipper: LogShipper | None = None
        self._kills: set[asyncio.Task[None]] = set()
        self._running_reported = False
        # States entered and not reported yet, with when (reported with the next report).
        self._unreported: dict[int, float] = {}
        #: Done once the attempt sends its first report, or ends: the agent's next claim
        #: waits for it (see _Agent._claim_loop).
        self.first_report: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @functools.cached_property
    def _workdir(self) -> Path:
        """Named when first needed: a function job without inputs or outputs never is (in the
        agent, naming it took 26 us of the 0.13 ms from the claim's answer to the call)."""
        return self._work_root / f"{_safe_name(self.key.job_id)}-{self.key.attempt}"

    @property
    def stopping(self) -> bool:
        """Being cancelled or stopped: the server need not order it again."""
        return self._stop_reason is not None

    def cancel(self, reason: str = "") -> None:
        """The server asked for a cancel: kill quickly, then report."""
        logger.info("attempt %s/%s: cancel (%s)", self.key.job_id, self.key.attempt, reason)
        self._stop(CANCELED, self._config.cancel_grace)

    def lose(self) -> None:
        """The lease is gone: kill at once and report nothing more."""
        logger.info("attempt %s/%s: lease lost", self.key.job_id, self.key.attempt)
        self._stop(LOST, 0.0)
        if self._shipper is not None:
            self._shipper.abort()

    def shut_down(self) -> None:
        """The agent is stopping and the grace is over: kill, then hand the attempt back."""
        self._stop(SHUTDOWN, self._config.cancel_grace)

    def _stop(self, reason: str, grace: float) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._interrupt is not None:
            _wake(self._interrupt)
        if self._process is not None:
            task = asyncio.create_task(self._process.kill(grace, self._stop_reason))
            self._kills.add(task)
            task.add_done_callback(self._kills.discard)

    async def run(self) -> None:
        """Carries the attempt through to its end; never raises except on cancellation."""
        try:
            await self._run()
        except Fenced as error:
            logger.info("attempt %s/%s: no longer ours (%s)", *self._ids(), error)
        except grpc.RpcError as error:
            logger.error("attempt %s/%s: server error %s", *self._ids(), describe(error))
            await self._fail_quietly(f"agent error: {error.details()}")
        except Exception as error:
            logger.exception("attempt %s/%s: agent error", *self._ids())
            await self._fail_quietly(f"agent error: {error}")
        finally:
            self._reporting()
            await self._clean_up()

    async def _run(self) -> None:
        spec = self._job.spec
        if spec.WhichOneof("executor") == "function":
            await self._run_function(spec)
        else:
            await self._run_exec(spec)

    async def _run_exec(self, spec: job_pb2.JobSpec) -> None:
        self._enter(job_pb2.JOB_STATE_VALIDATING)
        problem = spec_problem(spec)
        if problem is not None:
            logger.info("attempt %s/%s: rejected: %s", *self._ids(), problem)
            await self._update(job_pb2.JOB_STATE_VALIDATING)
            await self._update(job_pb2.JOB_STATE_VALIDATING, problem, reject=True)
            return
        try:
            await self._prepare_soon(spec)
        except (OSError, InvalidPathError) as error:
            await self._complete(job_pb2.JOB_STATE_FAILED, f"cannot write inputs: {error}")
            return
        if await self._stopped_before_start():
            return
        timeout = spec.timeout.ToTimedelta().total_seconds() if spec.HasField("timeout") else 0
        # RUNNING (with VALIDATING before it) is reported as soon as the process is up, while
        # it runs; a process that is already done by then reports both with its outcome.
        self._enter(job_pb2.JOB_STATE_RUNNING)
        reports: list[asyncio.Task[None]] = []
        try:
            result = await self._execute(
                spec, timeout or None, on_started=lambda: self._start_running_report(reports)
            )
            if result is None or self._stop_reason in _SILENT:
                return
            if self._stop_reason == SHUTDOWN:
                await self._settle_running_reports(reports)
                await self._release()
                return
            if spec.outputs and self._stop_reason is None:
                await self._settle_running_reports(reports)  # UPLOADING comes after RUNNING
                await self._upload(spec)
            state, message = outcome(result, timeout)
            # Not after the RUNNING report's answer: that report was sent first, and the
            # outcome also carries the times of VALIDATING and RUNNING, should it be recorded
            # first (the later report is then refused, and ignored). Waiting held the slot for
            # 6.4 of the 26 ms (p50, traced) an exec job of `true` held it; without the wait,
            # 500 such jobs on 2 agents ran at 678-767 jobs/s against 623-681 (4 alternating
            # pairs, higher in each).
            await self._complete(state, message, result.exit_code)
        except asyncio.CancelledError:
            await self._settle_running_reports(reports, call_off=True)
            raise
        finally:
            await self._settle_running_reports(reports)

    async def _run_function(self, spec: job_pb2.JobSpec) -> None:
        """Calls the named function: CLAIMED -> RUNNING -> COMPLETED/FAILED, nothing more.

        A work dir is made only when the job has inputs or outputs. On a timeout, cancel or
        shutdown a coroutine is cancelled; a plain function running in a thread cannot be
        stopped, so it is left to finish on its own and its result is ignored.
        """
        name = spec.function.name
        fn = self._functions.get(name)
        if fn is None:
            message = f"no function named {name!r} on agent {self._config.name}"
            await self._complete(job_pb2.JOB_STATE_FAILED, message, not_retryable=True)
            return
        if spec.inputs or spec.outputs:
            problem = paths_problem(spec)
            if problem is not None:
                await self._complete(job_pb2.JOB_STATE_FAILED, problem, not_retryable=True)
                return
            try:
                await self._prepare_soon(spec)
            except (OSError, InvalidPathError) as error:
                await self._complete(job_pb2.JOB_STATE_FAILED, f"cannot write inputs: {error}")
                return
        if await self._stopped_before_start():
            return
        # RUNNING is reported once the call has run a moment; a call that ends sooner is
        # reported with its outcome, in one write.
        self._enter(job_pb2.JOB_STATE_RUNNING)
        reports: list[asyncio.Task[None]] = []
        # A timer, not a task asleep: a call that ends first cancels it without a turn of
        # the loop (every turn between the claim and the outcome is dispatch latency).
        timer = asyncio.get_running_loop().call_later(
            _RUNNING_REPORT_DELAY, self._start_running_report, reports
        )
        timeout = spec.timeout.ToTimedelta().total_seconds() if spec.HasField("timeout") else 0
        try:
            result = await self._call(fn, spec.function.args_json, timeout or None)
        except asyncio.CancelledError:
            timer.cancel()
            await self._settle_running_reports(reports, call_off=True)
            raise
        finally:
            timer.cancel()
            await self._settle_running_reports(reports)
        if result is None:
            await self._after_interrupted_call(timeout)
            return
        if result.traceback:
            await self._push_stderr(result.traceback)
        if spec.outputs and result.error is None:
            await self._upload(spec)
        if result.error is None:
            await self._complete(
                job_pb2.JOB_STATE_COMPLETED, "returned", result_json=result.result_json
            )
        else:
            await self._complete(
                job_pb2.JOB_STATE_FAILED, result.error, not_retryable=result.not_retryable
            )

    def _start_running_report(self, reports: list[asyncio.Task[None]]) -> None:
        reports.append(asyncio.create_task(self._report_running()))

    async def _report_running(self) -> None:
        self._running_reported = True
        try:
            await self._update(job_pb2.JOB_STATE_RUNNING)
        except Fenced:
            if self._outcome_sent:
                # Refused after the outcome went: recorded first (it carries RUNNING's time),
                # the job is finished. Were the attempt no longer ours, the outcome's own
                # answer says so.
                logger.debug("attempt %s/%s: RUNNING came after the outcome", *self._ids())
                return
            self._stop(FENCED, 0.0)  # the run is no longer ours: end it now, not at its end
            raise

    async def _settle_running_reports(
        self, reports: list[asyncio.Task[None]], *, call_off: bool = False
    ) -> None:
        """Calls off RUNNING reports not yet begun (the next report carries them); waits for
        one under way. Settled once: the list is emptied. ``call_off`` (the attempt is being
        cancelled, the agent stopping) cancels those under way too: a report retrying while
        the server is unreachable would otherwise hold the stop."""
        while reports:
            report = reports.pop()
            if call_off or not self._running_reported:
                report.cancel()
                await asyncio.gather(report, return_exceptions=True)
                continue
            await report  # its failure (a fenced attempt, say) is the attempt's failure

    def _reporting(self) -> None:
        """Marks the first report as sent, a turn from now: a report's write starts in this
        turn or the next (an outcome's, in the Completions' task), before the claim this lets
        go."""
        if not self.first_report.done():
            asyncio.get_running_loop().call_soon(_wake, self.first_report)

    def _enter(self, state: job_pb2.JobState) -> None:
        """Notes that the attempt entered ``state`` now; the next report tells the server."""
        self._unreported[state] = time.time()

    def _add_unreported(
        self,
        request: agent_service_pb2.UpdateJobStatusRequest | agent_service_pb2.CompleteJobRequest,
    ) -> None:
        for state, at in self._unreported.items():
            field = (
                request.validate_time
                if state == job_pb2.JOB_STATE_VALIDATING
                else request.start_time
            )
            field.FromNanoseconds(int(at * 1e9))

    async def _call(
        self, fn: Callable[..., Any], args_json: str, timeout: float | None
    ) -> CallOutcome | None:
        """The call's outcome, or None when a timeout or a stop came first.

        The call itself wakes this attempt as it ends, in the same turn of the loop: waiting
        on its task (or with asyncio.wait) takes a turn more, for its done callbacks.
        """
        loop = asyncio.get_running_loop()
        over: asyncio.Future[None] = loop.create_future()

        async def call() -> CallOutcome:
            try:
                return await call_function(fn, args_json)
            finally:
                _wake(over)

        token = work_dir_var.set(self._workdir if self._made_workdir else None)
        try:
            task = asyncio.ensure_future(call())
        finally:
            work_dir_var.reset(token)
        timer = loop.call_later(timeout, _wake, over) if timeout is not None else None
        self._interrupt = over
        if self._stop_reason is not None:
            _wake(over)
        try:
            await over
        finally:
            self._interrupt = None
            if timer is not None:
                timer.cancel()
            if not task.done():
                task.cancel()  # it ends on its own; held until then, never awaited
                _abandoned.add(task)
                task.add_done_callback(_abandoned.discard)
        if not task.done() or task.cancelled():
            return None
        return task.result()

    async def _after_interrupted_call(self, timeout: float) -> None:
        if self._stop_reason in _SILENT:
            return
        if self._stop_reason == SHUTDOWN:
            await self._release()
        elif self._stop_reason is not None:
            await self._complete(job_pb2.JOB_STATE_FAILED, self._stop_reason)
        else:
            await self._complete(job_pb2.JOB_STATE_FAILED, f"timeout after {timeout:g}s")

    async def _push_stderr(self, text: str) -> None:
        """Writes a function's traceback to the attempt's stderr, as one chunk at offset 0."""
        data = text.encode(errors="replace")[-_MAX_TRACEBACK:]
        request = agent_service_pb2.PushLogsRequest(
            job_id=self.key.job_id,
            attempt=self.key.attempt,
            lease_token=self.key.lease_token,
            chunk=job_pb2.LogChunk(
                stream=job_pb2.LOG_STREAM_STDERR, offset=0, data=data, attempt=self.key.attempt
            ),
        )
        timeout = self._config.rpc_timeout
        await call_with_retry(
            lambda: self._stub.PushLogs(iter([request]), timeout=timeout),
            what=f"{self.key.job_id}/{self.key.attempt} traceback",
        )

    async def _upload(self, spec: job_pb2.JobSpec) -> None:
        await self._update(job_pb2.JOB_STATE_UPLOADING)
        names = resolve_outputs(self._workdir, spec.outputs)
        await upload_artifacts(
            self._stub, self.key, self._workdir, names, rpc_timeout=self._config.rpc_timeout
        )

    async def _fail_quietly(self, message: str) -> None:
        """Best effort to finish the attempt after an unexpected error, so it is not stuck."""
        if self._completed or self._stop_reason in _SILENT:
            return
        try:
            await self._complete(job_pb2.JOB_STATE_FAILED, message, self._exit_code)
        except Exception as error:
            logger.warning("attempt %s/%s: cannot report failure: %s", *self._ids(), error)

    async def _prepare_soon(self, spec: job_pb2.JobSpec) -> None:
        """Makes the work dir: on the loop when that is one mkdir, else in a thread.

        A thread costs two wake-ups, each slow on a small machine: with the mkdir on the loop,
        `bench --only dispatch` saw RUNNING (exec, submit -> seen) at p50 3.89/4.14/4.08 ms
        against 4.20/4.28/4.38 ms in a thread (alternating runs). Writing inputs, or removing
        an old dir, may take longer than the loop should stop for.
        """
        if spec.inputs or self._workdir.exists():
            await asyncio.to_thread(self._prepare, spec)
        else:
            self._prepare(spec)

    def _prepare(self, spec: job_pb2.JobSpec) -> None:
        self._made_workdir = True
        if self._workdir.exists():
            shutil.rmtree(self._workdir)
        self._workdir.mkdir(parents=True)
        write_inputs(self._workdir, (InputFile(i.path, i.content, i.mode) for i in spec.inputs))

    async def _stopped_before_start(self) -> bool:
        if self._stop_reason is None:
            return False
        if self._stop_reason == SHUTDOWN:
            await self._release()
        elif self._stop_reason not in _SILENT:
            await self._complete(job_pb2.JOB_STATE_FAILED, self._stop_reason)
        return True

    async def _execute(
        self,
        spec: job_pb2.JobSpec,
        limit: float | None,
        on_started: Callable[[], None] = lambda: None,
    ) -> RunResult | None:
        """Runs the process with its logs shipped; None if it could not start."""
        shipper = LogShipper(
            self.key, lambda: self._stub.PushLogs(), on_fenced=lambda: self._stop(FENCED, 0.0)
        )
        self._shipper = shipper
        env = {
            **self._config.base_env,
            "HOME": str(self._workdir),
            "GAFFER_JOB_ID": self.key.job_id,
            "GAFFER_ATTEMPT": str(self.key.attempt),
            **spec.exec.env,
        }
        run = RunSpec(
            argv=tuple(spec.exec.argv),
            env=env,
            stdin=spec.exec.stdin,
            timeout=limit,
            kill_grace=self._config.kill_grace,
        )
        try:
            self._process = await Process.start(run, self._workdir, shipper.write)
        except OSError as error:
            await shipper.close()
            message = f"cannot start {spec.exec.argv[0]!r}: {error.strerror or error}"
            await self._complete(job_pb2.JOB_STATE_FAILED, message)
            return None
        logger.info("attempt %s/%s: running pid %s", *self._ids(), self._process.pid)
        on_started()
        if self._stop_reason is not None:  # stopped while the process was starting
            self._stop(self._stop_reason, 0.0)
        result = await self._process.wait()
        self._exit_code = result.exit_code
        if self._stop_reason not in _SILENT:
            await shipper.close()
        return result

    async def _update(
        self, state: job_pb2.JobState, message: str = "", *, reject: bool = False
    ) -> None:
        request = agent_service_pb2.UpdateJobStatusRequest(
            job_id=self.key.job_id,
            attempt=self.key.attempt,
            lease_token=self.key.lease_token,
            state=state,
            message=message,
            reject=reject,
        )
        self._reporting()
        self._add_unreported(request)
        timeout = self._config.rpc_timeout
        await call_with_retry(
            lambda: self._session.update_status(request, timeout),
            what=f"{self.key.job_id}/{self.key.attempt} {job_pb2.JobState.Name(state)}",
        )
        self._unreported.clear()

    async def _complete(
        self,
        state: job_pb2.JobState,
        message: str,
        exit_code: int | None = None,
        *,
        not_retryable: bool = False,
        result_json: str = "",
    ) -> None:
        request = agent_service_pb2.CompleteJobRequest(
            job_id=self.key.job_id,
            attempt=self.key.attempt,
            lease_token=self.key.lease_token,
            state=state,
            message=message,
            exit_code=exit_code,
            not_retryable=not_retryable,
            result_json=result_json,
        )
        self._reporting()
        self._add_unreported(request)
        self._outcome_sent = True
        response = await call_with_retry(
            lambda: self._completions.complete(request),
            what=f"{self.key.job_id}/{self.key.attempt} complete",
        )
        self._completed = True
        logger.info(
            "attempt %s/%s: %s (%s)%s",
            *self._ids(),
            job_pb2.JobState.Name(state),
            message,
            "" if response.accepted else ", not accepted",
        )

    async def _release(self) -> None:
        """Hands the attempt back: the server queues the job again at once."""
        self._reporting()
        request = agent_service_pb2.ReleaseJobRequest(
            job_id=self.key.job_id,
            attempt=self.key.attempt,
            lease_token=self.key.lease_token,
            reason=SHUTDOWN,
        )
        timeout = self._config.rpc_timeout
        await call_with_retry(
            lambda: self._stub.ReleaseJob(request, timeout=timeout),
            what=f"{self.key.job_id}/{self.key.attempt} release",
        )
        self._completed = True
        logger.info("attempt %s/%s: released (%s)", *self._ids(), SHUTDOWN)

    async def _clean_up(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(self._process.kill(0.0, self._stop_reason or FENCED))
        if self._shipper is not None and self._stop_reason in _SILENT:
            self._shipper.abort()
        if self._made_workdir and not self._config.keep_work_dirs:
            # In a thread even when empty: directory changes wait on the file system's journal
            # (busy with the server's fsyncs); on the loop, removing an empty work dir took a
            # tenth of the agent's samples (py-spy, exec jobs of `true`).
            await asyncio.to_thread(shutil.rmtree, self._workdir, True)

    def _ids(self) -> tuple[str, int]:
        return self.key.job_id, self.key.attempt


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
