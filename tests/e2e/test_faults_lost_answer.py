"""Idempotency under a lost answer: the server commits, the client's deadline has passed.

Submits go out with deadlines around a millisecond, each with its own request_id and label,
until some time out on the client although the server stored the job: an answer really lost
on the way, not a simulated one. Retrying such a submit with its request_id returns that job,
marked as existing, and never makes a second one.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import grpc

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.chaos.rig import Rig
from tests.e2e.conftest import CALL_TIMEOUT

WANTED = 3  # lost answers to retry
SEARCH_FOR = 30.0  # seconds


def test_retry_after_lost_answer_gives_one_job(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        lost: list[tuple[jpb.SubmitJobRequest, str]] = []  # (request, id of the stored job)
        not_stored: list[jpb.SubmitJobRequest] = []  # timed out before the commit
        deadlines_us = itertools.cycle(range(100, 5000, 100))
        stop_at = time.monotonic() + SEARCH_FOR
        for n in itertools.count():
            if len(lost) >= WANTED or time.monotonic() > stop_at:
                break
            request = jpb.SubmitJobRequest(
                spec=rig.spec(["true"], labels={"probe": f"p{n}"}), request_id=f"lost-{n}"
            )
            try:
                rig.api.jobs.SubmitJob(request, timeout=next(deadlines_us) / 1e6)
                continue  # answered in time: not the case we are after
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
            stored = _with_label(rig, f"p{n}")
            if not stored:
                not_stored.append(request)
                continue
            assert len(stored) == 1
            lost.append((request, stored[0].id))

        assert lost, f"no answer was lost after commit within {SEARCH_FOR}s"
        for request, job_id in lost:
            retried = rig.api.jobs.SubmitJob(request, timeout=CALL_TIMEOUT)
            assert retried.existing, "a retry with the same request_id must return the first job"
            assert retried.job.id == job_id
            again = rig.api.jobs.SubmitJob(request, timeout=CALL_TIMEOUT)
            assert again.existing and again.job.id == job_id
            label = request.spec.labels["probe"]
            assert [j.id for j in _with_label(rig, label)] == [job_id]
        # A submit that timed out with nothing stored yet (its commit may still be on the way)
        # is settled by its retry: one job either way.
        for request in not_stored[:3]:
            made = rig.api.jobs.SubmitJob(request, timeout=CALL_TIMEOUT)
            again = rig.api.jobs.SubmitJob(request, timeout=CALL_TIMEOUT)
            assert again.existing and again.job.id == made.job.id
            assert [j.id for j in _with_label(rig, request.spec.labels["probe"])] == [made.job.id]
        print(f"{len(lost)} answers lost after commit, {len(not_stored)} timeouts before it")


def _with_label(rig: Rig, value: str) -> list[job_pb2.Job]:
    response = rig.api.jobs.ListJobs(
        jpb.ListJobsRequest(filter=jpb.JobFilter(labels={"probe": value}), page_size=10),
        timeout=CALL_TIMEOUT,
    )
    return list(response.jobs)
