"""The store contract, run against every implementation: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gaffer.domain import OutOfRange, StoreUnavailable, new_job_id
from gaffer.store import (
    JobQuery,
    Notifier,
    SqliteStore,
    Store,
    StoredJob,
    job_topic,
)
from gaffer.v1 import job_pb2
from tests.unit.pg_support import (
    either_store_fixture,  # noqa: F401 (the store fixture)
    temporary_database,
)

S = job_pb2.JobState
OUT, ERR = job_pb2.LOG_STREAM_STDOUT, job_pb2.LOG_STREAM_STDERR


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One PostgreSQL database for the session, dropped at its end."""
    yield from temporary_database()


def make_job(
    *,
    labels: dict[str, str] | None = None,
    queue: str = "default",
    priority: int = 0,
    created: float = 1000.0,
    request_id: str = "",
) -> StoredJob:
    job = job_pb2.Job(id=new_job_id(), state=S.JOB_STATE_PENDING, request_id=request_id)
    job.spec.exec.argv.append("true")
    job.spec.labels.update(labels or {})
    job.spec.queue = queue
    job.spec.priority = priority
    job.create_time.FromNanoseconds(int(created * 1e9))
    return StoredJob(job=job, tenant="t1")


async def insert(store: Store, *jobs: StoredJob) -> list[StoredJob]:
    async with store.transaction() as tx:
        return [await tx.insert_job(j) for j in jobs]


async def test_job_round_trips_with_spec_and_history(store: Store) -> None:
    stored = make_job(labels={"team": "a"})
    stored.job.history.add(state=S.JOB_STATE_PENDING, message="submitted")
    [saved] = await insert(store, stored)
    loaded = await store.get_job(saved.job.id)
    assert loaded is not None
    assert loaded.job == stored.job
    assert loaded.tenant == "t1"
    assert await store.get_job("j_missing") is None


async def test_request_id_is_unique_per_tenant(store: Store) -> None:
    await insert(store, make_job(request_id="r1"))
    async with store.transaction() as tx:
        found = await tx.find_request("t1", "r1")
        assert found is not None
        assert await tx.find_request("t2", "r1") is None
    with pytest.raises(Exception):  # noqa: B017 - each store raises its own integrity error
        await insert(store, make_job(request_id="r1"))
    # The failed transaction left nothing behind.
    assert (
        len(await store.list_jobs("t1", JobQuery(), newest_first=True, after_seq=0, limit=10)) == 1
    )


async def test_list_pages_by_cursor_and_filters(store: Store) -> None:
    jobs = await insert(
        store,
        *[
            make_job(labels={"n": str(i % 3)}, queue="q" if i % 2 else "default", created=1000 + i)
            for i in range(10)
        ],
    )
    page1 = await store.list_jobs("t1", JobQuery(), newest_first=True, after_seq=0, limit=4)
    page2 = await store.list_jobs(
        "t1", JobQuery(), newest_first=True, after_seq=page1[-1].seq, limit=4
    )
    assert [j.job.id for j in page1 + page2] == [j.job.id for j in reversed(jobs)][:8]
    oldest = await store.list_jobs("t1", JobQuery(), newest_first=False, after_seq=0, limit=3)
    assert [j.job.id for j in oldest] == [j.job.id for j in jobs[:3]]

    def ids(rows: list[StoredJob]) -> set[str]:
        return {r.job.id for r in rows}

    async def query(q: JobQuery) -> set[str]:
        return ids(await store.list_jobs("t1", q, newest_first=True, after_seq=0, limit=100))

    assert await query(JobQuery(labels=(("n", "1"),))) == {j.job.id for j in jobs[1::3]}
    assert await query(JobQuery(exclude_labels=(("n", "1"),))) == ids(jobs) - ids(jobs[1::3])
    assert await query(JobQuery(queue="q")) == ids(jobs[1::2])
    assert await query(JobQuery(created_after=1003, created_before=1005)) == ids(jobs[3:5])
    assert await query(JobQuery(states=(S.JOB_STATE_RUNNING,))) == set()
    assert await store.list_jobs("other", JobQuery(), newest_first=True, after_seq=0, limit=9) == []


async def test_pending_jobs_by_priority_then_age_and_not_before(store: Store) -> None:
    low, high, later = make_job(priority=0), make_job(priority=5), make_job(priority=9)
    later.not_before = 2000.0
    await insert(store, low, high, later, make_job(queue="other"))
    async with store.transaction() as tx:
        ready = await tx.pending_jobs(["default"], now=1500.0, limit=10)
        assert [j.job.id for j in ready] == [high.job.id, low.job.id]
        ready = await tx.pending_jobs(["default"], now=2500.0, limit=10)
        assert ready[0].job.id == later.job.id


