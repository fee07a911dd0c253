"""Per-phase timings of a job's latest attempt, derived from its status history."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from gaffer.v1 import job_pb2


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _set(duration: duration_pb2.Duration, ns: int) -> None:
    if ns >= 0:
        duration.seconds, duration.nanos = divmod(ns, 1_000_000_000)
    else:  # an agent's clock behind the server's: same sign for both parts
        duration.FromNanoseconds(ns)


def fill_timings(job: job_pb2.Job, now_ns: int) -> None:
    """Sets ``job.timings`` (queued/validating/running/uploading/total) from the history of
    the latest attempt; ``now_ns`` (nanoseconds since the epoch) ends the phase a job is
    still in.

    In place and in integer nanoseconds: every response carries this, so it must cost
    little (a JobTimings built apart and copied in cost twice as much).
    """
    job.ClearField("timings")
    timings = job.timings
    history = job.history
    if not history:
        timings.SetInParent()  # present, all zero, as for any job
        return
    end = _ns(job.finish_time) if job.HasField("finish_time") else now_ns
    _set(timings.total, end - _ns(history[0].time))
    # The latest entry into PENDING starts the latest attempt's queueing.
    start = 0
    for i, status in enumerate(history):
        if status.state == job_pb2.JOB_STATE_PENDING:
            start = i
    if start == len(history) - 1:  # queued still (the usual answer to a submit)
        _set(timings.queued, end - _ns(history[start].time))
        return
    marks: dict[int, int] = {}
    for status in history[start:]:
        if status.state not in marks:
            marks[status.state] = _ns(status.time)
    queued_from = _ns(history[start].time)
    claimed = marks.get(job_pb2.JOB_STATE_CLAIMED)
    running = marks.get(job_pb2.JOB_STATE_RUNNING)
    uploading = marks.get(job_pb2.JOB_STATE_UPLOADING)
    _set(timings.queued, (claimed or end) - queued_from)
    if claimed:
        _set(timings.validating, (running or uploading or end) - claimed)
    if running:
        _set(timings.running, (uploading or end) - running)
    if uploading:
        _set(timings.uploading, end - uploading)
