"""SubmitJobs: several jobs in one durable write; all stored or, if any is invalid, none."""

from __future__ import annotations

import grpc
import pytest

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import CALL_TIMEOUT, Api, duration, failure
from tests.e2e.pg_fixtures import pg_database_fixture, server_both_stores  # noqa: F401

pytestmark = pytest.mark.e2e

S = job_pb2.JobState


def item(api: Api, *argv: str, request_id: str = "", **fields: object) -> jpb.SubmitJobRequest:
    return jpb.SubmitJobRequest(spec=api.spec(argv or ("true",), **fields), request_id=request_id)


def submit_jobs(
    api: Api, *items: jpb.SubmitJobRequest, validate_only: bool = False
) -> list[jpb.SubmitJobResponse]:
    request = jpb.SubmitJobsRequest(jobs=items, validate_only=validate_only)
    return list(api.jobs.SubmitJobs(request, timeout=CALL_TIMEOUT).results)


def test_every_job_is_stored_pending_in_the_request_order(api: Api) -> None:
    results = submit_jobs(
        api, item(api, "echo", "one"), item(api, "echo", "two", queue="other"), item(api)
    )
    assert [list(r.job.spec.exec.argv) for r in results] == [
        ["echo", "one"],
        ["echo", "two"],
        ["true"],
    ]
    assert [r.job.spec.queue for r in results] == ["default", "other", "default"]
    assert not any(r.existing for r in results)
    assert len({r.job.id for r in results}) == 3
    for result in results:
        stored = api.get(result.job.id)
        assert stored.state == S.JOB_STATE_PENDING
        assert stored.spec == result.job.spec
        assert [h.state for h in stored.history] == [S.JOB_STATE_PENDING]
    assert sorted(api.list_ids()) == sorted(r.job.id for r in results)


def test_a_waiting_agent_claims_jobs_of_a_batch(api: Api) -> None:
    agent = api.agent("batch-q", slots=8)
    (first, second) = submit_jobs(api, item(api, queue="batch-q"), item(api, queue="batch-q"))
    claimed = {a.job.id for a in agent.claim(2)}
    assert claimed == {first.job.id, second.job.id}


def test_request_ids_repeat_across_calls_and_within_one(api: Api) -> None:
    (before,) = submit_jobs(api, item(api, "echo", "first", request_id="bulk-1"))
    results = submit_jobs(
        api,
        item(api, "echo", "again", request_id="bulk-1"),  # stored by the earlier call
        item(api, "echo", "new", request_id="bulk-2"),
        item(api, "echo", "twice", request_id="bulk-2"),  # repeats the one just above
    )
    assert [r.existing for r in results] == [True, False, True]
    assert results[0].job.id == before.job.id
    assert list(results[0].job.spec.exec.argv) == ["echo", "first"]
    assert results[2].job.id == results[1].job.id
    assert list(results[2].job.spec.exec.argv) == ["echo", "new"]
    assert sorted(api.list_ids()) == sorted({before.job.id, results[1].job.id})
    # A single SubmitJob with the same request_id finds the batch's job too.
    again = api.jobs.SubmitJob(item(api, request_id="bulk-2"), timeout=CALL_TIMEOUT)
    assert again.existing and again.job.id == results[1].job.id


def test_one_invalid_spec_stores_none_and_names_every_problem(api: Api) -> None:
    before = api.count()
    bad_timeout = item(api, timeout=duration(-1))
    f = failure(
        lambda: submit_jobs(
            api,
            item(api),
            jpb.SubmitJobRequest(spec=job_pb2.JobSpec()),  # no executor
            bad_timeout,
            jpb.SubmitJobRequest(request_id="no-spec"),
            jpb.SubmitJobRequest(spec=api.spec(), validate_only=True),
            item(api, request_id="x" * 129),
        )
    )
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f.reason == "INVALID_SPEC"
    assert f.names("jobs[1].spec.exec")
    assert f.names("jobs[2].spec.timeout")
    assert f.names("jobs[3].spec")
    assert f.names("jobs[4].validate_only")
    assert f.names("jobs[5].request_id")
    assert not any(field.startswith("jobs[0]") for field in f.fields)
    assert "jobs[1].spec.exec: an executor is required" in f.message
    assert api.count() == before


def test_validate_only_checks_every_spec_and_stores_nothing(api: Api) -> None:
    before = api.count()
    results = submit_jobs(api, item(api), item(api, request_id="dry-1"), validate_only=True)
    assert [r.job.state for r in results] == [S.JOB_STATE_PENDING] * 2
    assert api.count() == before
    f = failure(lambda: submit_jobs(api, item(api), jpb.SubmitJobRequest(), validate_only=True))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT and f.names("jobs[1].spec")
    # Nothing was stored, so the request_id is still free.
    (stored,) = submit_jobs(api, item(api, request_id="dry-1"))
    assert not stored.existing


@pytest.mark.parametrize("count", [0, 1001])
def test_a_call_with_no_or_too_many_jobs_is_invalid(api: Api, count: int) -> None:
    before = api.count()
    f = failure(lambda: submit_jobs(api, *[item(api)] * count))
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f.names("jobs")
    assert "1 to 1000 jobs" in f.message
    assert api.count() == before