async def test_any_pending_sees_only_ready_jobs_of_the_queues(store: Store) -> None:
    assert not await store.any_pending(["default"], now=1e12)
    later = make_job(queue="q")
    later.not_before = 2000.0
    await insert(store, later, make_job(queue="other"))
    assert not await store.any_pending(["default", "q"], now=1500.0)  # not before 2000
    assert await store.any_pending(["default", "q"], now=2500.0)
    assert await store.any_pending(["other"], now=0.0)
    async with store.transaction() as tx:  # once claimed, it no longer waits
        (taken,) = await tx.pending_jobs(["other"], now=0.0, limit=1)
        taken.job.state = S.JOB_STATE_CLAIMED
        await tx.update_job(taken)
    assert not await store.any_pending(["other"], now=0.0)


async def test_events_are_sequenced_and_filtered(store: Store) -> None:
    a, b = await insert(store, make_job(labels={"k": "a"}), make_job(labels={"k": "b"}))
    before = await store.last_event_seq()
    async with store.transaction() as tx:
        for j in (a, b, a):
            await tx.append_event(
                "t1", job_pb2.JobEvent(job_id=j.job.id, state=S.JOB_STATE_PENDING)
            )
    seqs = [e.sequence for e in await store.read_events("t1", after_seq=before, limit=10)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert await store.last_event_seq() == seqs[-1]
    only_a = await store.read_events("t1", after_seq=0, limit=10, job_id=a.job.id)
    assert [e.sequence for e in only_a] == [seqs[0], seqs[2]]
    after = await store.read_events("t1", after_seq=seqs[0], limit=10)
    assert [e.sequence for e in after] == seqs[1:]
    labelled = await store.read_events(
        "t1", after_seq=0, limit=10, query=JobQuery(labels=(("k", "b"),))
    )
    assert [e.job_id for e in labelled] == [b.job.id]
    assert await store.read_events("t2", after_seq=0, limit=10) == []


async def test_events_appended_together_keep_their_order_and_tenants(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.append_event("t1", job_pb2.JobEvent(job_id="j0", message="alone"))
        await tx.append_events(
            [
                ("t1", job_pb2.JobEvent(job_id="j1", message="one")),
                ("t2", job_pb2.JobEvent(job_id="j2", message="two")),
                ("t1", job_pb2.JobEvent(job_id="j3", message="three")),
            ]
        )
        await tx.append_events([])
    first = (await store.tail_events(after_seq=0, limit=1))[0][1].sequence
    tail = await store.tail_events(after_seq=first, limit=10)
    assert [(t, e.message, e.sequence) for t, e in tail] == [
        ("t1", "one", first + 1),
        ("t2", "two", first + 2),
        ("t1", "three", first + 3),
    ]
    assert [e.message for e in await store.read_events("t1", after_seq=first, limit=10)] == [
        "one",
        "three",
    ]


async def test_logs_ignore_resent_bytes_and_refuse_gaps(store: Store) -> None:
    async with store.transaction() as tx:
        first = await tx.append_log("j", 1, OUT, 0, b"hello ")
        again = await tx.append_log("j", 1, OUT, 0, b"hello ")
        regrouped = await tx.append_log("j", 1, OUT, 3, b"lo world\n")
        await tx.append_log("j", 1, ERR, 0, b"oops\n")
    assert first.accepted and not again.accepted and regrouped.accepted
    assert regrouped.stdout_size == len(b"hello world\n")
    with pytest.raises(OutOfRange):
        async with store.transaction() as tx:
            await tx.append_log("j", 1, OUT, 100, b"gap")
    chunks = await store.read_logs("j", 1, {OUT: 0, ERR: 0}, 1 << 20)
    assert b"".join(c.data for c in chunks if c.stream == OUT) == b"hello world\n"
    assert b"".join(c.data for c in chunks if c.stream == ERR) == b"oops\n"
    from_middle = await store.read_logs("j", 1, {OUT: 8}, 1 << 20)
    assert [(c.offset, c.data) for c in from_middle] == [(8, b"rld\n")]
    assert await store.log_sizes("j", 1) == {OUT: 12, ERR: 5}
    assert await store.read_logs("j", 2, {OUT: 0}, 1 << 20) == []


async def test_tail_offset_counts_lines_across_chunks(store: Store) -> None:
    text = b"".join(f"line {i}\n".encode() for i in range(1, 11))
    async with store.transaction() as tx:
        for start in range(0, len(text), 7):
            await tx.append_log("j", 1, OUT, start, text[start : start + 7])
    offset = await store.tail_offset("j", 1, OUT, 3)
    assert text[offset:] == b"line 8\nline 9\nline 10\n"
    assert await store.tail_offset("j", 1, OUT, 100) == 0
    assert await store.tail_offset("j", 1, ERR, 3) == 0


async def test_leases_renew_and_lapse(store: Store) -> None:
    [held] = await insert(store, make_job())
    held.job.state = S.JOB_STATE_RUNNING
    held.job.agent_id = "a1"
    held.lease_token, held.lease_expires = "tok", 100.0
    async with store.transaction() as tx:
        await tx.update_job(held)
        assert [j.job.id for j in await tx.jobs_of_agent("a1")] == [held.job.id]
        assert [j.job.id for j in await tx.lapsed_jobs(150.0, 10)] == [held.job.id]
        await tx.renew_leases("a1", 200.0, [])  # the agent no longer lists it: not renewed
        assert [j.job.id for j in await tx.lapsed_jobs(150.0, 10)] == [held.job.id]
        await tx.renew_leases("other-agent", 200.0, [held.job.id])  # not its holder
        assert [j.job.id for j in await tx.lapsed_jobs(150.0, 10)] == [held.job.id]
        await tx.renew_leases("a1", 200.0, [held.job.id])
        assert await tx.lapsed_jobs(150.0, 10) == []
    assert [j.job.id for j in await store.jobs_of_agent("a1")] == [held.job.id]
    assert await store.jobs_of_agent("nobody") == []


async def test_extend_leases_only_moves_earlier_ones(store: Store) -> None:
    early, late = await insert(store, make_job(), make_job())
    for stored, expires in ((early, 100.0), (late, 900.0)):
        stored.job.state = S.JOB_STATE_RUNNING
        stored.lease_expires = expires
        stored.deadline = expires
    async with store.transaction() as tx:
        await tx.update_job(early)
        await tx.update_job(late)
        assert await tx.extend_leases(500.0) == 1
        assert await tx.lapsed_jobs(499.0, 10) == []
    moved = await store.get_job(early.job.id)
    kept = await store.get_job(late.job.id)
    assert moved is not None and kept is not None
    assert (moved.lease_expires, moved.deadline) == (500.0, 500.0)
    assert (kept.lease_expires, kept.deadline) == (900.0, 900.0)


async def test_failed_transaction_changes_nothing_and_publishes_nothing(tmp_path: Path) -> None:
    notifier = Notifier()
    store = SqliteStore(tmp_path / "d", notifier)
    await store.open()
    try:
        with notifier.subscribe(job_topic("x")) as sub:
            with pytest.raises(RuntimeError):
                async with store.transaction() as tx:
                    await tx.insert_job(make_job())
                    tx.topics.add(job_topic("x"))
                    raise RuntimeError("boom")
            assert not await sub.wait(0)
            assert (
                await store.list_jobs("t1", JobQuery(), newest_first=True, after_seq=0, limit=5)
                == []
            )
            async with store.transaction() as tx:
                tx.topics.add(job_topic("x"))
            assert await sub.wait(1.0)
    finally:
        await store.close()


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "d", Notifier())
    await store.open()
    [job] = await insert(store, make_job())
    await store.close()
    reopened = SqliteStore(tmp_path / "d", Notifier())
    await reopened.open()  # migrations already applied: a no-op
    try:
        assert await reopened.get_job(job.job.id) is not None
    finally:
        await reopened.close()


async def test_concurrent_transactions_stay_whole(store: Store) -> None:
    results = await asyncio.gather(*(insert(store, make_job(), make_job()) for _ in range(20)))
    committed = [[await store.get_job(j.job.id) for j in pair] for pair in results]
    seqs = sorted(j.seq for pair in committed for j in pair if j is not None)
    assert len(set(seqs)) == 40
    # Each transaction's two jobs got neighbouring sequence numbers: nothing interleaved.
    assert all(a and b and b.seq == a.seq + 1 for a, b in committed)


async def test_transactions_cancelled_at_any_point_leave_the_store_usable(store: Store) -> None:
    """A caller cancelled mid-transaction (a client gone, a long poll cut) must not wedge writes."""

    async def write(i: int) -> None:
        async with store.transaction() as tx:
            await tx.insert_job(make_job())
            for _ in range(i % 4):
                await tx.append_event("t1", job_pb2.JobEvent(job_id="j", state=S.JOB_STATE_PENDING))

    for i in range(200):
        task = asyncio.create_task(write(i))
        for _ in range(i % 7):
            await asyncio.sleep(0)  # let the task get a little further each round before the cut
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [job] = await insert(store, make_job())
    assert await store.get_job(job.job.id) is not None


async def test_a_job_inserted_with_its_first_event(store: Store) -> None:
    stored = make_job()
    async with store.transaction() as tx:
        event = job_pb2.JobEvent(job_id=stored.job.id, message="submitted")
        await tx.insert_job_with_event(stored, event)
    saved = await store.get_job(stored.job.id)
    assert saved is not None and saved.seq > 0
    events = await store.read_events(saved.tenant, after_seq=0, limit=10, job_id=stored.job.id)
    assert [e.message for e in events] == ["submitted"]


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "data", Notifier())
    await store.open()
    yield store
    await store.close()


