"""Availability ratios and incidents: pure functions on plain events, and the incremental
cache against a real SQLite event store (its time is the events' own, never the wall clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watchdog import availability
from watchdog.availability import (
    DOWN,
    OFF,
    UP,
    AvailabilityCache,
    build_incidents,
    load_incidents,
    ratios,
    state_class,
)
from watchdog.events import Event, Kind
from watchdog.store import EventStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
W200 = {"w": timedelta(seconds=200)}


def ev(
    kind: str, at: datetime, state: str | None = None, target: str = "erp", **details: Any
) -> Event:
    if state is not None:
        details["state"] = state
    return Event(target, kind, f"{kind} message", details=details, ts=at)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """The real store, counting what each query returned."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.calls: list[tuple[dict[str, Any], int]] = []

    def query(self, **filters: Any) -> list[Event]:
        found = self.store.query(**filters)
        self.calls.append((filters, len(found)))
        return found


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with EventStore(tmp_path / "events.db") as opened:
        yield opened


# --- ratios ----------------------------------------------------------------------------------


def test_up_time_over_observed_time() -> None:
    assert ratios([(0, UP), (100, DOWN), (150, UP)], 200, W200) == {"w": 0.75}


def test_stopped_on_purpose_is_not_counted_either_way() -> None:
    assert ratios([(0, UP), (50, OFF), (150, DOWN)], 200, W200) == {"w": 0.5}


def test_nothing_observed_is_none() -> None:
    assert ratios([], 200, W200) == {"w": None}
    assert ratios([(0, OFF)], 200, W200) == {"w": None}
    assert ratios([(300, UP)], 200, W200) == {"w": None}  # only after now


def test_windows_clip_and_time_before_the_first_event_is_unobserved() -> None:
    now = T0.timestamp()
    changes = [((T0 - 10 * 24 * HOUR).timestamp(), UP), ((T0 - HOUR).timestamp(), DOWN)]
    result = ratios(changes, now)
    assert result["24h"] == pytest.approx(23 / 24)
    assert result["7d"] == pytest.approx(1 - 1 / (7 * 24))
    assert result["30d"] == pytest.approx(1 - 1 / (10 * 24))  # observed for 10 days only


def test_state_class_reads_the_state_after_the_event() -> None:
    assert state_class(ev("healthy", T0, "healthy")) == UP
    assert state_class(ev("degraded", T0, "degraded")) == UP
    assert state_class(ev("crashed", T0, "restarting")) == DOWN
    assert state_class(ev("restart-limit-reached", T0, "failed")) == DOWN
    assert state_class(ev("started", T0, "starting")) == DOWN
    assert state_class(ev("stopped", T0, "stopped")) == OFF
    assert state_class(ev("healthy", T0)) == UP  # no state: its kind


# --- the cache over the store ----------------------------------------------------------------


def test_cache_reads_the_window_once_then_only_new_events(store: EventStore) -> None:
    store.append_many(
        [
            ev("started", T0 - 40 * 24 * HOUR, "starting"),
            ev("healthy", T0 - 40 * 24 * HOUR, "healthy"),  # in force when the window began
            ev("crashed", T0 - 2 * HOUR, "restarting"),
            ev("alert-sent", T0 - 2 * HOUR, receiver="email"),  # not a state change: not read
            ev("resource-warning", T0 - 2 * HOUR, "restarting"),
            ev("healthy", T0 - HOUR, "healthy"),
            ev("healthy", T0 - HOUR, "healthy", target="other"),
        ]
    )
    counting, clock = CountingStore(store), Clock()
    cache = AvailabilityCache(counting, ttl=5.0, clock=clock)
    first = cache.get("erp", T0)
    assert first["24h"] == pytest.approx(23 / 24)
    assert first["30d"] == pytest.approx(1 - 1 / (30 * 24))
    assert sum(rows for _, rows in counting.calls) == 3  # the one in force, the two since
    store.append(ev("unhealthy", T0, "unhealthy"))
    clock.now = 4.0
    assert cache.get("erp", T0 + HOUR) == first  # cached within the TTL
    clock.now = 5.0
    later = cache.get("erp", T0 + HOUR)
    assert later["24h"] == pytest.approx(22 / 24)
    filters, rows = counting.calls[-1]
    assert rows == 1 and filters["after_id"] is not None  # only what is new
    assert cache.get("nobody", T0) == {"24h": None, "7d": None, "30d": None}


