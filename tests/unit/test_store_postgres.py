"""What only the PostgreSQL store has to prove: several replicas on one database."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from gaffer.domain import AlreadyExists, StoreUnavailable
from gaffer.store import JobQuery, Notifier, PostgresStore, job_topic
from gaffer.store._pg_notify import MAX_PAYLOAD_BYTES, decode_payload, encode_payloads
from gaffer.store._postgres_schema import MIGRATIONS
from gaffer.v1 import job_pb2
from tests.helpers import wait_until_async
from tests.unit.pg_support import fresh_schema, temporary_database
from tests.unit.test_store import insert, make_job

S = job_pb2.JobState
OpenStore = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    yield from temporary_database()


@pytest.fixture
async def dsn(pg_database: str) -> str:
    return await fresh_schema(pg_database)


@pytest.fixture
async def open_store(dsn: str, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens PostgresStore "replicas" on the test schema, each with its own Notifier."""
    opened: list[PostgresStore] = []

    async def open_one(*, notify: bool = True, at: str | None = None) -> PostgresStore:
        store = PostgresStore(at or dsn, Notifier(), blob_dir=tmp_path / "blobs", notify=notify)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


def notifier_of(store: PostgresStore) -> Notifier:
    return store._notifier


async def admin(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_concurrent_event_writers_and_a_resuming_reader(open_store: OpenStore) -> None:
    """Sequence numbers commit in order: a reader resuming from its cursor misses nothing."""
    a, b = await open_store(), await open_store()
    [job] = await insert(a, make_job())
    writers, txns, per_txn = 12, 12, 2
    done = asyncio.Event()

    async def write(index: int) -> None:
        store = a if index % 2 else b
        for t in range(txns):
            async with store.transaction() as tx:
                for i in range(per_txn):
                    event = job_pb2.JobEvent(job_id=job.job.id, message=f"{index}.{t}.{i}")
                    await tx.append_event("t1", event)
                    # Hold the transaction open a little, so that commits would reorder if
                    # numbers were handed out without waiting for the previous commit.
                    await tx._conn.execute("SELECT pg_sleep($1)", random.random() / 500)  # type: ignore[attr-defined]

    async def read() -> list[job_pb2.JobEvent]:
        seen: list[job_pb2.JobEvent] = []
        cursor = 0
        while True:
            finished = done.is_set()
            batch = await b.read_events("t1", after_seq=cursor, limit=7)
            seen.extend(batch)
            if batch:
                cursor = batch[-1].sequence
            elif finished:
                return seen

    reader = asyncio.create_task(read())
    await asyncio.gather(*(write(w) for w in range(writers)))
    done.set()
    seen = await reader
    messages = [e.message for e in seen]
    expected = {f"{w}.{t}.{i}" for w in range(writers) for t in range(txns) for i in range(per_txn)}
    assert len(messages) == len(expected), "an event was missed or repeated"
    assert set(messages) == expected
    sequences = [e.sequence for e in seen]
    assert sequences == sorted(set(sequences))
    assert sequences == list(range(1, len(expected) + 1))  # no holes either


async def test_a_write_on_one_replica_wakes_followers_on_another(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    with notifier_of(b).subscribe(job_topic("x")) as sub:
        async with a.transaction() as tx:
            tx.topics.add(job_topic("x"))
        assert await sub.wait(1.0)


async def test_without_notify_nothing_is_sent_but_the_data_is_there(
    open_store: OpenStore,
) -> None:
    silent, follower, other = (
        await open_store(notify=False),
        await open_store(),
        await open_store(),
    )
    assert silent.listener is None
    with (
        notifier_of(follower).subscribe(job_topic("quiet")) as quiet,
        notifier_of(follower).subscribe(job_topic("loud")) as loud,
    ):
        async with silent.transaction() as tx:
            [job] = [await tx.insert_job(make_job())]
            tx.topics.add(job_topic("quiet"))
        async with other.transaction() as tx:
            tx.topics.add(job_topic("loud"))
        # Notifications arrive in commit order: once "loud" is here, "quiet" would be too.
        assert await loud.wait(1.0)
        assert not await quiet.wait(0)
    assert await follower.get_job(job.job.id) is not None


async def test_a_failed_transaction_notifies_nobody(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    with (
        notifier_of(b).subscribe(job_topic("x")) as failed,
        notifier_of(b).subscribe(job_topic("y")) as later,
        notifier_of(a).subscribe(job_topic("x")) as local,
    ):
        with pytest.raises(RuntimeError):
            async with a.transaction() as tx:
                await tx.insert_job(make_job())
                tx.topics.add(job_topic("x"))
                raise RuntimeError("boom")
        async with a.transaction() as tx:
            tx.topics.add(job_topic("y"))
        assert await later.wait(1.0)
        assert not await failed.wait(0)
        assert not await local.wait(0)
    assert await a.list_jobs("t1", JobQuery(), newest_first=True, after_seq=0, limit=5) == []


async def test_many_topics_are_split_into_notifications_that_fit(open_store: OpenStore) -> None:
    topics = {job_topic(f"j_{i:04d}_" + "x" * 40) for i in range(600)}
    payloads = encode_payloads("me", topics)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    assert {t for p in payloads for t in decode_payload(p)[1]} == topics

    a, b = await open_store(), await open_store()
    subs = [notifier_of(b).subscribe(t) for t in sorted(topics)]
    try:
        async with a.transaction() as tx:
            for topic in topics:
                tx.topics.add(topic)
        for sub in subs:
            assert await sub.wait(1.0)
    finally:
        for sub in subs:
            sub.close()


async def test_the_listener_reconnects_and_wakes_everyone_once(
    open_store: OpenStore, dsn: str
) -> None:
    a, b = await open_store(), await open_store()
    listener = b.listener
    assert listener is not None and listener.generation == 1
    with (
        notifier_of(b).subscribe(job_topic("missed")) as missed,
        notifier_of(b).subscribe(job_topic("after")) as after,
    ):
        await admin(dsn, "SELECT pg_terminate_backend($1)", listener.server_pid)

        async def reconnected() -> bool:
            return listener.generation == 2 and listener.connected.is_set()

        await wait_until_async(reconnected, timeout=5, what="the listener to reconnect")
        # Whatever was sent while it was away is lost: every follower is woken to re-read.
        assert await missed.wait(0)
        after.clear()
        async with a.transaction() as tx:
            tx.topics.add(job_topic("after"))
        assert await after.wait(1.0)


async def test_claims_from_two_replicas_never_take_the_same_job(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    jobs = await insert(a, *(make_job() for _ in range(60)))

    async def claimer(name: str) -> list[str]:
        store = a if name.startswith("a") else b
        mine: list[str] = []
        while True:
            async with store.transaction() as tx:
                ready = await tx.pending_jobs(["default"], now=1e12, limit=3)
                for stored in ready:
                    stored.job.state = S.JOB_STATE_CLAIMED
                    stored.job.agent_id = name
                    await tx.update_job(stored)
                    await tx.append_event(
                        "t1", job_pb2.JobEvent(job_id=stored.job.id, state=S.JOB_STATE_CLAIMED)
                    )
                    mine.append(stored.job.id)
            if not ready:
                return mine

    results = await asyncio.gather(*(claimer(f"{side}{i}") for side in "ab" for i in range(6)))
    claims = Counter(job_id for mine in results for job_id in mine)
    assert set(claims) == {j.job.id for j in jobs}
    assert set(claims.values()) == {1}
    assert sum(1 for mine in results if mine) > 1  # the work was shared
    async with a.transaction() as tx:
        assert await tx.pending_jobs(["default"], now=1e12, limit=10) == []


async def test_a_repeated_request_id_racing_on_two_replicas_makes_one_job(
    open_store: OpenStore,
) -> None:
    a, b = await open_store(), await open_store()

    async def submit(index: int) -> str:
        store = a if index % 2 else b
        async with store.transaction() as tx:
            found = await tx.find_request("t1", "same")
            if found is not None:
                return found.job.id
            stored = await tx.insert_job(make_job(request_id="same"))
            return stored.job.id

    ids = await asyncio.gather(*(submit(i) for i in range(10)))
    assert len(set(ids)) == 1
    listed = await a.list_jobs("t1", JobQuery(), newest_first=True, after_seq=0, limit=20)
    assert [j.job.id for j in listed] == [ids[0]]
    # Without find_request, the unique index refuses the second insert with a domain error.
    with pytest.raises(AlreadyExists):
        async with a.transaction() as tx:
            await tx.insert_job(make_job(request_id="same"))


async def test_replicas_migrate_at_once_and_refuse_a_newer_schema(
    open_store: OpenStore, dsn: str
) -> None:
    await asyncio.gather(*(open_store() for _ in range(4)))
    assert await admin(dsn, "SELECT count(*) FROM schema_version") == 1
    assert await admin(dsn, "SELECT version FROM schema_version") == len(MIGRATIONS)
    [job] = await insert(await open_store(), make_job())
    reopened = await open_store()  # migrations already applied: a no-op
    assert await reopened.get_job(job.job.id) is not None
    await admin(dsn, "UPDATE schema_version SET version = 99")
    with pytest.raises(StoreUnavailable, match="newer"):
        await open_store()


async def test_store_faults_are_store_unavailable(
    open_store: OpenStore, dsn: str, tmp_path: Path
) -> None:
    nowhere = PostgresStore(
        "postgresql://postgres@127.0.0.1:1/none", Notifier(), blob_dir=tmp_path / "b"
    )
    with pytest.raises(StoreUnavailable):
        await nowhere.open()

    store = await open_store()
    # The transaction's own connection dies under it.
    with pytest.raises(StoreUnavailable):
        async with store.transaction() as tx:
            pid = await tx._conn.fetchval("SELECT pg_backend_pid()")  # type: ignore[attr-defined]
            await admin(dsn, "SELECT pg_terminate_backend($1)", pid)
            await tx.get_job("j_x")

    # Connections killed while idle in the pool: a call fails cleanly or gets a new one.
    await admin(
        dsn,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    for _ in range(3):
        with contextlib.suppress(StoreUnavailable):
            await store.get_job("j_x")

    async def answers() -> bool:
        try:
            await store.ping()
        except StoreUnavailable:
            return False
        return True

    await wait_until_async(answers, timeout=5, what="the pool to reconnect")

    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_job("j_x")
    with pytest.raises(StoreUnavailable):
        async with store.transaction():
            pass


async def test_read_logs_returns_only_what_fits_in_max_bytes(open_store: OpenStore) -> None:
    store = await open_store()
    out = job_pb2.LOG_STREAM_STDOUT
    async with store.transaction() as tx:
        for i in range(10):
            await tx.append_log("j", 1, out, i * 100, bytes([65 + i]) * 100)
    batch = await store.read_logs("j", 1, {out: 0}, 250)
    assert [(c.offset, len(c.data)) for c in batch] == [(0, 100), (100, 100), (200, 100)]
    batch = await store.read_logs("j", 1, {out: 950}, 1)
    assert [(c.offset, c.data) for c in batch] == [(950, b"J" * 50)]
