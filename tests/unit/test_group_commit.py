"""Group commit over a real SQLite connection: batching, isolation of failures, syncs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gaffer.store._group_commit import GroupCommitter, StartSync
from tests.helpers import wait_until_async


class Unavailable(Exception):
    pass


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (v INTEGER UNIQUE)")
    yield conn
    conn.close()


def values(conn: sqlite3.Connection) -> list[int]:
    return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]


def starting(sync: Callable[[], Awaitable[None]]) -> StartSync:
    """A committer's sync that runs the coroutine function ``sync`` and reports its end."""

    def start(on_done: Callable[[BaseException | None], None]) -> None:
        task = asyncio.ensure_future(sync())
        task.add_done_callback(lambda t: on_done(t.exception()))

    return start


def recording(conn: sqlite3.Connection, statements: list[str]):  # type: ignore[no-untyped-def]
    def execute(sql: str) -> None:
        statements.append(sql)
        conn.execute(sql)

    return execute


async def test_concurrent_transactions_share_commits(conn: sqlite3.Connection) -> None:
    statements: list[str] = []
    committer = GroupCommitter(recording(conn, statements), begin="BEGIN IMMEDIATE",
                               wrap_error=Unavailable)  # fmt: skip
    committer.start()
    published: list[int] = []

    async def write(i: int) -> None:
        async with committer.transaction(lambda: published.append(i)):
            conn.execute("INSERT INTO t VALUES (?)", (i,))

    await asyncio.gather(*(write(i) for i in range(100)))
    await committer.close()
    assert values(conn) == list(range(100))
    assert sorted(published) == list(range(100))
    assert 1 <= statements.count("COMMIT") < 100  # grouped: fewer commits than transactions


async def test_a_failing_body_rolls_back_only_itself(conn: sqlite3.Connection) -> None:
    committer = GroupCommitter(conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable)
    committer.start()
    published: list[int] = []
    aborted: list[int] = []

    async def write(i: int) -> None:
        async with committer.transaction(
            lambda: published.append(i), on_abort=lambda: aborted.append(i)
        ):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            if i % 3 == 0:
                raise ValueError(i)

    results = await asyncio.gather(*(write(i) for i in range(12)), return_exceptions=True)
    await committer.close()
    failed = [i for i, r in enumerate(results) if isinstance(r, ValueError)]
    assert failed == [0, 3, 6, 9]
    assert values(conn) == [i for i in range(12) if i % 3]
    assert sorted(published) == [i for i in range(12) if i % 3]
    assert sorted(aborted) == failed


async def test_a_body_that_suspends_is_not_interleaved(conn: sqlite3.Connection) -> None:
    committer = GroupCommitter(conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable)
    committer.start()
    inside = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def slow() -> None:
        async with committer.transaction(lambda: order.append("slow committed")):
            conn.execute("INSERT INTO t VALUES (1)")
            inside.set()
            await release.wait()
            order.append("slow done")
            raise ValueError("rolled back")

    async def other() -> None:
        async with committer.transaction(lambda: order.append("other committed")):
            order.append("other body")
            conn.execute("INSERT INTO t VALUES (2)")

    first = asyncio.create_task(slow())
    await inside.wait()
    second = asyncio.create_task(other())
    for _ in range(5):
        await asyncio.sleep(0)  # a few turns: the other body must still be waiting
    assert order == []
    release.set()
    with pytest.raises(ValueError):
        await first
    await second
    await committer.close()
    assert order == ["slow done", "other body", "other committed"]
    assert values(conn) == [2]


async def test_a_caller_cancelled_while_waiting_writes_nothing(conn: sqlite3.Connection) -> None:
    committer = GroupCommitter(conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable)
    committer.start()
    inside = asyncio.Event()
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow() -> None:
        async with committer.transaction(lambda: None):
            conn.execute("INSERT INTO t VALUES (1)")
            inside.set()
            await release.wait()

    async def queued() -> None:
        entered.set()
        async with committer.transaction(lambda: None):
            conn.execute("INSERT INTO t VALUES (2)")

    first = asyncio.create_task(slow())
    await inside.wait()
    second = asyncio.create_task(queued())
    await entered.wait()
    second.cancel()
    release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    async with committer.transaction(lambda: None):
        conn.execute("INSERT INTO t VALUES (3)")
    await asyncio.wait_for(committer.close(), 10)  # the cancelled caller is not still counted
    assert values(conn) == [1, 3]


