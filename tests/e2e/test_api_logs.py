"""PushLogs and StreamLogs: no byte lost or repeated, live following, offsets, tails, end frame."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from gaffer.v1 import agent_service_pb2 as apb
from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import (
    CALL_TIMEOUT,
    STDERR,
    STDOUT,
    Api,
    ChunkFeed,
    HandAgent,
    duration,
    failure,
    text_of,
)
from tests.e2e.pg_fixtures import pg_database_fixture, server_both_stores  # noqa: F401
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

S = job_pb2.JobState
OUT = b"".join(b"line %d\n" % i for i in range(1, 13))
ERR = b"err A\nerr B\n"


def pieces(data: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    """``data`` cut into (offset, bytes) pieces of the given sizes, cycling, ignoring lines."""
    out, offset, i = [], 0, 0
    while offset < len(data):
        size = sizes[i % len(sizes)]
        out.append((offset, data[offset : offset + size]))
        offset, i = offset + size, i + 1
    return out


def open_logs(api: Api, job_id: str, **fields: object) -> Iterator[jpb.StreamLogsResponse]:
    request = jpb.StreamLogsRequest(job_id=job_id, **fields)  # type: ignore[arg-type]
    return api.jobs.StreamLogs(request, timeout=CALL_TIMEOUT)  # type: ignore[no-any-return]


def next_output(stream: Iterator[jpb.StreamLogsResponse]) -> jpb.StreamLogsResponse:
    """The next chunk or end frame, skipping keepalives."""
    for frame in stream:
        if frame.WhichOneof("frame") != "keepalive":
            return frame
    raise AssertionError("the log stream ended early")


def joined(frames: list[jpb.StreamLogsResponse], stream: int, start: int = 0) -> bytes:
    """One stream's bytes from ``start``, checking the chunk offsets run on exactly."""
    out = b""
    for frame in frames:
        if frame.WhichOneof("frame") == "chunk" and frame.chunk.stream == stream:
            assert frame.chunk.offset == start + len(out), (frame.chunk.offset, start + len(out))
            out += frame.chunk.data
    return out


def end_of(frames: list[jpb.StreamLogsResponse]) -> jpb.LogEnd:
    assert frames and frames[-1].WhichOneof("frame") == "end", "no end frame last"
    assert [f.WhichOneof("frame") for f in frames].count("end") == 1
    return frames[-1].end


def running_job(api: Api, queue: str) -> tuple[HandAgent, apb.JobAssignment]:
    agent = api.agent(queue)
    api.submit(["sh", "-c", "..."], queue=queue)
    a = agent.claim_one()
    agent.start(a)
    return agent, a


@pytest.fixture
def finished(api: Api) -> str:
    """A COMPLETED job whose stdout and stderr arrived in uneven, line-splitting chunks."""
    agent, a = running_job(api, "done")
    chunks = [(STDOUT, o, d) for o, d in pieces(OUT, [5, 13, 1, 30])]
    chunks[3:3] = [(STDERR, o, d) for o, d in pieces(ERR, [7])]
    response = agent.push(a, chunks)
    assert response.accepted == len(chunks) and response.duplicates == 0
    assert (response.stdout_size, response.stderr_size) == (len(OUT), len(ERR))
    agent.complete(a, S.JOB_STATE_COMPLETED, 0)
    return a.job.id


def test_follower_started_before_any_output_gets_it_live_in_order_then_end(api: Api) -> None:
    agent = api.agent("live")
    job = api.submit(["sh", "-c", "..."], queue="live")
    follower = open_logs(api, job.id, follow=True, keepalive_interval=duration(0.2))
    # An idle follower of a pending job gets keepalives, not an end.
    assert next(follower).WhichOneof("frame") == "keepalive"
    a = agent.claim_one()
    agent.start(a)
    feed = ChunkFeed(agent, a)
    frames = []
    expected_out = expected_err = b""
    for i in range(1, 11):
        line = b"out %d\n" % i
        feed.send(STDOUT, len(expected_out), line)
        expected_out += line
        frames.append(next_output(follower))  # arrives before the next line is even written
        assert frames[-1].chunk.data == line and frames[-1].chunk.stream == STDOUT
        if i % 4 == 0:
            err = b"warn %d\n" % i
            feed.send(STDERR, len(expected_err), err)
            expected_err += err
            frames.append(next_output(follower))
            assert frames[-1].chunk == job_pb2.LogChunk(
                stream=STDERR, offset=len(expected_err) - len(err), data=err, attempt=1
            )
    response = feed.close()
    assert response.accepted == 12 and response.duplicates == 0
    agent.complete(a, S.JOB_STATE_FAILED, 3, "exit status 3")
    frames.append(next_output(follower))
    assert list(follower) == [], "frames after the end frame"
    assert joined(frames, STDOUT) == expected_out
    assert joined(frames, STDERR) == expected_err
    end = end_of(frames)
    assert end.state == S.JOB_STATE_FAILED
    assert end.HasField("exit_code") and end.exit_code == 3
    assert end.attempt == 1
    assert (end.stdout_size, end.stderr_size) == (len(expected_out), len(expected_err))


