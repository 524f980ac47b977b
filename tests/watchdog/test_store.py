from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers import wait_until
from watchdog.events import DETAILS_MAX_BYTES, TRUNCATED_KEY, Event, Kind, Severity
from watchdog.store import (
    SCHEMA_VERSION,
    EventStore,
    StoreError,
    StoreNotFoundError,
    format_ts,
    parse_ts,
    store_trouble_reason,
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
            "events_target_kind_id",
            "events_target_id",
            "events_kind_id",
            "events_ts",
            "events_severity_id",
        } <= indexes
        assert not {"events_target_kind_ts", "events_target_ts", "events_kind_ts"} & indexes
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
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
    ids = [e.id or 0 for e in two_kinds]
    assert ids == sorted(ids, reverse=True)  # id (commit) order, newest first
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
        ({"target": "a", "kinds": ["crashed"]}, "events_target_kind_id"),
        ({"target": "a", "kinds": ["crashed"], "since": T0}, "events_target_kind_id"),
        ({"target": "a"}, "events_target_id"),
        ({"kinds": ["crashed"], "since": T0}, "events_kind_id"),
        ({"kinds": ["crashed", "down"]}, "events_kind_id"),
        ({"severity": "critical"}, "events_severity_id"),
        ({"severity": "warning"}, "events_severity_id"),
        ({"since": T0, "until": T0 + timedelta(hours=1)}, "events_ts"),
    ],
)
def test_queries_use_an_index(store: EventStore, filters: dict[str, object], index: str) -> None:
    plan = " | ".join(store.explain(**filters))
    assert f"INDEX {index} (" in plan, plan
    assert "SCAN events " not in plan, plan  # never a whole-table walk
    if "until" in filters:
        # A window alone: the newest ids are picked inside the covering (ts) index, and
        # only those rows are read.
        assert "COVERING INDEX events_ts" in plan and "rowid=?" in plan, plan
    else:
        # Walked in id order: the newest come first, no sort of every match.
        arms = plan.split("MERGE (UNION ALL)")[0]
        assert "TEMP B-TREE" not in arms, plan


def test_last_50_of_x_since_t_reads_about_50_index_entries(store: EventStore) -> None:
    """ "last 50 of X since T" walks (target, kind, id, ts) newest first, checking ts in the
    index: it stops after 50 matches however many events X has."""
    rows = [
        (format_ts(T0 + timedelta(seconds=i)), "a" if i % 2 else "b", "crashed", "warning", 1)
        for i in range(20_000)
    ]
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO events (ts, target, kind, severity, severity_rank, message) "
            "VALUES (?, ?, ?, ?, ?, 'm')",
            rows,
        )
    since = T0 + timedelta(seconds=100)
    plan = store.explain(target="a", kinds=["crashed"], since=since)
    assert plan == ["SEARCH events USING INDEX events_target_kind_id (target=? AND kind=?)"]
    found = store.query(target="a", kinds=["crashed"], since=since)
    assert len(found) == 50 and all(e.ts >= since and e.target == "a" for e in found)
    ids = [e.id or 0 for e in found]
    assert ids == sorted(ids, reverse=True) and ids[0] == 20_000


def test_a_wall_clock_step_backwards_never_shows_stale_state(store: EventStore) -> None:
    """The clock jumps back an hour between two events: the later event (higher id) is
    still the latest, for last_event, the status fallback's per-kind query and history."""
    before = store.append(ev("a", Kind.DOWN, minutes=60, message="down at 13:00"))
    store.append(ev("b", Kind.HEALTHY, minutes=61))
    after = store.append(ev("a", Kind.HEALTHY, minutes=0, message="healthy, clock at 12:00"))
    assert after.ts < before.ts and (after.id or 0) > (before.id or 0)
    assert store.last_event("a") == after
    assert store.query(target="a", kinds=[Kind.DOWN, Kind.HEALTHY], limit=1) == [after]
    assert [e.id for e in store.query(limit=None)] == [3, 2, 1]
    assert [e.id for e in store.query(limit=None, newest_first=False)] == [1, 2, 3]
    assert store.query(severity="info", limit=1) == [after]
    # A time filter still filters by ts (the stamp each event carries).
    assert store.query(target="a", since=T0 + timedelta(minutes=30), limit=None) == [before]
    window = store.query(since=T0, until=T0 + timedelta(minutes=61), limit=2)
    assert [e.id for e in window] == [3, 1]  # inside the window, newest id first


