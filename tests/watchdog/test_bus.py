from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import await_until
from watchdog.bus import EventBus, StoreTrouble, Subscription, SubscriptionClosed
from watchdog.events import Event, Kind, utcnow
from watchdog.store import EventStore, StoreError, format_ts


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


# --- store trouble ------------------------------------------------------------------------


def fill_up(store: EventStore) -> None:
    """Real SQLite behaviour: no page beyond the current count, so growing fails with
    SQLITE_FULL ("database or disk is full"), as on a full disk."""
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def free_up(store: EventStore) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def big(n: int, kind: Kind = Kind.HEALTHY) -> Event:
    """An event that needs new pages (overflow pages for its details)."""
    return Event.of("a", kind, f"event {n}", n=n, pad="p" * 5000)


@pytest.fixture
async def quick(tmp_path: Path) -> AsyncIterator[EventBus]:
    """A bus that retries a failing store every 10-50 ms."""
    store = EventStore(tmp_path / "events.db")
    b = EventBus(store, retry_initial=0.01, retry_max=0.05, buffer_limit=100)
    yield b
    await b.close()
    store.close()


async def test_full_store_buffers_events_in_order_and_writes_them_when_it_works(
    quick: EventBus,
) -> None:
    bus, store = quick, quick.store
    sub = bus.subscribe("reader", maxsize=1000)
    troubles: list[StoreTrouble] = []
    bus.on_store_trouble(troubles.append)
    before = await bus.publish(event(0))
    assert bus.store_problem() is None
    await bus.run_in_writer(fill_up, store)

    held = [await bus.publish(big(n)) for n in range(1, 31)]  # never raises
    assert all(e.id is None for e in held)
    problem = bus.store_problem()
    assert problem is not None and "SQLITE_FULL" in problem and "30 event(s)" in problem
    assert store.count() == 1 and bus.buffered == 30
    await await_until(lambda: troubles, timeout=5, what="the trouble callback")
    assert len(troubles) == 1 and troubles[0].failing and "SQLITE_FULL" in troubles[0].reason
    assert await asyncio.wait_for(sub.get(), 5) == before
    assert sub.qsize() == 0  # nobody sees an event before it is committed

    await bus.run_in_writer(free_up, store)
    await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
    await await_until(lambda: len(troubles) == 2, timeout=5, what="the end callback")
    end = troubles[1]
    assert (
        not end.failing
        and end.written == 30
        and end.dropped == 0
        and end.since == troubles[0].since
    )

    stored = store.query(limit=None, newest_first=False)
    assert [e.kind for e in stored] == [
        "healthy",
        Kind.STORE_FAILING,
        *(["healthy"] * 30),
        Kind.STORE_RECOVERED,
    ]
    assert [e.details.get("n") for e in stored[2:32]] == list(range(1, 31))  # publish order
    ids = [e.id for e in stored]
    assert ids == sorted(ids)  # type: ignore[type-var]
    failing, recovered = stored[1], stored[-1]
    assert failing.severity == "critical" and "SQLITE_FULL" in failing.details["reason"]
    assert format_ts(failing.ts) == format_ts(troubles[0].since)  # when it began
    assert recovered.severity == "info" and recovered.details["written"] == 30
    # Subscribers get the buffered events once they are committed, with their ids.
    received = [await asyncio.wait_for(sub.get(), 5) for _ in range(32)]
    assert received == stored[1:]
    assert bus.buffered == 0
    assert (await bus.publish(event(99))).id == (recovered.id or 0) + 1  # straight through


async def test_buffer_overflow_drops_the_oldest_and_tells_it_in_one_event(
    quick: EventBus,
) -> None:
    bus, store = quick, quick.store  # buffer_limit=100
    await bus.run_in_writer(fill_up, store)
    for n in range(250):
        await bus.publish(big(n, Kind.CRASHED if n % 2 else Kind.HEALTHY))
    problem = bus.store_problem()
    assert problem is not None and "150 dropped" in problem and bus.buffered == 100
    await bus.run_in_writer(free_up, store)
    await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
    stored = store.query(limit=None, newest_first=False)
    kinds = [e.kind for e in stored]
    assert kinds[:2] == [Kind.STORE_FAILING, Kind.EVENTS_DROPPED] and kinds[-1] == "store-recovered"
    assert kinds.count(Kind.EVENTS_DROPPED) == 1
    dropped = stored[1]
    assert dropped.details["count"] == 150 and dropped.severity == "warning"
    assert dropped.details["kinds"] == {"healthy": 75, "crashed": 75}
    assert [e.details["n"] for e in stored[2:-1]] == list(range(150, 250))  # the newest kept
    assert stored[-1].details["dropped"] == 150 and stored[-1].details["written"] == 100


