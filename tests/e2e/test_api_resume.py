"""Resume rules: a from_now stream says where it started; a log resume follows a retry."""

from __future__ import annotations

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, duration

S = job_pb2.JobState
OUT = job_pb2.LOG_STREAM_STDOUT


def test_a_from_now_stream_first_reports_its_position(api: Api) -> None:
    api.submit()
    api.submit()
    stream = api.jobs.StreamJobEvents(
        jpb.StreamJobEventsRequest(from_now=True, keepalive_interval=duration(0.2)),
        timeout=CALL_TIMEOUT,
    )
    first = next(stream)
    # Two jobs were created: events 1 and 2; resuming after 2 misses nothing that follows.
    assert first.WhichOneof("frame") == "keepalive" and first.keepalive.sequence == 2
    job = api.submit()
    event = next(f for f in stream if f.WhichOneof("frame") == "event")
    assert (event.event.sequence, event.event.job_id) == (3, job.id)
    stream.cancel()


def test_a_log_resume_finishes_its_attempt_then_moves_to_the_retry(api: Api) -> None:
    agent = api.agent()
    job = api.submit(queue=agent.queue, retry_policy=job_pb2.RetryPolicy(max_attempts=2))
    a = agent.claim_one()
    agent.start(a)
    agent.push(a, [(OUT, 0, b"one two\n")])
    agent.complete(a, S.JOB_STATE_FAILED, exit_code=1)
    b = agent.claim_one()
    agent.start(b)
    agent.push(b, [(OUT, 0, b"second\n")])
    agent.complete(b)
    # A follower that had read "one " of attempt 1 when its stream broke resumes from there.
    frames = api.logs(job.id, resume_attempt=1, stdout_offset=4, follow=True)
    chunks = [
        (f.chunk.attempt, f.chunk.offset, f.chunk.data) for f in frames if f.HasField("chunk")
    ]
    assert chunks == [(1, 4, b"two\n"), (2, 0, b"second\n")]
    assert frames[-1].end.attempt == 2 and frames[-1].end.state == S.JOB_STATE_COMPLETED
