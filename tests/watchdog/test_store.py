from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers import wait_until
from watchdog.events import Event, Kind, Severity
from watchdog.store import (
    SCHEMA_VERSION,
    EventStore,
    StoreError,
    StoreNotFoundError,
    format_ts,
    parse_ts,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def ev(target: str, kind: str, minutes: float = 0, message: str = "m", **details: object) -> Event:
    base = Event.of(target, kind, message, **details)
    return Event(
        target=base.target,
        kind=base.kind,
        message=base.message,
        severity=base.severity,
        details=base.details,
        ts=T0 + timedelta(minutes=minutes),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore(tmp_path / "sub" / "events.db")
    yield s
    s.close()


@pytest.fixture
def filled(store: EventStore) -> EventStore:
    """Targets a and b, ten minutes of mixed kinds, one event a minute each."""
    kinds = [Kind.HEALTHY, Kind.CRASHED, Kind.RESTARTED, Kind.DOWN, Kind.DEGRADED]
    for minute in range(10):
        for target in ("a", "b"):
            kind = kinds[minute % len(kinds)]
            store.append(ev(target, kind, minute, f"{target} {kind} {minute}"))
    return store


def test_format_ts_is_utc_milliseconds_z() -> None:
    ts = datetime(2024, 5, 1, 14, 0, 1, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_ts(ts) == "2024-05-01T12:00:01.123Z"
    assert format_ts(datetime(2024, 5, 1, 12, 0)) == "2024-05-01T12:00:00.000Z"
    assert parse_ts("2024-05-01T12:00:01.123Z") == datetime(2024, 5, 1, 12, 0, 1, 123000, UTC)


def test_creates_parent_dirs_wal_and_schema(store: EventStore) -> None:
    assert store.path.is_file()
    assert store.schema_version() == SCHEMA_VERSION
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
        assert {
            "events_target_kind_ts",
            "events_target_ts",
            "events_kind_ts",
            "events_ts",
            "events_severity_ts",
        } <= indexes
    finally:
        conn.close()


def test_append_returns_committed_copy_with_ids_in_order(store: EventStore) -> None:
    first = store.append(Event.of("a", Kind.CRASHED, "boom", exit_code=1))
    second = store.append(Event.of("a", Kind.RESTARTED, "again"))
    assert first.id is not None and second.id == first.id + 1
    assert first.severity is Severity.WARNING
    assert store.get(first.id) == first  # ts normalised to the stored milliseconds
    assert store.query(limit=None, newest_first=False) == [first, second]
    assert first.details == {"exit_code": 1}


def test_reopen_keeps_events_and_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with EventStore(path) as s:
        committed = s.append(ev("a", Kind.DOWN))
    with EventStore(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.count() == 1
        assert s.last_event("a") == committed
        assert s.append(ev("a", Kind.HEALTHY, 1)).id == (committed.id or 0) + 1


def test_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    EventStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        EventStore(path)


def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        EventStore(path)
    with pytest.raises(StoreError):
        EventStore.open_readonly(path)


def test_failed_consumer_transaction_rolls_back_its_writes_never_an_event(
    store: EventStore,
) -> None:
    """`append` commits the event alone; a consumer's own transaction cannot undo it."""
    with store.transaction() as conn:
        conn.execute("CREATE TABLE outbox (event_id INTEGER NOT NULL, note TEXT NOT NULL)")
    committed = store.append(ev("a", Kind.DOWN))
    assert committed.id is not None
    with pytest.raises(RuntimeError, match="consumer failed"), store.transaction() as conn:
        conn.execute("INSERT INTO outbox VALUES (?, 'queued')", (committed.id,))
        raise RuntimeError("consumer failed")
    assert store.get(committed.id) == committed and store.count() == 1
    assert store.db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    with store.transaction() as conn:
        conn.execute("INSERT INTO outbox VALUES (?, 'queued')", (committed.id,))
    assert [row["event_id"] for row in store.db.table("outbox").rows] == [committed.id]


def test_transaction_does_not_nest(store: EventStore) -> None:
    with store.transaction() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(StoreError, match="already open"), store.transaction():
            pass
        conn.execute("INSERT INTO t VALUES (1)")
    assert store.db.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_query_filters(filled: EventStore) -> None:
    s = filled
    assert s.count() == 20
    assert len(s.query(limit=None)) == 20
    assert len(s.query()) == 20
    assert len(s.query(limit=3)) == 3

    by_target = s.query(target="a", limit=None)
    assert {e.target for e in by_target} == {"a"} and len(by_target) == 10

    crashed = s.query(target="b", kinds=["crashed"], limit=None)
    assert [e.ts.minute for e in crashed] == [6, 1]

    two_kinds = s.query(kinds=[Kind.CRASHED, Kind.DOWN], limit=None)
    assert len(two_kinds) == 8
    assert [e.ts for e in two_kinds] == sorted((e.ts for e in two_kinds), reverse=True)
    assert len(s.query(kinds=["crashed", "down"], limit=3)) == 3

    critical = s.query(severity="critical", limit=None)
    assert {e.kind for e in critical} == {"down"}
    warning_up = s.query(severity="warning", limit=None)
    assert {e.kind for e in warning_up} == {"crashed", "restarted", "down", "degraded"}
    assert len(s.query(severity="info", limit=None)) == 20

    window = s.query(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4), limit=None)
    assert sorted({e.ts.minute for e in window}) == [2, 3]  # half-open

    combo = s.query(
        target="a", kinds=["crashed", "down"], severity="critical", since=T0, limit=None
    )
    assert [(e.kind, e.ts.minute) for e in combo] == [("down", 8), ("down", 3)]

    oldest = s.query(newest_first=False, limit=2)
    assert [e.ts.minute for e in oldest] == [0, 0]
    assert s.query(target="nobody") == []
    assert s.last_event("b") == s.query(target="b", limit=1)[0]
    assert s.last_event("nobody") is None


def test_after_id_catches_up_in_id_order(filled: EventStore) -> None:
    all_events = filled.query(limit=None, newest_first=False)
    middle = all_events[9].id
    rest = filled.query(after_id=middle, newest_first=False, limit=None)
    assert [e.id for e in rest] == [e.id for e in all_events[10:]]


def test_bad_query_arguments(store: EventStore) -> None:
    with pytest.raises(ValueError):
        store.query(severity="loud")
    with pytest.raises(ValueError):
        store.query(limit=-1)


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"target": "a", "kinds": ["crashed"]}, "events_target_kind_ts"),
        ({"target": "a"}, "events_target_ts"),
        ({"kinds": ["crashed"], "since": T0}, "events_kind_ts"),
        ({"kinds": ["crashed", "down"]}, "events_kind_ts"),
        ({}, "events_ts"),
        ({"severity": "critical"}, "events_severity_ts"),
        ({"severity": "warning"}, "events_severity_ts"),
    ],
)
def test_queries_use_an_index(store: EventStore, filters: dict[str, object], index: str) -> None:
    plan = " | ".join(store.explain(**filters))
    assert index in plan, plan
    assert "SCAN events " not in plan.replace(f"SCAN events USING INDEX {index}", ""), plan


def test_readonly_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        EventStore.open_readonly(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_readonly_cannot_write(filled: EventStore) -> None:
    with EventStore.open_readonly(filled.path) as ro:
        assert ro.count() == 20
        with pytest.raises(StoreError):
            ro.append(ev("a", Kind.DOWN))


def test_reader_sees_commits_while_writer_appends(store: EventStore) -> None:
    total = 300
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(total):
                store.append(ev("a", Kind.HEALTHY, i / 1000))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
            raise

    reader = EventStore.open_readonly(store.path)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen: list[int] = []

        def reader_caught_up() -> bool:
            count = reader.count()
            latest = reader.query(limit=5)
            ids = [e.id or 0 for e in latest]
            assert ids == sorted(ids, reverse=True)
            seen.append(count)
            return count == total

        wait_until(reader_caught_up, timeout=20, what="reader to see every committed event")
        assert seen == sorted(seen), "the reader never goes back in time"
    finally:
        thread.join(timeout=20)
        reader.close()
    assert not errors


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    s = EventStore(tmp_path / "e.db")
    s.close()
    s.close()
    with pytest.raises(StoreError):
        s.append(ev("a", Kind.DOWN))
    with pytest.raises(StoreError):
        s.count()
