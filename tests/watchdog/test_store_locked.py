"""Another process holding the event store's write lock (``BEGIN EXCLUSIVE`` in a sqlite3
shell, a stuck CLI). Every job on the bus's writer thread (events, the children ledger,
alerting's steps) waited SQLite's whole busy timeout in turn, so monitors awaiting their
publish neither probed nor restarted for tens of seconds. Once one write has waited the
whole timeout, writes wait `CONTENDED_WAIT_S` until one gets through. A real SQLite file and
a real second connection holding the lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import await_until
from watchdog.bus import EventBus
from watchdog.events import Event, Kind
from watchdog.leftovers import ChildLedger
from watchdog.store import CONTENDED_WAIT_S, EventStore

OWN_WAIT_S = 0.5  # the store's busy timeout in these tests (5 s in erpwatch)


@pytest.fixture
def locker(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    yield conn
    conn.close()


def lock_wait_ms(store: EventStore) -> int:
    (value,) = store.db.execute("PRAGMA busy_timeout").fetchone()
    return int(value)


def test_writes_wait_briefly_once_one_waited_for_the_whole_timeout(
    tmp_path: Path, locker: sqlite3.Connection
) -> None:
    with EventStore(tmp_path / "events.db", timeout=OWN_WAIT_S) as store:
        ledger = ChildLedger(store)
        ledger.ensure_schema()
        store.append(Event.of("a", Kind.HEALTHY, "before"))
        assert lock_wait_ms(store) == OWN_WAIT_S * 1000
        locker.execute("BEGIN EXCLUSIVE")

        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.append(Event.of("a", Kind.CRASHED, "during"))  # waited OWN_WAIT_S
        assert lock_wait_ms(store) == CONTENDED_WAIT_S * 1000  # for every writer after it
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            ledger.forget("a")

        locker.execute("COMMIT")
        store.append(Event.of("a", Kind.RESTARTED, "after"))
        assert lock_wait_ms(store) == OWN_WAIT_S * 1000  # got through: the full wait again


async def test_the_bus_holds_events_in_order_through_a_long_lock(
    tmp_path: Path, locker: sqlite3.Connection
) -> None:
    store = EventStore(tmp_path / "events.db", timeout=OWN_WAIT_S)
    bus = EventBus(store, retry_initial=0.01, retry_max=0.05)
    try:
        await bus.publish(Event.of("a", Kind.HEALTHY, "before"))
        locker.execute("BEGIN EXCLUSIVE")
        held = [await bus.publish(Event.of("a", Kind.RESTARTED, f"n{n}")) for n in range(3)]
        assert all(event.id is None for event in held)
        problem = bus.store_problem()
        assert problem is not None and "lock" in problem.lower()
        assert await bus.run_in_writer(lock_wait_ms, store) == CONTENDED_WAIT_S * 1000

        locker.execute("COMMIT")
        await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
        assert await bus.run_in_writer(lock_wait_ms, store) == OWN_WAIT_S * 1000
        messages = [e.message for e in store.query(limit=None, newest_first=False)]
        assert [m for m in messages if m in ("before", "n0", "n1", "n2")] == [
            "before",
            "n0",
            "n1",
            "n2",
        ]
    finally:
        await bus.close()
        store.close()
