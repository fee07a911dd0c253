"""ListJobs over 250 jobs: stable pages while jobs keep arriving, and exact filters."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from gaffer.v1 import job_pb2
from gaffer.v1 import job_service_pb2 as jpb
from tests.e2e.conftest import Api, run_in_thread
from tests.helpers import ServerProc, wait_until

pytestmark = pytest.mark.e2e

S = job_pb2.JobState
TOTAL = 250
PAGE = 40
COLORS = ("red", "green", "blue")
# Index -> role: every 25th job from 1 is cancelled while pending; from 2 and 3 they go to the
# "work" queue, where a hand-driven agent completes the first kind and fails the second.
CANCELED = {i for i in range(TOTAL) if i % 25 == 1}
COMPLETED = {i for i in range(TOTAL) if i % 25 == 2}
FAILED = {i for i in range(TOTAL) if i % 25 == 3}
WORK = COMPLETED | FAILED


def labels_of(i: int) -> dict[str, str]:
    return {"batch": "list", "color": COLORS[i % 3], "parity": "even" if i % 2 == 0 else "odd"}


@pytest.fixture
def jobs(api: Api) -> list[job_pb2.Job]:
    """250 jobs, submitted one after another (so that creation order is submission order)."""
    return [
        api.submit(["true"], labels=labels_of(i), queue="work" if i in WORK else "")
        for i in range(TOTAL)
    ]


class Submitter:
    """Keeps submitting jobs through its own channel until stopped."""

    def __init__(self, address: str) -> None:
        self.api = Api.connect(address)
        self.ids: list[str] = []
        self.stop = threading.Event()
        self.thread, self.errors = run_in_thread(self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.ids.append(self.api.submit(["true"], labels={"batch": "extra"}).id)
            # Pacing, not synchronisation: new jobs arrive all through the paging.
            self.stop.wait(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.api.close()
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


@pytest.mark.parametrize("order", [jpb.LIST_ORDER_NEWEST_FIRST, jpb.LIST_ORDER_OLDEST_FIRST])
def test_pages_never_skip_or_repeat_while_jobs_arrive(
    server: ServerProc, api: Api, jobs: list[job_pb2.Job], order: int
) -> None:
    submitter = Submitter(server.address)
    try:
        wait_until(lambda: len(submitter.ids) >= 5, what="the background submitter to start")
        existing = [job.id for job in jobs] + list(submitter.ids)
        pages: list[list[str]] = []
        token = ""
        while True:
            response = api.jobs.ListJobs(
                jpb.ListJobsRequest(order=order, page_size=PAGE, page_token=token),  # type: ignore[arg-type]
                timeout=15,
            )
            pages.append([job.id for job in response.jobs])
            token = response.next_page_token
            if not token:
                break
            assert len(pages) < 100, "the listing never ended"
            # A new job lands between every two pages.
            stored = len(submitter.ids)
            wait_until(lambda n=stored: len(submitter.ids) > n, what="another job to arrive")
    finally:
        submitter.finish()
    assert len(pages) >= TOTAL // PAGE
    assert all(len(page) == PAGE for page in pages[:-1]), [len(p) for p in pages]
    seen = [job_id for page in pages for job_id in page]
    repeated = [job_id for job_id, n in Counter(seen).items() if n > 1]
    assert not repeated, f"{len(repeated)} jobs were listed twice"
    missing = set(existing) - set(seen)
    assert not missing, f"{len(missing)} jobs that existed before the first page were skipped"
    # The listing is ordered: the jobs that existed come in creation order (or its reverse).
    in_listing = [job_id for job_id in seen if job_id in set(existing)]
    assert in_listing == (existing[::-1] if order == jpb.LIST_ORDER_NEWEST_FIRST else existing)
    newer = set(submitter.ids) - set(existing)
    if order == jpb.LIST_ORDER_NEWEST_FIRST:
        # Only jobs stored before the first page was read can precede the older ones; nothing
        # newer ever shows up on a later page.
        head, tail = seen[: len(seen) - len(existing)], seen[len(seen) - len(existing) :]
        assert tail == existing[::-1]
        assert set(head) <= newer
    else:
        assert seen[: len(existing)] == existing
        assert set(seen[len(existing) :]) <= newer


def test_default_order_is_newest_first_and_default_page_size_is_50(
    api: Api, jobs: list[job_pb2.Job]
) -> None:
    response = api.jobs.ListJobs(jpb.ListJobsRequest(), timeout=15)
    assert [j.id for j in response.jobs] == [j.id for j in jobs[::-1][:50]]
    assert response.next_page_token
    last = api.jobs.ListJobs(jpb.ListJobsRequest(page_size=1000), timeout=15)
    assert len(last.jobs) == TOTAL and not last.next_page_token


def _ids(jobs: list[job_pb2.Job], indexes: set[int] | range) -> set[str]:
    return {jobs[i].id for i in indexes}


def test_filters_are_exact(server: ServerProc, api: Api, jobs: list[job_pb2.Job]) -> None:
    for i in sorted(CANCELED):
        canceled = api.jobs.CancelJob(jpb.CancelJobRequest(job_id=jobs[i].id), timeout=15).job
        assert canceled.state == S.JOB_STATE_CANCELED
    agent = api.agent("work")
    by_id = {job.id: i for i, job in enumerate(jobs)}
    for assignment in agent.claim(len(WORK)):
        i = by_id[assignment.job.id]
        agent.finish(assignment, exit_code=0 if i in COMPLETED else 1)
    # Jobs of another batch arrive meanwhile; label filters must keep them out.
    submitter = Submitter(server.address)
    wait_until(lambda: len(submitter.ids) >= 3, what="the background submitter to start")

    def listed(**fields: object) -> set[str]:
        flt = jpb.JobFilter(**fields)  # type: ignore[arg-type]
        for order in (jpb.LIST_ORDER_NEWEST_FIRST, jpb.LIST_ORDER_OLDEST_FIRST):
            ids = api.list_ids(flt, order=order, page_size=PAGE)
            assert len(ids) == len(set(ids)), f"a job was listed twice for {flt}"
        return set(ids)

    batch = {"batch": "list"}
    everything = set(range(TOTAL))
    try:
        assert listed(states=[S.JOB_STATE_CANCELED]) == _ids(jobs, CANCELED)
        assert listed(states=[S.JOB_STATE_COMPLETED]) == _ids(jobs, COMPLETED)
        assert listed(states=[S.JOB_STATE_FAILED]) == _ids(jobs, FAILED)
        assert listed(states=[S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED]) == _ids(jobs, WORK)
        assert listed(states=[S.JOB_STATE_PENDING], labels=batch) == _ids(
            jobs, everything - CANCELED - WORK
        )
        assert listed(states=[S.JOB_STATE_RUNNING]) == set()

        red = {i for i in everything if i % 3 == 0}
        even = {i for i in everything if i % 2 == 0}
        assert listed(labels={"color": "red"}) == _ids(jobs, red)
        assert listed(labels={"color": "red", "parity": "even"}) == _ids(jobs, red & even)
        assert listed(labels=batch, exclude_labels={"color": "red"}) == _ids(jobs, everything - red)
        assert listed(labels=batch, exclude_labels={"color": "red", "parity": "odd"}) == _ids(
            jobs, even - red
        )
        assert listed(labels={"color": "purple"}) == set()
        assert listed(
            states=[S.JOB_STATE_CANCELED], labels={"color": "red"}, exclude_labels={"parity": "odd"}
        ) == _ids(jobs, CANCELED & red & even)

        assert listed(queue="work") == _ids(jobs, WORK)
        assert listed(queue="default", labels=batch) == _ids(jobs, everything - WORK)
        assert listed(queue="nowhere") == set()

        lo, hi = jobs[100].create_time, jobs[200].create_time
        assert listed(created_after=lo, created_before=hi) == _ids(jobs, range(100, 200))
        assert listed(created_before=lo) == _ids(jobs, range(100))
        assert listed(created_after=hi, labels=batch) == _ids(jobs, range(200, TOTAL))
        assert listed(created_after=lo, created_before=hi, states=[S.JOB_STATE_CANCELED]) == (
            _ids(jobs, CANCELED & set(range(100, 200)))
        )
    finally:
        submitter.finish()


@pytest.mark.parametrize("key", ["app.kubernetes.io/name", "a.b", "x-y_z", "Team"])
def test_label_filters_with_dotted_and_slashed_keys(api: Api, key: str) -> None:
    match = api.submit(["true"], labels={key: "v1"})
    other = api.submit(["true"], labels={key: "v2"})
    unlabelled = api.submit(["true"], labels={"unrelated": "v1"})
    assert api.list_ids(jpb.JobFilter(labels={key: "v1"})) == [match.id]
    assert api.list_ids(jpb.JobFilter(exclude_labels={key: "v1"})) == [unlabelled.id, other.id]
