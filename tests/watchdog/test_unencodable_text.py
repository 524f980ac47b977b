"""Text that UTF-8 cannot encode (a lone surrogate such as "\\ud800", which ``json.loads``
decodes happily from a backend's /health body or an operator's request) never costs an event:
`Event.of` makes it encodable, and a buffered event the store still rejects is dropped alone
instead of wedging the flush of everything behind it."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import await_until, tmpfs
from watchdog.bus import EventBus
from watchdog.events import (
    DETAILS_MAX_BYTES,
    MESSAGE_MAX_CHARS,
    Event,
    Kind,
    bound_details,
    bound_message,
)
from watchdog.store import EventStore

BAD = "\ud800"  # what json.loads('"\\ud800"') returns: a str, but not one UTF-8 can encode


def encodable(value: Any) -> bool:
    """Every string in ``value`` (keys too, nested) encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(encodable(k) and encodable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(encodable(item) for item in value)
    return True


def fill_up(store: EventStore) -> None:
    """SQLITE_FULL for any write that needs a new page (as in tests/watchdog/test_bus.py)."""
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def free_up(store: EventStore) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def big(n: int) -> Event:
    """An event that needs new pages (overflow pages for its details)."""
    return Event.of("a", Kind.HEALTHY, f"event {n}", n=n, pad="p" * 5000)


def rejected_by_the_store(n: int) -> Event:
    """Built directly, past `Event.of`: a target SQLite cannot bind (UnicodeEncodeError), an
    error that is not store trouble. Nothing in erpwatch builds this; it stands for any event
    the store rejects on its own merits."""
    return Event(target=f"a{BAD}", kind=Kind.UNHEALTHY, message=f"poison {BAD}", details={"n": n})


@pytest.fixture
async def quick(tmp_path: Path) -> AsyncIterator[EventBus]:
    """A bus that retries a failing store every 10-50 ms."""
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store, retry_initial=0.01, retry_max=0.05)
    yield bus
    await bus.close()
    store.close()


async def test_surrogates_in_message_and_nested_details_are_stored_and_serialise(
    quick: EventBus,
) -> None:
    """The audit's /health body: a failing check's error holds "\\ud800"."""
    bus, store = quick, quick.store
    sub = bus.subscribe("reader")
    body = json.loads(
        '{"status": "down", "checks": {"database": {"status": "failed", '
        '"error": "conn reset \\ud800", "history": ["fine", "reset \\udfff"]}, '
        '"cache\\udc80": "ok"}}'
    )
    event = Event.of(
        "backend",
        Kind.UNHEALTHY,
        f"check database failed: {body['checks']['database']['error']}",
        checks=body["checks"],
        note="ünïcode 😀 stays as it is",
        **{f"odd{BAD}key": 1},
    )
    assert encodable(event.message) and encodable(dict(event.details))

    committed = await bus.publish(event)
    assert committed.id is not None and bus.store_problem() is None
    # The bad code points stay visible as escapes; everything else is untouched.
    assert committed.message == "check database failed: conn reset \\ud800"
    checks = committed.details["checks"]
    assert checks["database"]["error"] == "conn reset \\ud800"
    assert checks["database"]["history"] == ["fine", "reset \\udfff"]
    assert checks["cache\\udc80"] == "ok" and checks["database"]["status"] == "failed"
    assert committed.details["note"] == "ünïcode 😀 stays as it is"
    assert committed.details["odd\\ud800key"] == 1

    assert store.query(target="backend") == [committed]  # read back from SQLite
    assert store.get(committed.id) == committed
    assert await sub.get() == committed
    # JSON for the API and SSE (ensure_ascii=False, then UTF-8, as Starlette does).
    wire = json.dumps(committed.to_dict(), ensure_ascii=False).encode("utf-8")
    assert json.loads(wire) == committed.to_dict()


def test_bounding_makes_text_encodable_and_keeps_the_limits() -> None:
    """bound_message / bound_details (also what the store applies) clean and still fit."""
    message = bound_message(f"{BAD}x" * (MESSAGE_MAX_CHARS * 2))
    assert encodable(message) and len(message) <= MESSAGE_MAX_CHARS
    assert bound_message(f"reason {BAD}") == "reason \\ud800"

    details = bound_details({"tail": [f"line {n} {BAD}" * 50 for n in range(2000)], "k": BAD})
    assert encodable(details) and details["k"] == "\\ud800"
    assert len(json.dumps(details, sort_keys=True, default=str)) <= DETAILS_MAX_BYTES
    assert details["_truncated"]["fields"] == ["tail"]