def test_incremental_query_walks_the_target_kind_index(store: EventStore) -> None:
    plan = " ".join(
        store.explain(
            target="erp",
            kinds=availability.STATE_KINDS,
            after_id=10,
            limit=None,
            newest_first=False,
        )
    )
    assert "events_target_kind_id" in plan
    assert "SCAN events" not in plan.replace("SCAN events USING", "")


def test_reads_are_bounded_whatever_the_store_holds(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read takes at most MAX_CHANGES events (all that can be kept), later ones only
    the new events: the cost does not grow with the store (200k events: see the module notes
    of watchdog.availability for the times measured)."""
    monkeypatch.setattr(availability, "MAX_CHANGES", 1000)
    start = T0 - 29 * 24 * HOUR
    step = timedelta(seconds=29 * 24 * 3600 / 30_000)
    cycle = [("healthy", "healthy"), ("crashed", "restarting"), ("alert-sent", None)]
    events = [
        ev(cycle[i % 3][0], start + i * step, cycle[i % 3][1], target="erp" if i % 2 else "other")
        for i in range(30_000)
    ]
    store.append_many(events)
    counting, clock = CountingStore(store), Clock()
    cache = AvailabilityCache(counting, ttl=0.0, clock=clock)
    first = cache.get("erp", T0)
    assert [rows for _, rows in counting.calls] == [1000]  # newest 1000 of ~10 000
    assert len(cache._timelines["erp"].changes) == 1000  # bounded
    assert first["24h"] == pytest.approx(2 / 3, abs=0.01)  # healthy 2 steps of 3
    store.append(ev("healthy", T0, "healthy"))
    counting.calls.clear()
    cache.get("erp", T0 + HOUR)
    assert [rows for _, rows in counting.calls] == [1]
    assert len(cache._timelines["erp"].changes) == 1000


def test_changes_older_than_the_longest_window_are_dropped(store: EventStore) -> None:
    store.append_many([ev("healthy", T0, "healthy"), ev("crashed", T0 + HOUR, "restarting")])
    store.append(ev("healthy", T0 + 2 * HOUR, "healthy"))
    clock = Clock()
    cache = AvailabilityCache(store, ttl=0.0, clock=clock)
    assert cache.get("erp", T0 + 3 * HOUR)["24h"] == pytest.approx(2 / 3)
    later = T0 + 40 * 24 * HOUR
    assert cache.get("erp", later) == {"24h": 1.0, "7d": 1.0, "30d": 1.0}
    assert len(cache._timelines["erp"].changes) == 1  # only the one in force
    cache.retain(["other"])
    assert "erp" not in cache._timelines


def test_a_clock_step_back_keeps_the_order(store: EventStore) -> None:
    store.append_many([ev("healthy", T0, "healthy"), ev("crashed", T0 - HOUR, "restarting")])
    cache = AvailabilityCache(store, ttl=0.0)
    result = cache.get("erp", T0 + HOUR)
    assert result["24h"] == pytest.approx(0.0)  # down from T0 on, not negative time


# --- incidents -------------------------------------------------------------------------------


def test_a_crash_incident_with_its_restart_and_notifications() -> None:
    t = [T0 + timedelta(seconds=s) for s in range(10)]
    events = [
        ev("started", t[0], "starting"),
        ev("healthy", t[0], "healthy"),
        ev(
            "crashed",
            t[1],
            "restarting",
            exit_code=1,
            stderr_tail=["ConnectionError: no db"],
            cause="exit code 1: ConnectionError: no db",
        ),
        ev("restarted", t[2], "starting"),
        ev("alert-sent", t[3], receiver="email", purpose="alert"),
        ev("healthy", t[5], "healthy"),
        ev("alert-sent", t[6], receiver="email", purpose="resolved"),
    ]
    for index, event in enumerate(events, start=1):
        events[index - 1] = event.with_id(index)
    (incident,) = build_incidents(events, T0 + HOUR)
    assert incident["target"] == "erp" and incident["id"] == 3
    assert incident["started_at"] == "2026-03-01T12:00:01.000Z"
    assert incident["ended_at"] == "2026-03-01T12:00:05.000Z"
    assert incident["duration_s"] == 4.0 and incident["resolution"] == "healthy"
    assert incident["restarts"] == 1
    assert [n["purpose"] for n in incident["notifications"]] == ["alert", "resolved"]
    assert incident["cause"] == {
        "summary": "exit code 1: ConnectionError: no db",
        "kind": "crash",
        "exit_code": 1,
        "signal": None,
        "stderr_line": "ConnectionError: no db",
        "checks": [],
    }


def test_open_incidents_newest_first_per_target_and_what_is_no_incident() -> None:
    check = {"name": "database", "status": "failed", "error": "timeout", "latency_ms": 2.0}
    events = [
        ev("healthy", T0, "healthy"),
        ev("restarted", T0 + HOUR, "starting", actor="bob"),  # an operator's restart
        ev("healthy", T0 + HOUR, "healthy"),
        ev("healthy", T0, "healthy", target="api"),
        ev("degraded", T0 + 2 * HOUR, "degraded", checks=[check]),
        ev("unhealthy", T0 + 2 * HOUR, "unhealthy", target="api"),
        ev("stopped", T0 + 3 * HOUR, "stopped", target="api"),  # held: the incident ends
        ev("stopped", T0 + 3 * HOUR, "stopped", target="erpwatch"),  # no state change of ours
    ]
    events = [event.with_id(i) for i, event in enumerate(events, start=1)]
    found = build_incidents(events, T0 + 4 * HOUR)
    assert [(i["target"], i["ended_at"] is None) for i in found] == [("api", False), ("erp", True)]
    api, erp = found
    assert api["resolution"] == "stopped" and api["duration_s"] == 3600.0
    assert erp["duration_s"] == 7200.0  # open: until now
    assert erp["cause"]["kind"] == "checks" and erp["cause"]["checks"] == [check]
    assert erp["cause"]["summary"] == "degraded message"


def test_erpwatch_starting_a_failing_target_is_an_incident() -> None:
    events = [
        ev("stopped", T0, "stopped"),
        ev("started", T0 + HOUR, "starting"),
        ev("crashed", T0 + HOUR, "restarting"),
        ev("restart-limit-reached", T0 + HOUR, "failed"),
    ]
    (incident,) = build_incidents([e.with_id(i) for i, e in enumerate(events, 1)], T0 + 2 * HOUR)
    assert incident["id"] == 3 and incident["cause"]["kind"] == "crash"


def test_load_incidents_leaves_out_one_whose_start_was_not_read(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability, "INCIDENT_SCAN", 40)
    events = [ev("healthy", T0, "healthy")]
    for n in range(30):  # one long incident
        events.append(ev("crashed", T0 + n * HOUR, "restarting"))
        events.append(ev("restarted", T0 + n * HOUR, "starting"))
    events.append(ev("healthy", T0 + 31 * HOUR, "healthy"))
    for n in range(3):  # then three short ones
        events.append(ev("unhealthy", T0 + (40 + n) * HOUR, "unhealthy"))
        events.append(ev("healthy", T0 + (40 + n) * HOUR, "healthy"))
    store.append_many(events)
    found = load_incidents(store, target="erp", limit=50, now=T0 + 50 * HOUR)
    assert len(found) == 3  # the long one began before the newest 40 events
    assert load_incidents(store, target="erp", limit=2)[0]["id"] == found[0]["id"]
    monkeypatch.setattr(availability, "INCIDENT_SCAN", 1000)
    assert len(load_incidents(store, target=None, limit=50)) == 4
    assert load_incidents(store, target="other", limit=50) == []
    assert Kind.ALERT_SENT in availability.INCIDENT_KINDS