async def test_the_buffer_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    """Ten thousand 64 KiB events would be 640 MiB: the byte budget drops the oldest."""
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store, retry_initial=0.01, retry_max=0.05, buffer_max_bytes=60_000)
    try:
        await bus.run_in_writer(fill_up, store)
        for n in range(30):  # ~5.3 KB each: 11 fit
            await bus.publish(big(n))
        assert bus.buffered == 11
        await bus.run_in_writer(free_up, store)
        await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
        (dropped,) = store.query(kinds=[Kind.EVENTS_DROPPED])
        assert dropped.details["count"] == 19 and dropped.details["buffer_max_bytes"] == 60_000
        kept = [e.details["n"] for e in store.query(kinds=["healthy"], newest_first=False)]
        assert kept == list(range(19, 30))
    finally:
        await bus.close()
        store.close()


async def test_recovery_of_a_long_buffer_lets_new_publishes_queue_behind_it(
    tmp_path: Path,
) -> None:
    """More than one flush chunk waits; publishes during the flush keep their place."""
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store, retry_initial=0.01, retry_max=0.05)
    try:
        await bus.run_in_writer(fill_up, store)
        for n in range(1200):
            await bus.publish(big(n))
        await bus.run_in_writer(free_up, store)
        late = [await bus.publish(event(2000 + n)) for n in range(50)]  # while it flushes
        await await_until(lambda: bus.store_problem() is None, timeout=20, what="recovery")
        stored = [e for e in store.query(limit=None, newest_first=False) if "n" in e.details]
        assert [e.details["n"] for e in stored] == [*range(1200), *range(2000, 2050)]
        # Each late publish either waited in the buffer or came after the flush: never ahead.
        assert all(e.id is None or e.id > 1200 for e in late)
    finally:
        await bus.close()
        store.close()


async def test_close_with_the_store_still_failing_logs_what_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store, retry_initial=10, retry_max=10)
    await bus.run_in_writer(fill_up, store)
    await bus.publish(big(1))
    await bus.publish(big(2))
    with caplog.at_level(logging.ERROR, logger="watchdog.bus"):
        await bus.close()
    assert any("2 buffered event(s) are lost" in r.getMessage() for r in caplog.records)
    store.close()


async def test_close_writes_the_buffer_when_the_store_works_again(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store, retry_initial=10, retry_max=10)  # no retry before close
    await bus.run_in_writer(fill_up, store)
    await bus.publish(big(1))
    await bus.run_in_writer(free_up, store)
    await bus.close()
    assert [e.kind for e in store.query(limit=None, newest_first=False)] == [
        Kind.STORE_FAILING,
        "healthy",
        Kind.STORE_RECOVERED,
    ]
    store.close()


async def test_a_failing_trouble_callback_never_disturbs_the_bus(
    quick: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[bool] = []

    def broken(trouble: StoreTrouble) -> None:
        calls.append(trouble.failing)
        raise RuntimeError("callback bug")

    bus = quick
    bus.on_store_trouble(broken)
    await bus.run_in_writer(fill_up, bus.store)
    with caplog.at_level(logging.ERROR, logger="watchdog.bus"):
        await bus.publish(big(1))
        await await_until(lambda: calls, timeout=5, what="the callback")
        late: list[StoreTrouble] = []
        unregister = bus.on_store_trouble(late.append)  # during the episode: told at once
        await await_until(lambda: late, timeout=5, what="the late callback")
        assert late[0].failing
        unregister()
        await bus.run_in_writer(free_up, bus.store)
        await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
        await await_until(lambda: len(calls) == 2, timeout=5, what="the end callback")
    assert calls == [True, False] and len(late) == 1
    assert any("callback failed" in r.getMessage() for r in caplog.records)


# --- retention ----------------------------------------------------------------------------


async def test_retention_worker_with_zero_days_keeps_everything(bus: EventBus) -> None:
    await bus.publish(event(1))
    await asyncio.wait_for(bus.retention_worker(0), 5)  # returns at once
    assert bus.store.count() == 1


async def test_prune_runs_one_batch_per_writer_job_so_publishes_get_through(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = bus.store
    old = Event.of("a", Kind.HEALTHY, "old")
    old = Event(old.target, old.kind, old.message, old.severity, {}, old.ts - timedelta(days=30))
    store.append_many([old] * 450)
    order: list[str] = []
    first_batch = threading.Event()
    release = threading.Event()
    real_prune, real_append = store.prune, store.append

    def prune(*args: Any, **kwargs: Any) -> dict[str, int]:
        order.append("prune")
        if not first_batch.is_set():
            first_batch.set()
            assert release.wait(10)
        return real_prune(*args, **kwargs)

    def append(e: Event) -> Event:
        order.append("append")
        return real_append(e)

    monkeypatch.setattr(store, "prune", prune)
    monkeypatch.setattr(store, "append", append)
    pruning = asyncio.create_task(bus.prune_once(utcnow() - timedelta(days=3), batch=100))
    await await_until(first_batch.is_set, timeout=5, what="the first batch")
    publishing = asyncio.create_task(bus.publish(event(1)))
    for _ in range(3):
        await asyncio.sleep(0)  # the publish reaches the writer queue
    release.set()
    committed = await asyncio.wait_for(publishing, 5)
    report = await asyncio.wait_for(pruning, 10)
    assert order[:3] == ["prune", "append", "prune"]  # the publish waited for one batch
    assert report.deleted["events"] == 450 and report.batches == 5
    assert store.query(limit=None) == [committed]