async def test_a_rejected_event_in_the_buffer_does_not_block_the_events_after_it(
    quick: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    bus, store = quick, quick.store
    sub = bus.subscribe("reader")
    await bus.run_in_writer(fill_up, store)
    with caplog.at_level(logging.INFO, logger="watchdog.bus"):
        await bus.publish(big(1))
        await bus.publish(rejected_by_the_store(2))
        await bus.publish(big(3))
        assert bus.store_problem() is not None and bus.buffered == 3
        await bus.run_in_writer(free_up, store)
        await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")

    stored = store.query(limit=None, newest_first=False)
    assert [(e.kind, e.details.get("n")) for e in stored] == [
        (Kind.STORE_FAILING, None),
        ("healthy", 1),
        ("healthy", 3),
        (Kind.STORE_RECOVERED, None),
    ]
    recovered = stored[-1]
    assert recovered.details["written"] == 2 and recovered.details["dropped"] == 1
    assert bus.rejected == 1 and bus.buffered == 0
    told = [r for r in caplog.records if "store rejected a buffered" in r.getMessage()]
    assert len(told) == 1 and "UnicodeEncodeError" in told[0].getMessage()
    assert [await sub.get() for _ in range(4)] == stored  # committed, then fanned out
    assert (await bus.publish(big(4))).id is not None  # straight through again


async def test_close_writes_the_buffer_around_a_rejected_event(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store, retry_initial=10, retry_max=10)  # no retry before close
    await bus.run_in_writer(fill_up, store)
    await bus.publish(big(1))  # the store fails: what follows waits in memory
    await bus.publish(rejected_by_the_store(2))
    await bus.publish(big(3))
    await bus.run_in_writer(free_up, store)
    await bus.close()
    assert [(e.kind, e.details.get("n")) for e in store.query(limit=None, newest_first=False)] == [
        (Kind.STORE_FAILING, None),
        ("healthy", 1),
        ("healthy", 3),
        (Kind.STORE_RECOVERED, None),
    ]
    assert bus.rejected == 1
    store.close()


async def test_a_closed_store_during_the_flush_drops_nothing(tmp_path: Path) -> None:
    """Guard: only an event's own rejection drops it; a store that cannot be used at all
    (`StoreError`) keeps the buffer for the last word of close()."""
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store, retry_initial=10, retry_max=10)
    await bus.run_in_writer(fill_up, store)
    await bus.publish(big(1))
    await bus.publish(big(2))
    store.close()
    await bus.close()
    assert bus.rejected == 0 and bus.buffered == 2


async def test_surrogate_body_buffered_on_a_full_disk_is_written_once_space_is_freed(
    tmp_path: Path,
) -> None:
    """The audit's t11 on a real full tmpfs: an `unhealthy` event with "\\ud800" in its check
    error waits in memory while the disk is full; freeing space ends the episode."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        store = EventStore(disk / "events.db")
        bus = EventBus(store, retry_initial=0.01, retry_max=0.05)
        try:
            filler = disk / "filler"
            with filler.open("wb") as out, pytest.raises(OSError):
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            for n in range(200):  # 60 KB events until SQLite finds no room (WAL/pages)
                await bus.publish(
                    Event.of("backend", Kind.CRASHED, f"crash {n}", tail="t" * 60_000)
                )
                if bus.store_problem() is not None:
                    break
            assert bus.store_problem() is not None and "SQLITE_FULL" in (bus.store_problem() or "")
            error = json.loads('"conn reset \\ud800"')
            await bus.publish(
                Event.of("backend", Kind.UNHEALTHY, f"database: {error}", checks={"db": error})
            )
            await bus.publish(Event.of("backend", Kind.HEALTHY, "healthy"))
            filler.unlink()
            await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
            kinds = [e.kind for e in store.query(limit=None, newest_first=False)]
            assert kinds[-3:] == ["unhealthy", "healthy", Kind.STORE_RECOVERED]
            (unhealthy,) = store.query(kinds=["unhealthy"])
            assert unhealthy.details["checks"] == {"db": "conn reset \\ud800"}
        finally:
            await bus.close()
            store.close()