async def _submit(store: Store, stored: StoredJob, *, fail: bool = False) -> None:
    async with store.transaction() as tx:
        await tx.insert_job_with_event(stored, job_pb2.JobEvent(job_id=stored.job.id))
        if fail:
            raise RuntimeError("the body failed after its insert")


async def test_new_jobs_written_at_commit_only_for_bodies_that_succeed(
    sqlite_store: SqliteStore,
) -> None:
    """SQLite writes new jobs (no request_id) in bulk at commit; a failed body's stay out."""
    kept, dropped = make_job(), make_job()
    failed, ok = await asyncio.gather(
        _submit(sqlite_store, dropped, fail=True), _submit(sqlite_store, kept),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(failed, RuntimeError) and ok is None
    assert await sqlite_store.get_job(dropped.job.id) is None
    saved = await sqlite_store.get_job(kept.job.id)
    assert saved is not None and saved.seq > 0
    events = await sqlite_store.read_events("t1", after_seq=0, limit=10)
    assert [e.job_id for e in events] == [kept.job.id]


async def _submit_once(store: Store, stored: StoredJob) -> str:
    """What Jobs.submit does with a request_id: the first job made for it, or this one."""
    async with store.transaction() as tx:
        found = await tx.find_request(stored.tenant, stored.job.request_id)
        if found is not None:
            return found.job.id
        await tx.insert_job_with_event(stored, job_pb2.JobEvent(job_id=stored.job.id))
        return stored.job.id


async def test_a_request_id_repeated_before_the_commit_finds_the_first_job(
    sqlite_store: SqliteStore,
) -> None:
    """New jobs wait for the commit to be written; a repeat in the same batch (another
    body, or the same one) must still find the first, not make a second job."""
    first, again = make_job(request_id="r1"), make_job(request_id="r1")
    ids = await asyncio.gather(_submit_once(sqlite_store, first), _submit_once(sqlite_store, again))
    assert ids == [first.job.id, first.job.id]
    async with sqlite_store.transaction() as tx:
        both = make_job(request_id="r2")
        await tx.insert_job_with_event(both, job_pb2.JobEvent(job_id=both.job.id))
        found = await tx.find_request("t1", "r2")
        assert found is not None and found.job.id == both.job.id and found.job is not both.job
    query = JobQuery()
    listed = await sqlite_store.list_jobs("t1", query, newest_first=False, after_seq=0, limit=9)
    assert [j.job.request_id for j in listed] == ["r1", "r2"]
    assert (await sqlite_store.get_job(first.job.id)) is not None


async def test_a_job_written_at_commit_cannot_be_updated_by_another_body_before_it(
    sqlite_store: SqliteStore,
) -> None:
    """Another body of the same batch sees no row to update yet: it is refused, and the
    job is written as its own body left it."""
    stored = make_job()
    inserted = asyncio.Event()

    async def other_body() -> None:
        await inserted.wait()
        async with sqlite_store.transaction() as tx:
            stored.job.state = S.JOB_STATE_CLAIMED
            await tx.update_job(stored)

    async def inserting_body() -> None:
        async with sqlite_store.transaction() as tx:
            await tx.insert_job_with_event(stored, job_pb2.JobEvent(job_id=stored.job.id))
            inserted.set()

    results = await asyncio.gather(inserting_body(), other_body(), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], ValueError) and "not written yet" in str(results[1])
    found = await sqlite_store.get_job(stored.job.id)
    assert found is not None and found.job.state == S.JOB_STATE_PENDING


