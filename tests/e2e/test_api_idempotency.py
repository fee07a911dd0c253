"""SubmitJob's request_id: a repeat, even 20 at once, gives one job; validate_only stores none."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, failure
from tests.e2e.pg_fixtures import pg_database_fixture, server_both_stores  # noqa: F401

pytestmark = pytest.mark.e2e

S = job_pb2.JobState


def submit(api: Api, request_id: str, *argv: str) -> jpb.SubmitJobResponse:
    return api.jobs.SubmitJob(
        jpb.SubmitJobRequest(spec=api.spec(argv or ("true",)), request_id=request_id),
        timeout=CALL_TIMEOUT,
    )


def test_repeated_request_id_returns_the_first_job(api: Api) -> None:
    first = submit(api, "req-1", "echo", "one")
    again = submit(api, "req-1", "echo", "one")
    assert not first.existing
    assert again.existing
    assert again.job.id == first.job.id
    assert again.job.request_id == "req-1"
    # Even with another spec, the repeat answers with the first job and stores nothing new.
    other_spec = submit(api, "req-1", "echo", "two")
    assert other_spec.existing and other_spec.job.id == first.job.id
    assert list(other_spec.job.spec.exec.argv) == ["echo", "one"]
    assert api.list_ids() == [first.job.id]
    assert api.get(first.job.id).request_id == "req-1"


def test_different_request_ids_and_no_request_id_give_different_jobs(api: Api) -> None:
    a = submit(api, "req-a")
    b = submit(api, "req-b")
    anon1, anon2 = submit(api, ""), submit(api, "")
    ids = [r.job.id for r in (a, b, anon1, anon2)]
    assert not any(r.existing for r in (a, b, anon1, anon2))
    assert len(set(ids)) == 4
    assert sorted(api.list_ids()) == sorted(ids)


def test_twenty_concurrent_submits_with_one_request_id_store_one_job(api: Api) -> None:
    clients = [Api.connect(api.address) for _ in range(4)]
    start = threading.Barrier(20)

    def one(n: int) -> jpb.SubmitJobResponse:
        start.wait(CALL_TIMEOUT)
        return submit(clients[n % len(clients)], "same-request", "echo", str(n))

    try:
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(one, range(20)))
    finally:
        for client in clients:
            client.close()
    ids = {r.job.id for r in responses}
    assert len(ids) == 1, f"{len(ids)} jobs for one request_id"
    assert sum(not r.existing for r in responses) == 1, "exactly one submit stored the job"
    assert api.list_ids() == list(ids)
    # Every answer describes the one stored job, spec included.
    stored = api.get(ids.pop())
    assert all(r.job.spec == stored.spec for r in responses)


def test_validate_only_stores_nothing(api: Api) -> None:
    checked = api.jobs.SubmitJob(
        jpb.SubmitJobRequest(spec=api.spec(["true"]), request_id="vo-1", validate_only=True),
        timeout=CALL_TIMEOUT,
    )
    assert not checked.existing
    assert checked.job.state == S.JOB_STATE_PENDING
    assert api.list_ids() == []
    if checked.job.id:
        assert failure(lambda: api.get(checked.job.id)).code == grpc.StatusCode.NOT_FOUND
    # The request_id was not used up: the real submit stores the job.
    real = submit(api, "vo-1")
    assert not real.existing
    assert api.list_ids() == [real.job.id]
    # And a validate_only repeat of a stored request_id stores nothing more.
    api.jobs.SubmitJob(
        jpb.SubmitJobRequest(spec=api.spec(["true"]), request_id="vo-1", validate_only=True),
        timeout=CALL_TIMEOUT,
    )
    assert api.list_ids() == [real.job.id]


def test_request_id_of_a_finished_job_still_returns_it(api: Api) -> None:
    first = submit(api, "req-done")
    api.jobs.CancelJob(jpb.CancelJobRequest(job_id=first.job.id), timeout=CALL_TIMEOUT)
    again = submit(api, "req-done")
    assert again.existing and again.job.id == first.job.id
    assert again.job.state == S.JOB_STATE_CANCELED
    assert api.list_ids() == [first.job.id]
