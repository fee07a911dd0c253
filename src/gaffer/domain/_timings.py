"""Per-phase timings of a job's latest attempt, derived from its status history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gaffer.v1 import job_pb2

S = job_pb2.JobState


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def job_timings(job: job_pb2.Job, now: datetime) -> job_pb2.JobTimings:
    """Fills queued/validating/running/uploading/total from the history of the latest attempt.

    In integer nanoseconds (every response carries this; datetimes cost more than the rest).
    """
    timings = job_pb2.JobTimings()
    history = job.history
    if not history:
        return timings
    if job.HasField("finish_time"):
        end = job.finish_time.ToNanoseconds()
    else:
        end = (now - _EPOCH) // timedelta(microseconds=1) * 1000
    timings.total.FromNanoseconds(end - history[0].time.ToNanoseconds())
    # The latest entry into PENDING starts the latest attempt's queueing.
    start = 0
    for i, status in enumerate(history):
        if status.state == S.JOB_STATE_PENDING:
            start = i
    marks: dict[int, int] = {}
    for status in history[start:]:
        if status.state not in marks:
            marks[status.state] = status.time.ToNanoseconds()
    queued_from = history[start].time.ToNanoseconds()
    claimed = marks.get(S.JOB_STATE_CLAIMED)
    running = marks.get(S.JOB_STATE_RUNNING)
    uploading = marks.get(S.JOB_STATE_UPLOADING)
    timings.queued.FromNanoseconds((claimed or end) - queued_from)
    if claimed:
        timings.validating.FromNanoseconds((running or uploading or end) - claimed)
    if running:
        timings.running.FromNanoseconds((uploading or end) - running)
    if uploading:
        timings.uploading.FromNanoseconds(end - uploading)
    return timings