async def test_a_job_inserted_in_a_transaction_is_updated_and_followed_by_events_in_it(
    store: Store,
) -> None:
    """What a handoff does in the submit's transaction: the job commits as last written,
    and its events in the order they were appended."""
    stored = make_job()
    before = await store.last_event_seq()
    async with store.transaction() as tx:
        created = job_pb2.JobEvent(job_id=stored.job.id, state=S.JOB_STATE_PENDING)
        await tx.insert_job_with_event(stored, created)
        stored.job.state = S.JOB_STATE_CLAIMED
        stored.lease_token = "lease-1"
        await tx.update_job(stored)
        await tx.append_events(
            [("t1", job_pb2.JobEvent(job_id=stored.job.id, state=S.JOB_STATE_CLAIMED))]
        )
        await tx.append_event(
            "t1", job_pb2.JobEvent(job_id=stored.job.id, state=S.JOB_STATE_RUNNING)
        )
    found = await store.get_job(stored.job.id)
    assert found is not None
    assert (found.job.state, found.lease_token) == (S.JOB_STATE_CLAIMED, "lease-1")
    events = await store.read_events("t1", after_seq=before, limit=10)
    assert [e.state for e in events] == [
        S.JOB_STATE_PENDING,
        S.JOB_STATE_CLAIMED,
        S.JOB_STATE_RUNNING,
    ]


