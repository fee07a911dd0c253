"""The in-process notifier: who a commit wakes, and in what order."""

from __future__ import annotations

import asyncio

from gaffer.store import EVENTS_TOPIC, Notifier, job_topic, queue_topic


async def test_a_commit_that_wakes_a_claim_wakes_watchers_a_turn_later() -> None:
    """The claim runs its body before the event tail and streams wake (see publish_committed)."""
    notifier = Notifier()
    order: list[str] = []

    async def waiter(name: str, *topics: str) -> None:
        with notifier.subscribe(*topics) as sub:
            started.set()
            await sub.wait(None)
            order.append(name)
            # What a claim's body does: schedule its batch's commit for the next turn.
            asyncio.get_running_loop().call_soon(order.append, f"{name} follow-up")

    tasks = []
    for name, topic in (("events", EVENTS_TOPIC), ("claim", queue_topic("q"))):
        started = asyncio.Event()
        tasks.append(asyncio.create_task(waiter(name, topic)))
        await started.wait()
    notifier.publish_committed([EVENTS_TOPIC, job_topic("j"), queue_topic("q")])
    await asyncio.gather(*tasks)
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == ["claim", "claim follow-up", "events", "events follow-up"]


async def test_a_commit_that_wakes_no_claim_wakes_everyone_at_once() -> None:
    notifier = Notifier()
    with (
        notifier.subscribe(EVENTS_TOPIC) as events,
        notifier.subscribe(queue_topic("nobody waits here")) as other,
    ):
        notifier.publish_committed([EVENTS_TOPIC, queue_topic("q")])
        assert await events.wait(0)
        assert not await other.wait(0)


async def test_a_publish_callback_runs_at_the_publish_while_registered() -> None:
    notifier = Notifier()
    calls: list[str] = []
    with notifier.on_publish(EVENTS_TOPIC, lambda: calls.append("events")):
        notifier.publish([queue_topic("q")])
        assert calls == []
        notifier.publish_committed([EVENTS_TOPIC])
        assert calls == ["events"]  # before any turn of the loop
    notifier.publish([EVENTS_TOPIC])
    assert calls == ["events"]
