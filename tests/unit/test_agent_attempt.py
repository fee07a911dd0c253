"""Pure decisions of an attempt: can it run, what is its outcome, where does it run."""

from __future__ import annotations

from gaffer.agent._attempt import _safe_name, outcome, spec_problem
from gaffer.agent._runner import RunResult
from gaffer.v1 import job_pb2


def test_spec_problems() -> None:
    ok = job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=["true"]), outputs=["**/*.json"])
    assert spec_problem(ok) is None
    assert spec_problem(job_pb2.JobSpec()) == "this agent runs only exec jobs"
    assert spec_problem(job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=[""]))) is not None
    escape = job_pb2.JobSpec(
        exec=job_pb2.ExecExecutor(argv=["true"]), inputs=[job_pb2.InputFile(path="/etc/x")]
    )
    assert "must be relative" in (spec_problem(escape) or "")
    out = job_pb2.JobSpec(exec=job_pb2.ExecExecutor(argv=["true"]), outputs=["../*"])
    assert spec_problem(out) is not None


def test_outcomes() -> None:
    assert outcome(RunResult(0), None) == (job_pb2.JOB_STATE_COMPLETED, "exit code 0")
    assert outcome(RunResult(3), None) == (job_pb2.JOB_STATE_FAILED, "exit code 3")
    assert outcome(RunResult(143, signal=15, timed_out=True), 2.5) == (
        job_pb2.JOB_STATE_FAILED,
        "timeout after 2.5s",
    )
    assert outcome(RunResult(137, signal=9, killed_by="canceled"), None) == (
        job_pb2.JOB_STATE_FAILED,
        "canceled",
    )
    assert outcome(RunResult(134, signal=6), None) == (
        job_pb2.JOB_STATE_FAILED,
        "killed by SIGABRT (exit code 134)",
    )


def test_job_ids_never_escape_the_work_root() -> None:
    assert _safe_name("j-01H.x_y") == "j-01H.x_y"
    assert _safe_name("../../etc") == "_.._etc"
    assert _safe_name("a/b") == "a_b"
    assert _safe_name("..") == "job"
