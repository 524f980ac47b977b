from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import await_until
from watchdog.bus import EventBus, Subscription, SubscriptionClosed
from watchdog.events import Event, Kind
from watchdog.store import EventStore, StoreError


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EventBus]:
    store = EventStore(tmp_path / "events.db")
    b = EventBus(store)
    yield b
    await b.close()
    store.close()


def event(n: int, target: str = "a") -> Event:
    return Event.of(target, Kind.HEALTHY, f"event {n}", n=n)


async def test_publish_commits_before_subscribers_see_it(bus: EventBus) -> None:
    sub = bus.subscribe("reader")
    committed = await bus.publish(event(1))
    assert committed.id is not None
    got = await asyncio.wait_for(sub.get(), 5)
    assert got == committed
    assert bus.store.get(committed.id) == committed


async def test_ids_in_order_across_concurrent_publishers(bus: EventBus) -> None:
    sub = bus.subscribe("reader", maxsize=500)
    results = await asyncio.gather(*(bus.publish(event(n)) for n in range(200)))
    ids = [e.id for e in results]
    assert ids == sorted(ids)  # type: ignore[type-var]
    assert [e.details["n"] for e in results] == list(range(200))
    received = [await asyncio.wait_for(sub.get(), 5) for _ in range(200)]
    assert received == results
    assert [e.id for e in bus.store.query(limit=None, newest_first=False)] == ids


async def test_publish_does_not_block_the_loop(bus: EventBus) -> None:
    """Other work stalls the writer thread; the loop keeps running, the publish waits its turn."""
    release = threading.Event()
    entered = threading.Event()

    def stall() -> None:
        entered.set()
        assert release.wait(10)

    stalled = asyncio.create_task(bus.run_in_writer(stall))
    await await_until(entered.is_set, timeout=5, what="the writer thread to stall")
    task = asyncio.create_task(bus.publish(event(1)))
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 5 and not task.done()
    release.set()
    committed = await asyncio.wait_for(task, 5)
    assert committed.id is not None
    await asyncio.wait_for(stalled, 5)


async def test_failing_writer_job_never_touches_the_events_around_it(bus: EventBus) -> None:
    """A consumer's write that fails (alerting's step, say) reaches only its caller."""
    sub = bus.subscribe("reader")

    def broken_consumer_write() -> None:
        with bus.store.transaction() as conn:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

    first = await bus.publish(event(1))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await bus.run_in_writer(broken_consumer_write)
    second = await bus.publish(event(2))
    assert [await asyncio.wait_for(sub.get(), 5) for _ in range(2)] == [first, second]
    assert bus.store.query(limit=None, newest_first=False) == [first, second]


async def test_failed_append_is_not_fanned_out(bus: EventBus) -> None:
    sub = bus.subscribe("reader")
    first = await bus.publish(event(1))
    bus.store.close()
    with pytest.raises(StoreError, match="closed"):
        await bus.publish(event(2))
    assert await asyncio.wait_for(sub.get(), 5) == first
    assert sub.qsize() == 0


async def test_slow_subscriber_drops_oldest_and_never_blocks(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    slow = bus.subscribe("slow", maxsize=5)
    fast = bus.subscribe("fast", maxsize=1000)
    received: list[Event] = []

    async def consume() -> None:
        async for e in fast:
            received.append(e)

    consumer = asyncio.create_task(consume())
    with caplog.at_level(logging.WARNING, logger="watchdog.bus"):
        published = await asyncio.wait_for(
            asyncio.gather(*(bus.publish(event(n)) for n in range(50))), 10
        )
    await await_until(lambda: len(received) == 50, timeout=5, what="fast subscriber")
    assert received == published
    assert slow.dropped == 45
    assert slow.qsize() == 5
    warnings = [r for r in caplog.records if "too slow" in r.getMessage()]
    assert len(warnings) == 1, "logged once per overflow episode"

    kept = [await slow.get() for _ in range(5)]
    assert kept == published[-5:]
    assert slow.last_id == published[-1].id

    # The subscriber re-reads what it lost from the store, by id.
    lost_from = published[0].id
    assert lost_from is not None
    missed = bus.store.query(after_id=lost_from - 1, newest_first=False, limit=None)
    assert missed == published

    # A second overflow episode logs again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="watchdog.bus"):
        for n in range(7):
            await bus.publish(event(100 + n))
    assert slow.dropped == 47
    assert len([r for r in caplog.records if "too slow" in r.getMessage()]) == 1
    consumer.cancel()


async def test_close_flushes_and_ends_iterators(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store)
    sub = bus.subscribe("reader")
    got: list[Event] = []

    async def consume() -> None:
        async for e in sub:
            got.append(e)

    consumer = asyncio.create_task(consume())
    pending = [asyncio.create_task(bus.publish(event(n))) for n in range(10)]
    await asyncio.sleep(0)  # let the publishes reach the writer
    await bus.close()
    await asyncio.wait_for(consumer, 5)
    assert [e.details["n"] for e in got] == list(range(10))
    assert all(t.done() for t in pending)
    with pytest.raises(SubscriptionClosed):
        await sub.get()
    with pytest.raises(RuntimeError):
        await bus.publish(event(99))
    await bus.close()  # idempotent
    store.close()


async def test_subscriber_close_unsubscribes(bus: EventBus) -> None:
    sub = bus.subscribe("leaver")
    await bus.publish(event(1))
    sub.close()
    assert sub.closed and sub not in bus.subscriptions
    await bus.publish(event(2))
    assert (await sub.get()).details["n"] == 1  # what was queued is still handed out
    with pytest.raises(SubscriptionClosed):
        await sub.get()


async def test_waiting_get_wakes_on_close(bus: EventBus) -> None:
    sub = bus.subscribe("waiter")
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    sub.close()
    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(waiter, 5)


async def test_run_in_writer_runs_after_earlier_publishes(bus: EventBus) -> None:
    pending = [asyncio.create_task(bus.publish(event(n))) for n in range(5)]
    await asyncio.sleep(0)
    count = await bus.run_in_writer(bus.store.count)
    assert count == 5
    await asyncio.gather(*pending)


def test_subscription_rejects_zero_maxsize() -> None:
    with pytest.raises(ValueError):
        Subscription("x", 0)