async def test_a_transaction_tells_whether_it_committed(store: Store) -> None:
    """when_settled: True after a commit (before the topics wake anyone), False when the
    body fails; each callback once."""
    heard: list[tuple[str, bool]] = []
    woken_before: list[bool] = []
    notifier: Notifier = store._notifier  # type: ignore[attr-defined]
    with notifier.subscribe("queue:settle") as sub:

        def first(ok: bool) -> None:
            heard.append(("first", ok))
            woken_before.append(sub._event.is_set())

        async with store.transaction() as tx:
            tx.topics.add("queue:settle")
            tx.when_settled(first)
        assert heard == [("first", True)] and woken_before == [False]
        assert await sub.wait(0)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            tx.when_settled(lambda ok: heard.append(("second", ok)))
            raise RuntimeError("the body failed")
    assert heard == [("first", True), ("second", False)]


async def test_a_failed_bulk_write_fails_its_whole_batch_and_the_next_one_commits(
    sqlite_store: SqliteStore,
) -> None:
    """Two bodies of one batch defer jobs with the same id: the bulk insert breaks the
    unique index, every caller of the batch hears of it, nothing of it stays."""
    first, clash = make_job(), make_job()
    clash.job.id = first.job.id
    results = await asyncio.gather(
        _submit(sqlite_store, first), _submit(sqlite_store, clash), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert await sqlite_store.get_job(first.job.id) is None
    assert await sqlite_store.read_events("t1", after_seq=0, limit=10) == []
    later = make_job()
    await _submit(sqlite_store, later)
    assert await sqlite_store.get_job(later.job.id) is not None


async def test_a_transaction_reads_its_own_updates_and_keeps_event_order(store: Store) -> None:
    """PostgreSQL holds updates and events back until a read or the commit: neither may show."""
    a, b, c = await insert(store, make_job(), make_job(), make_job())
    async with store.transaction() as tx:
        found = await tx.get_jobs([c.job.id, a.job.id, "j_missing", a.job.id])
        assert sorted(found) == sorted([a.job.id, c.job.id])
        for stored in (found[a.job.id], found[c.job.id]):
            stored.job.state = S.JOB_STATE_CLAIMED
            stored.job.agent_id = "agent-1"
            await tx.write_change(
                stored, job_pb2.JobEvent(job_id=stored.job.id, message=f"claimed {stored.job.id}")
            )
        # Reads in the same transaction see both updates.
        assert [p.job.id for p in await tx.pending_jobs(["default"], 2000.0, 10)] == [b.job.id]
        assert await tx.count_held("agent-1") == 2
        again = await tx.get_job(a.job.id)
        assert again is not None and again.job.state == S.JOB_STATE_CLAIMED
        await tx.append_event("t1", job_pb2.JobEvent(job_id=b.job.id, message="last"))
    events = await store.read_events("t1", after_seq=0, limit=10)
    assert [e.message for e in events] == [f"claimed {a.job.id}", f"claimed {c.job.id}", "last"]
    stored_c = await store.get_job(c.job.id)
    assert stored_c is not None and stored_c.job.agent_id == "agent-1"