def failing_commits(conn: sqlite3.Connection) -> Callable[[str], None]:
    """An execute whose every COMMIT fails, as on a full disk."""

    def execute(sql: str) -> None:
        if sql == "COMMIT":
            raise OSError("disk full")
        conn.execute(sql)

    return execute


async def test_a_failed_commit_reaches_every_caller(conn: sqlite3.Connection) -> None:
    committer = GroupCommitter(
        failing_commits(conn), begin="BEGIN IMMEDIATE", wrap_error=Unavailable
    )
    committer.start()
    published: list[int] = []
    aborted: list[int] = []

    async def write(i: int) -> None:
        async with committer.transaction(
            lambda: published.append(i), durable=i % 2 == 0, on_abort=lambda: aborted.append(i)
        ):
            conn.execute("INSERT INTO t VALUES (?)", (i,))

    results = await asyncio.gather(*(write(i) for i in range(4)), return_exceptions=True)
    await committer.close()
    assert all(isinstance(r, Unavailable) for r in results), results
    assert published == []
    assert sorted(aborted) == [0, 1, 2, 3]
    assert values(conn) == []


async def test_a_caller_that_left_still_hears_its_batch_failed(conn: sqlite3.Connection) -> None:
    """on_abort reaches a body whose caller was cancelled after it joined the batch."""
    committer = GroupCommitter(
        failing_commits(conn), begin="BEGIN IMMEDIATE", wrap_error=Unavailable
    )
    committer.start()
    aborted: list[str] = []
    joined, holding, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def quick() -> None:
        async with committer.transaction(lambda: None, on_abort=lambda: aborted.append("quick")):
            conn.execute("INSERT INTO t VALUES (1)")
        joined.set()  # not reached: the commit fails, or the caller is cancelled

    async def suspending() -> None:
        async with committer.transaction(lambda: None, on_abort=lambda: aborted.append("slow")):
            conn.execute("INSERT INTO t VALUES (2)")
            holding.set()
            await release.wait()  # holds the batch open

    leaving = asyncio.create_task(quick())
    holder = asyncio.create_task(suspending())
    await holding.wait()  # quick's body is in the batch; the batch waits for this one
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert aborted == []
    release.set()
    results = await asyncio.gather(holder, return_exceptions=True)
    await committer.close()
    assert isinstance(results[0], Unavailable)
    assert sorted(aborted) == ["quick", "slow"]
    assert not joined.is_set() and values(conn) == []


async def test_durable_callers_wait_for_a_sync_that_covers_their_commit(
    conn: sqlite3.Connection,
) -> None:
    syncs: list[int] = []
    syncing = asyncio.Event()
    gate = asyncio.Event()

    async def sync() -> None:
        syncs.append(len(values(conn)))  # what is committed when the sync starts
        syncing.set()
        await gate.wait()

    committer = GroupCommitter(conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable,
                               sync=starting(sync))  # fmt: skip
    committer.start()
    async with committer.transaction(lambda: None, durable=False):
        conn.execute("INSERT INTO t VALUES (1)")
    assert syncs == []  # a non-durable commit is not synced

    first = asyncio.create_task(_insert(committer, conn, 2))
    await syncing.wait()
    # A sync is running: commits made meanwhile wait for the next one, together.
    later = [asyncio.create_task(_insert(committer, conn, v)) for v in (3, 4)]

    async def committed() -> bool:
        return committer.commits >= 3

    await wait_until_async(committed, what="the later transactions to commit")
    assert not first.done() and not any(t.done() for t in later)
    gate.set()
    await asyncio.gather(first, *later)
    await committer.close()
    assert syncs == [2, 4]


async def _insert(
    committer: GroupCommitter, conn: sqlite3.Connection, v: int, *, durable: bool = True
) -> None:
    async with committer.transaction(lambda: None, durable=durable):
        conn.execute("INSERT INTO t VALUES (?)", (v,))


async def test_a_caller_resumes_before_what_its_commit_wakes(conn: sqlite3.Connection) -> None:
    """A claim answers its agent before the followers its commit wakes run."""
    committer = GroupCommitter(conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable)
    committer.start()
    order: list[str] = []
    woken = asyncio.Event()

    async def subscriber() -> None:
        await woken.wait()
        order.append("subscriber")

    waiting = asyncio.create_task(subscriber())
    await asyncio.sleep(0)  # let it start waiting
    async with committer.transaction(woken.set):
        conn.execute("INSERT INTO t VALUES (1)")
    order.append("caller")
    await waiting
    await committer.close()
    assert order == ["caller", "subscriber"]