def test_schema_1_database_is_migrated_to_id_ordered_indexes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    from watchdog.store import _MIGRATIONS

    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute(
        "INSERT INTO events (ts, target, kind, severity, severity_rank, message, details) "
        "VALUES ('2024-05-01T12:00:00.000Z', 'a', 'down', 'critical', 2, 'old', '{}')"
    )
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    with EventStore(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == 2
        assert [e.message for e in s.query()] == ["old"]
        assert "events_target_kind_id" in " ".join(s.explain(target="a", kinds=["down"]))
    conn = sqlite3.connect(path)
    try:
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
        assert "events_target_kind_ts" not in indexes and "events_target_kind_id" in indexes
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # small: converted
    finally:
        conn.close()


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


# --- sizes ------------------------------------------------------------------------------


def test_event_details_over_64_kib_are_cut_field_by_field(store: EventStore) -> None:
    """A crash whose stderr tail holds 11 lines of 2 MiB: the event fits 64 KiB, keeps every
    small field whole, keeps each line's head and tail, and says what was cut."""
    line = "E" * 1000 + "x" * (2 * 1024 * 1024) + "TAIL"
    event = Event.of("a", Kind.CRASHED, "exited 1", exit_code=1, stderr_tail=[line] * 11)
    assert len(event.details_json()) <= DETAILS_MAX_BYTES
    assert event.details["exit_code"] == 1
    tail = event.details["stderr_tail"]
    assert len(tail) == 11 and all(t.startswith("E" * 100) and t.endswith("TAIL") for t in tail)
    assert "cut" in tail[0]
    marker = event.details[TRUNCATED_KEY]
    assert marker["fields"] == ["stderr_tail"] and marker["bytes"] > 11 * 2 * 1024 * 1024
    committed = store.append(event)
    assert committed.id is not None and store.get(committed.id) == committed


def test_append_bounds_an_event_built_without_event_of(store: EventStore) -> None:
    huge = Event("a", Kind.DOWN, "m" * 100_000, Severity.CRITICAL, {"body": "b" * 300_000, "n": 7})
    committed = store.append(huge)
    assert committed.id is not None
    stored = store.get(committed.id)
    assert stored == committed
    assert len(stored.details_json()) <= DETAILS_MAX_BYTES and stored.details["n"] == 7
    assert stored.details[TRUNCATED_KEY]["fields"] == ["body"]
    assert len(stored.message) <= 4096 and stored.message.startswith("mmm")
    small = store.append(Event.of("a", Kind.HEALTHY, "fine", n=1))
    assert small.details == {"n": 1}  # nothing added to what fits


def test_append_many_is_one_transaction_in_order(store: EventStore) -> None:
    committed = store.append_many([ev("a", Kind.CRASHED, i, f"e{i}") for i in range(5)])
    assert [e.message for e in committed] == [f"e{i}" for i in range(5)]
    ids = [e.id or 0 for e in committed]
    assert ids == list(range(ids[0], ids[0] + 5))
    assert store.query(limit=None, newest_first=False) == committed


# --- store trouble ------------------------------------------------------------------------


def test_store_trouble_reason_classifies_real_sqlite_errors(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    EventStore(path).close()
    readonly = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.Error) as info:
            readonly.execute("INSERT INTO meta VALUES ('x', 'y')")
        reason = store_trouble_reason(info.value)
        assert reason is not None and "SQLITE_READONLY" in reason
        with pytest.raises(sqlite3.Error) as info:
            readonly.execute("SELECT * FROM no_such_table")
        assert store_trouble_reason(info.value) is None  # a bad statement is a bug
    finally:
        readonly.close()
    assert store_trouble_reason(OSError(28, "No space left on device")) is not None
    assert store_trouble_reason(StoreError("the event store is closed")) is None
    assert store_trouble_reason(ValueError("x")) is None


def fill_up(store: EventStore) -> None:
    """Real SQLite behaviour: no page beyond the current count (SQLITE_FULL on growth)."""
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def free_up(store: EventStore) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def test_full_database_fails_the_append_and_the_store_stays_usable(store: EventStore) -> None:
    first = store.append(ev("a", Kind.DOWN))
    fill_up(store)
    with pytest.raises(sqlite3.OperationalError) as info:
        store.append(ev("a", Kind.CRASHED, details="x" * 20_000))
    assert "SQLITE_FULL" in (store_trouble_reason(info.value) or "")
    free_up(store)
    second = store.append(ev("a", Kind.HEALTHY, 1))  # no transaction left half open
    assert [e.id for e in store.query(limit=None, newest_first=False)] == [first.id, second.id]


# --- retention ----------------------------------------------------------------------------


class Floor:
    """A retention participant that holds back events above ``floor`` and prunes nothing."""

    def __init__(self, floor: int | None) -> None:
        self.floor = floor
        self.calls: list[tuple[str, int]] = []

    def retention_floor(self, conn: sqlite3.Connection) -> int | None:
        return self.floor

    def prune_batch(self, conn: sqlite3.Connection, cutoff: str, batch: int) -> int:
        self.calls.append((cutoff, batch))
        return 0


def test_prune_deletes_old_events_in_batches_and_keeps_ids_above_the_floor(
    store: EventStore,
) -> None:
    store.append_many([ev("a", Kind.HEALTHY, minutes=i) for i in range(30)])  # ids 1..30
    participant = Floor(floor=12)
    store.add_retention("consumer", participant)
    cutoff = T0 + timedelta(minutes=20)  # events 1..20 are old
    assert store.prune(cutoff, batch=5) == {"events": 5, "consumer": 0}
    assert store.count() == 25
    assert store.prune(cutoff, batch=5) == {"events": 5, "consumer": 0}
    assert store.prune(cutoff, batch=5) == {"events": 2, "consumer": 0}  # 11, 12: the floor
    assert store.prune(cutoff, batch=5)["events"] == 0
    ids = [e.id for e in store.query(limit=None, newest_first=False)]
    assert ids == list(range(13, 31))  # 13..20 are old but not processed by the consumer
    assert participant.calls[0] == (format_ts(cutoff), 5)
    participant.floor = None  # the consumer caught up (or never ran)
    assert store.prune(cutoff, batch=100)["events"] == 8
    assert [e.id for e in store.query(limit=1, newest_first=False)] == [21]
    plan = store.db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM events INDEXED BY events_ts WHERE ts < ? LIMIT 5",
        ("x",),
    ).fetchall()
    assert "COVERING INDEX events_ts" in str(plan)
    # AUTOINCREMENT: ids are never reused after a prune, so cursors stay valid.
    assert store.append(ev("a", Kind.DOWN, 99)).id == 31


def test_reclaim_returns_freed_pages_to_the_file_system(store: EventStore) -> None:
    store.append_many([ev("a", Kind.HEALTHY, i / 60, details="d" * 2000) for i in range(3000)])
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    big = store.path.stat().st_size
    while store.prune(T0 + timedelta(days=1), batch=1000)["events"]:
        pass
    assert store.count() == 0
    while store.reclaim(500):
        pass
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    assert store.path.stat().st_size < big / 5, (store.path.stat().st_size, big)
