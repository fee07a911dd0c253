"""Per-phase timings of a job's latest attempt, derived from its status history."""

from __future__ import annotations

from datetime import UTC, datetime

from gaffer.v1 import job_pb2

S = job_pb2.JobState


def _at(status: job_pb2.JobStatus) -> datetime:
    return status.time.ToDatetime(tzinfo=UTC)


def job_timings(job: job_pb2.Job, now: datetime) -> job_pb2.JobTimings:
    """Fills queued/validating/running/uploading/total from the history of the latest attempt."""
    timings = job_pb2.JobTimings()
    history = list(job.history)
    if not history:
        return timings
    end = job.finish_time.ToDatetime(tzinfo=UTC) if job.HasField("finish_time") else now
    timings.total.FromTimedelta(end - _at(history[0]))
    # The latest entry into PENDING starts the latest attempt's queueing.
    start = (
        max(i for i, s in enumerate(history) if s.state == S.JOB_STATE_PENDING)
        if any(s.state == S.JOB_STATE_PENDING for s in history)
        else 0
    )
    marks: dict[int, datetime] = {}
    for status in history[start:]:
        marks.setdefault(status.state, _at(status))
    queued_from = _at(history[start])
    claimed = marks.get(S.JOB_STATE_CLAIMED)
    running = marks.get(S.JOB_STATE_RUNNING)
    uploading = marks.get(S.JOB_STATE_UPLOADING)
    timings.queued.FromTimedelta((claimed or end) - queued_from)
    if claimed:
        timings.validating.FromTimedelta((running or uploading or end) - claimed)
    if running:
        timings.running.FromTimedelta((uploading or end) - running)
    if uploading:
        timings.uploading.FromTimedelta(end - uploading)
    return timings