async def test_under_load_a_batch_waits_for_the_delay_whoever_joins_it(
    conn: sqlite3.Connection,
) -> None:
    gate = asyncio.Event()

    async def sync() -> None:
        await gate.wait()

    committer = GroupCommitter(
        conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable, sync=starting(sync),
        delay=30.0, max_delay=30.0, siblings=1,
    )  # fmt: skip
    committer.start()
    async with committer.transaction(lambda: None, durable=False):  # alone: no delay
        conn.execute("INSERT INTO t VALUES (1)")
    assert committer.commits == 1

    # One durable caller waits for its sync: the next batch opens under load.
    stuck = asyncio.create_task(_insert(committer, conn, 2))

    async def committed_twice() -> bool:
        return committer.commits == 2

    await wait_until_async(committed_twice, what="the durable transaction to commit")
    held = [asyncio.create_task(_insert(committer, conn, v)) for v in (3, 4)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert committer.commits == 2, "the batch did not wait for the delay"
    # A non-durable body (a claim) joining the held batch waits with it.
    claim = asyncio.create_task(_insert(committer, conn, 5, durable=False))
    for _ in range(20):
        await asyncio.sleep(0)
    assert committer.commits == 2, "a non-durable body cut the held batch short"
    assert not claim.done()
    gate.set()
    await committer.close()  # commits the held batch at once, and syncs it
    assert committer.commits == 3
    await asyncio.gather(stuck, claim, *held)
    assert values(conn) == [1, 2, 3, 4, 5]


async def test_a_sync_that_cannot_start_fails_its_callers_and_the_next_one_retries(
    conn: sqlite3.Connection,
) -> None:
    broken = True

    def start_sync(on_done: Callable[[BaseException | None], None]) -> None:
        if broken:
            raise OSError("no thread for you")
        asyncio.get_running_loop().call_soon(on_done, None)

    committer = GroupCommitter(conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable,
                               sync=start_sync)  # fmt: skip
    committer.start()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(_insert(committer, conn, 1), 10)
    broken = False
    await asyncio.wait_for(_insert(committer, conn, 2), 10)
    await committer.close()
    assert values(conn) == [1, 2]  # committed; only the first caller's sync failed


async def test_a_held_batch_commits_when_the_delay_passes(conn: sqlite3.Connection) -> None:
    gate = asyncio.Event()

    async def sync() -> None:
        await gate.wait()

    committer = GroupCommitter(
        conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable, sync=starting(sync),
        delay=0.05, max_delay=0.05, siblings=1,
    )  # fmt: skip
    committer.start()
    stuck = asyncio.create_task(_insert(committer, conn, 1))  # waits for its sync

    async def committed(n: int) -> bool:
        return committer.commits == n

    await wait_until_async(lambda: committed(1), what="the first commit")
    held = asyncio.create_task(_insert(committer, conn, 2))  # under load: held for 50 ms
    await wait_until_async(lambda: committed(2), what="the held batch to commit by itself")
    gate.set()
    await asyncio.gather(stuck, held)
    await committer.close()
    assert values(conn) == [1, 2]


async def test_close_waits_for_callers_already_inside(conn: sqlite3.Connection) -> None:
    committer = GroupCommitter(conn.execute, begin="BEGIN IMMEDIATE", wrap_error=Unavailable)
    committer.start()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> None:
        async with committer.transaction(lambda: None):
            conn.execute("INSERT INTO t VALUES (1)")
            inside.set()
            await release.wait()

    first = asyncio.create_task(slow())
    await inside.wait()
    queued = asyncio.create_task(_insert(committer, conn, 2))  # waits for the writer
    for _ in range(3):
        await asyncio.sleep(0)
    closing = asyncio.create_task(committer.close())
    release.set()
    await asyncio.wait_for(closing, 10)
    assert first.done() and queued.done()  # close returned only after both were answered
    await asyncio.gather(first, queued)
    assert values(conn) == [1, 2]
    with pytest.raises(Unavailable):
        await _insert(committer, conn, 3)
