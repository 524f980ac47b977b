"""Retention (ERPWATCH_RETENTION_DAYS): events, the alert log and sent/dead mails older than
the cut-off are pruned in batches on the bus's writer thread, never an event alerting has
not processed, never a pending mail; freed pages go back to the file system (incremental
auto-vacuum), so a crash loop of many days keeps the database within a bounded size.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerting.outbox import Outbox
from tests.helpers import await_until
from watchdog.bus import EventBus
from watchdog.clock import FakeClock
from watchdog.config import load_settings
from watchdog.events import DEFAULT_SEVERITY, Kind, Severity
from watchdog.store import SEVERITY_RANK, EventStore, format_ts

NOW = datetime(2026, 3, 11, 12, 0, tzinfo=UTC)  # the simulated end of the crash loop
DAYS = 10
EVENTS_PER_DAY = 12_000  # 120,000 in all: a crash cycle every ~22 s, for ten days
MiB = 1024 * 1024
# The stated bound: with RETENTION_DAYS=3, pruned daily, the database (file + WAL) of this
# crash loop stays below this after every prune once three days have passed (measured here:
# ~31 MiB file + 4 MiB WAL; ten days unpruned would be ~105 MiB).
BOUND_BYTES = 40 * MiB


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EventBus]:
    store = EventStore(tmp_path / "erpwatch.db")
    b = EventBus(store)
    yield b
    await b.close()
    store.close()


STDERR = [f'  File "/srv/erp/app/module_{i}.py", line {100 + i}, in handler' for i in range(18)]
STDERR += ["KeyError: 'customer_id'", "ERROR: application startup failed. Exiting."]


def crash_loop_rows(start: datetime, end: datetime, n: int, seed: int) -> list[tuple[Any, ...]]:
    """``n`` events of a crash loop between ``start`` and ``end``: started, crashed (with a
    20-line stderr tail), restarted, now and then crash-loop / down / alert decisions."""
    rng = random.Random(seed)
    cycle = [Kind.STARTED, Kind.CRASHED, Kind.RESTARTED]
    step = (end - start) / n
    rows: list[tuple[Any, ...]] = []
    for i in range(n):
        kind = (
            cycle[i % 3]
            if rng.random() > 0.05
            else rng.choice([Kind.CRASH_LOOP, Kind.DOWN, Kind.ALERT_HELD])
        )
        details: dict[str, Any] = {"pid": 1000 + i, "restarts_total": i // 3, "state": "backoff"}
        if kind == Kind.CRASHED:
            details.update(exit_code=3, signal=None, stderr_tail=STDERR)
        elif kind == Kind.RESTARTED:
            details.update(reason="crashed (exit code 3)")
        severity = DEFAULT_SEVERITY.get(kind, Severity.INFO)
        rows.append(
            (
                format_ts(start + step * i),
                "backend",
                str(kind),
                str(severity),
                SEVERITY_RANK[severity],
                f"backend {kind}: exited with code 3" if kind == Kind.CRASHED else f"{kind}",
                json.dumps(details, sort_keys=True),
            )
        )
    return rows


def insert_day(store: EventStore, day_start: datetime, day: int) -> None:
    """A day of the crash loop (raw executemany) plus alerting's own rows of that day; the
    alerting cursor keeps up (it has processed everything inserted)."""
    rows = crash_loop_rows(day_start, day_start + timedelta(days=1), EVENTS_PER_DAY, day)
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO events (ts, target, kind, severity, severity_rank, message, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        log_rows = [
            (format_ts(day_start + timedelta(minutes=m)), "backend", "backend-1", "held",
             "12 repeated alerting event(s) folded into the open incident",
             '{"reason": "dedup", "count": 12}')
            for m in range(0, 24 * 60, 2)
        ]  # fmt: skip
        conn.executemany(
            "INSERT INTO alert_log (ts, target, incident_id, decision, message, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            log_rows,
        )
        for status in ("sent", "dead", "pending"):
            conn.execute(
                "INSERT INTO alert_outbox (created, purpose, target, recipients, subject, "
                "message_id, data, trigger_kinds, status) VALUES (?, 'reminder', 'backend', "
                "'[]', 's', ?, ?, '[]', ?)",
                (format_ts(day_start), f"<{day}.{status}@h>", b"m" * 20_000, status),
            )
        conn.execute("UPDATE alert_cursor SET last_event_id = (SELECT max(id) FROM events)")


def count(store: EventStore, sql: str) -> int:
    return int(store.db.execute(sql).fetchone()[0])


async def test_ten_day_crash_loop_with_three_days_retention_stays_bounded(
    bus: EventBus, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(retention_days=3)
    store = bus.store
    outbox = Outbox(store)
    await bus.run_in_writer(outbox.ensure_schema)
    job_times: list[float] = []
    real_prune = store.prune

    def timed_prune(*args: Any, **kwargs: Any) -> dict[str, int]:
        t0 = time.perf_counter()
        try:
            return real_prune(*args, **kwargs)
        finally:
            job_times.append(time.perf_counter() - t0)

    reclaim_times: list[float] = []
    real_reclaim = store.reclaim

    def timed_reclaim(pages: int) -> int:
        t0 = time.perf_counter()
        try:
            return real_reclaim(pages)
        finally:
            reclaim_times.append(time.perf_counter() - t0)

    monkeypatch.setattr(store, "prune", timed_prune)
    monkeypatch.setattr(store, "reclaim", timed_reclaim)
    start = NOW - timedelta(days=DAYS)
    sizes: list[int] = []
    total_deleted = 0
    for day in range(DAYS):
        day_end = start + timedelta(days=day + 1)
        await bus.run_in_writer(insert_day, store, start + timedelta(days=day), day)
        cutoff = day_end - timedelta(days=settings.retention_days)
        report = await bus.prune_once(cutoff)
        total_deleted += report.deleted.get("events", 0)
        assert store.query(until=cutoff, limit=1) == []  # nothing older is left
        sizes.append(store.disk_bytes())
        if day >= 3:
            assert sizes[-1] <= BOUND_BYTES, (day, sizes[-1])

    steady = sizes[3:]
    assert max(steady) <= min(steady) * 1.1  # flat: the freed pages are reused / returned
    kept = store.count()
    assert total_deleted + kept == DAYS * EVENTS_PER_DAY
    assert kept == 3 * EVENTS_PER_DAY
    assert max(job_times) < 30  # a sanity check only; the batches are timed below
    cutoff = NOW - timedelta(days=3)
    # Alerting's tables: old log and sent/dead mails went, every pending mail stayed.
    assert count(store, f"SELECT count(*) FROM alert_log WHERE ts < '{format_ts(cutoff)}'") == 0
    statuses = store.db.execute(
        "SELECT status, count(*) FROM alert_outbox GROUP BY status ORDER BY status"
    ).fetchall()
    assert statuses == [("dead", 3), ("pending", DAYS), ("sent", 3)]
    with capsys.disabled():
        print(
            f"\n10-day crash loop, {DAYS * EVENTS_PER_DAY:,} events, RETENTION_DAYS=3: DB "
            f"(file + WAL) per day {[round(s / MiB, 1) for s in sizes]} MiB; max from day 4 "
            f"{max(sizes[3:]) / MiB:.1f} MiB (bound {BOUND_BYTES / MiB:.0f} MiB); "
            f"{len(job_times)} prune jobs, longest {max(job_times) * 1000:.0f} ms; "
            f"{len(reclaim_times)} reclaim jobs, longest {max(reclaim_times) * 1000:.0f} ms"
        )


async def test_events_alerting_has_not_processed_are_never_pruned(bus: EventBus) -> None:
    store = bus.store
    outbox = Outbox(store)
    await bus.run_in_writer(outbox.ensure_schema)
    start = NOW - timedelta(days=10)
    await bus.run_in_writer(insert_day, store, start, 0)  # cursor = the newest id
    behind = count(store, "SELECT max(id) FROM events") - 500
    await bus.run_in_writer(
        lambda: store.db.execute("UPDATE alert_cursor SET last_event_id = ?", (behind,))
    )
    report = await bus.prune_once(NOW - timedelta(days=3), batch=1000)
    assert report.deleted["events"] == EVENTS_PER_DAY - 500
    left = store.query(limit=None, newest_first=False)
    assert [e.id for e in left] == list(range(behind + 1, behind + 501))  # all old, all kept
    await bus.run_in_writer(
        lambda: store.db.execute("UPDATE alert_cursor SET last_event_id = ?", (behind + 500,))
    )
    assert (await bus.prune_once(NOW - timedelta(days=3))).deleted["events"] == 500


async def test_retention_worker_prunes_every_interval(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "erpwatch.db")
    clock = FakeClock()
    bus = EventBus(store, clock=clock)
    now = [NOW]
    wall: Callable[[], datetime] = lambda: now[0]  # noqa: E731
    try:
        await bus.run_in_writer(insert_day, *_no_outbox(store, NOW - timedelta(days=5)))
        worker = asyncio.create_task(bus.retention_worker(3, interval=3600, wall=wall))
        await await_until(lambda: store.count() == 0, timeout=10, what="the first round (at start)")
        await bus.run_in_writer(insert_day, *_no_outbox(store, NOW - timedelta(hours=36)))
        assert store.count() == EVENTS_PER_DAY
        now[0] = NOW + timedelta(days=3)  # those events are 3.5 to 4.5 days old now

        def next_round() -> bool:
            clock.advance(3600)  # wakes the worker once it sleeps its interval
            return store.count() == 0

        await await_until(next_round, timeout=10, what="the next round")
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
    finally:
        await bus.close()
        store.close()


def _no_outbox(store: EventStore, day_start: datetime) -> tuple[EventStore, datetime, int]:
    """`insert_day` arguments for a store whose alerting tables exist but hold no floor."""
    Outbox(store).ensure_schema()
    return store, day_start, 0