def test_follower_resumes_exactly_from_its_offsets(api: Api) -> None:
    agent, a = running_job(api, "resume")
    feed = ChunkFeed(agent, a)
    first = open_logs(api, a.job.id, follow=True)
    got = b""
    for i in range(5):
        line = b"part %d\n" % i
        feed.send(STDOUT, len(got), line)
        frame = next_output(first)
        assert frame.chunk.offset == len(got)
        got += frame.chunk.data
    first.cancel()  # type: ignore[attr-defined]  # the client "loses" its connection
    # More output while nobody listens, then a new follower resumes from its offset.
    more = b"".join(b"later %d\n" % i for i in range(5))
    for offset, data in pieces(more, [3, 9]):
        feed.send(STDOUT, len(got) + offset, data)
    second = open_logs(api, a.job.id, follow=True, stdout_offset=len(got))
    total = len(got) + len(more)
    frames: list[jpb.StreamLogsResponse] = []
    while sum(len(f.chunk.data) for f in frames) < len(more):
        frames.append(next_output(second))
    assert feed.close().accepted > 0
    agent.complete(a, S.JOB_STATE_COMPLETED, 0)
    frames += list(second)
    assert (
        got + joined(frames, STDOUT, start=len(got))
        == b"".join(b"part %d\n" % i for i in range(5)) + more
    )
    assert end_of(frames).stdout_size == total


def test_resend_after_a_broken_push_stream_duplicates_nothing(api: Api) -> None:
    agent, a = running_job(api, "resend")
    chunks = [(STDOUT, o, d) for o, d in pieces(OUT, [10, 4, 25])] + [
        (STDERR, o, d) for o, d in pieces(ERR, [6])
    ]
    feed = ChunkFeed(agent, a)
    feed.send(*chunks[0])
    feed.send(*chunks[1])
    stored = chunks[0][2] + chunks[1][2]
    wait_until(
        lambda: text_of(api.logs(a.job.id), STDOUT) == stored,
        what="the first chunks to be stored",
    )
    feed.break_off()
    # The agent does not know what got through: it sends everything again.
    again = agent.push(a, chunks)
    assert again.duplicates == 2 and again.accepted == len(chunks) - 2
    assert (again.stdout_size, again.stderr_size) == (len(OUT), len(ERR))
    # Regrouped resends: one chunk over bytes already stored, and one that overlaps the end.
    regrouped = agent.push(a, [(STDOUT, 0, OUT), (STDERR, 2, ERR[2:])])
    assert regrouped.accepted == 0 and regrouped.duplicates == 2
    overlap = agent.push(a, [(STDOUT, len(OUT) - 3, OUT[-3:] + b"tail\n")])
    assert overlap.accepted == 1 and overlap.stdout_size == len(OUT) + 5
    # A chunk leaving a hole is refused and stores nothing.
    gap = failure(lambda: agent.push(a, [(STDOUT, len(OUT) + 100, b"hole")]))
    assert gap.code in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION), gap
    agent.complete(a, S.JOB_STATE_COMPLETED, 0)
    frames = api.logs(a.job.id)
    assert text_of(frames, STDOUT) == OUT + b"tail\n"
    assert text_of(frames, STDERR) == ERR
    end = end_of(frames)
    assert (end.stdout_size, end.stderr_size) == (len(OUT) + 5, len(ERR))


def test_stored_logs_from_offsets(api: Api, finished: str) -> None:
    whole = api.logs(finished)
    assert text_of(whole, STDOUT) == OUT and text_of(whole, STDERR) == ERR
    end = end_of(whole)
    assert end.state == S.JOB_STATE_COMPLETED and end.exit_code == 0
    for offset in (0, 1, 4, 5, 6, 18, 19, 47, len(OUT) - 1, len(OUT)):
        frames = api.logs(finished, stdout_offset=offset, streams=[STDOUT])
        assert joined(frames, STDOUT, start=offset) == OUT[offset:], offset
        assert joined(frames, STDERR) == b""
        end_of(frames)
    both = api.logs(finished, stdout_offset=20, stderr_offset=6)
    assert joined(both, STDOUT, 20) == OUT[20:] and joined(both, STDERR, 6) == ERR[6:]


