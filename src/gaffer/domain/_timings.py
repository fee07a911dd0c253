"""Per-phase timings of a job's latest attempt, derived from its status history."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from gaffer.v1 import job_pb2


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def job_timings(job: job_pb2.Job, now_ns: int) -> job_pb2.JobTimings:
    """Fills queued/validating/running/uploading/total from the history of the latest attempt;
    ``now_ns`` (nanoseconds since the epoch) ends the phase a job is still in.

    In integer nanoseconds: every response carries this, so it must cost little.
    """
    timings = job_pb2.JobTimings()
    history = job.history
    if not history:
        return timings
    end = _ns(job.finish_time) if job.HasField("finish_time") else now_ns
    timings.total.FromNanoseconds(end - _ns(history[0].time))
    # The latest entry into PENDING starts the latest attempt's queueing.
    start = 0
    for i, status in enumerate(history):
        if status.state == job_pb2.JOB_STATE_PENDING:
            start = i
    marks: dict[int, int] = {}
    for status in history[start:]:
        if status.state not in marks:
            marks[status.state] = _ns(status.time)
    queued_from = _ns(history[start].time)
    claimed = marks.get(job_pb2.JOB_STATE_CLAIMED)
    running = marks.get(job_pb2.JOB_STATE_RUNNING)
    uploading = marks.get(job_pb2.JOB_STATE_UPLOADING)
    timings.queued.FromNanoseconds((claimed or end) - queued_from)
    if claimed:
        timings.validating.FromNanoseconds((running or uploading or end) - claimed)
    if running:
        timings.running.FromNanoseconds((uploading or end) - running)
    if uploading:
        timings.uploading.FromNanoseconds(end - uploading)
    return timings