@pytest.mark.parametrize(
    ("lines", "out", "err"),
    [
        (1, b"line 12\n", b"err B\n"),
        (3, b"line 10\nline 11\nline 12\n", ERR),
        (12, OUT, ERR),
        (100, OUT, ERR),
    ],
)
def test_tail_lines(api: Api, finished: str, lines: int, out: bytes, err: bytes) -> None:
    frames = api.logs(finished, tail_lines=lines)
    assert joined(frames, STDOUT, len(OUT) - len(out)) == out
    assert joined(frames, STDERR, len(ERR) - len(err)) == err
    end_of(frames)


def test_only_stderr(api: Api, finished: str) -> None:
    frames = api.logs(finished, streams=[STDERR])
    assert all(f.chunk.stream == STDERR for f in frames if f.WhichOneof("frame") == "chunk")
    assert text_of(frames, STDERR) == ERR
    end = end_of(frames)
    assert end.stderr_size == len(ERR)
    tail = api.logs(finished, streams=[STDERR], tail_lines=1)
    assert joined(tail, STDERR, 6) == b"err B\n" and joined(tail, STDOUT) == b""


def test_without_follow_a_running_job_gives_what_is_stored_and_no_end(api: Api) -> None:
    agent, a = running_job(api, "nofollow")
    agent.push(a, [(STDOUT, 0, b"so far\n")])
    frames = api.logs(a.job.id)
    assert [f.WhichOneof("frame") for f in frames] == ["chunk"]
    assert text_of(frames, STDOUT) == b"so far\n"


@pytest.fixture
def retried(api: Api) -> tuple[str, list[jpb.StreamLogsResponse]]:
    """A job whose attempt 1 wrote "one" and exited 1, and whose attempt 2 wrote "two" and
    exited 0; with the frames of a follower that started before either ran."""
    agent = api.agent("retry")
    job = api.submit(["x"], queue="retry", retry_policy=job_pb2.RetryPolicy(max_attempts=2))
    follower = open_logs(api, job.id, follow=True)
    frames = []
    first = agent.claim_one()
    agent.start(first)
    agent.push(first, [(STDOUT, 0, b"one\n")])
    frames.append(next_output(follower))
    agent.complete(first, S.JOB_STATE_FAILED, 1, "exit status 1")
    second = agent.claim_one()
    assert second.attempt == 2
    agent.start(second)
    agent.push(second, [(STDOUT, 0, b"two\n")])
    frames.append(next_output(follower))
    agent.complete(second, S.JOB_STATE_COMPLETED, 0)
    frames += list(follower)
    return job.id, frames


def test_a_follower_moves_on_to_the_next_attempt(
    retried: tuple[str, list[jpb.StreamLogsResponse]],
) -> None:
    _, frames = retried
    chunks = [f.chunk for f in frames if f.WhichOneof("frame") == "chunk"]
    assert [(c.attempt, c.offset, c.data) for c in chunks] == [(1, 0, b"one\n"), (2, 0, b"two\n")]
    end = end_of(frames)
    assert (end.state, end.exit_code, end.attempt, end.stdout_size) == (
        S.JOB_STATE_COMPLETED,
        0,
        2,
        4,
    )


def test_logs_of_an_earlier_attempt(
    api: Api, retried: tuple[str, list[jpb.StreamLogsResponse]]
) -> None:
    job_id, _ = retried
    frames = api.logs(job_id, attempt=1)
    assert text_of(frames, STDOUT) == b"one\n"
    assert all(f.chunk.attempt == 1 for f in frames if f.WhichOneof("frame") == "chunk")
    end = end_of(frames)
    assert end.attempt == 1 and end.stdout_size == 4
    beyond = failure(lambda: api.logs(job_id, attempt=3))
    assert beyond.code == grpc.StatusCode.OUT_OF_RANGE


def test_end_frame_of_an_earlier_attempt_carries_that_attempts_outcome(
    api: Api, retried: tuple[str, list[jpb.StreamLogsResponse]]
) -> None:
    job_id, _ = retried
    end = end_of(api.logs(job_id, attempt=1))
    assert end.attempt == 1
    assert end.state == job_pb2.JOB_STATE_FAILED
    assert end.HasField("exit_code") and end.exit_code == 1, end
    latest = end_of(api.logs(job_id, attempt=2))
    assert latest.exit_code == 0 and latest.attempt == 2
