"""A target's availability and its incidents, computed from its events in the store.

Every event of a target carries ``details.state``: the target's state right after it. Between
two such events the state holds, so a target's history is a run of stretches, each one

- up: healthy or degraded;
- down: starting, unhealthy, restarting, failed (restart limit);
- off: stopped on purpose (an operator's hold, erpwatch stopping): left out of the ratio.

`ratios` is pure: for each window (24 h, 7 d, 30 d) the up time over the observed (up + down)
time, None when nothing was observed. Time before the first known event is not observed. An
erpwatch killed without a clean stop records nothing, so until it runs again the target
counts in its last recorded state.

`AvailabilityCache` reads the store incrementally: the first call for a target reads the
newest `MAX_CHANGES` state-changing events of the longest window (an index range on target,
kind and id/ts), later calls only the events after the last id seen. It keeps state
*changes* only, at most `MAX_CHANGES` per target (the oldest go first: the 30 d ratio then
covers less), and answers from a cache for `CACHE_TTL` seconds. Measured here: a first read
of 20 000 state events ~0.35 s (in a worker thread, once per target), then ~20 ms a refresh
for a target that flapped that often, well under 1 ms for a normal one.

`build_incidents` is pure too: an incident runs from the first trouble event (degraded,
unhealthy, crashed, an automatic restart, the restart limit) to the next healthy event or a
stop on purpose; its notifications are the ``alert-sent`` events of that target meanwhile
(one sent after a quick recovery, a recovery notice, belongs to the incident before it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from watchdog.core import cause, failing_checks, last_line
from watchdog.events import Event, Kind
from watchdog.store import format_ts

UP, DOWN, OFF = "up", "down", "off"
WINDOWS: Mapping[str, timedelta] = {
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
# The kinds of event after which a target's state may differ (down, crash-loop, stop-failed,
# resource and alert events leave it as it was).
STATE_KINDS: tuple[str, ...] = tuple(
    str(kind)
    for kind in (
        Kind.STARTED,
        Kind.HEALTHY,
        Kind.DEGRADED,
        Kind.UNHEALTHY,
        Kind.CRASHED,
        Kind.RESTARTED,
        Kind.RESTART_LIMIT_REACHED,
        Kind.STOPPED,
    )
)
INCIDENT_KINDS: tuple[str, ...] = (*STATE_KINDS, str(Kind.ALERT_SENT))
MAX_CHANGES = 20_000  # state changes kept per target
CACHE_TTL = 5.0  # seconds an availability answer is reused
INCIDENT_SCAN = 10_000  # newest events read to build incidents
INCIDENT_NOTIFICATIONS = 20  # notifications listed per incident
_UP_STATES = frozenset({"healthy", "degraded"})


class EventReader(Protocol):
    """What is read of the store (`watchdog.store.EventStore.query`)."""

    def query(
        self,
        *,
        target: str | None = None,
        kinds: Sequence[str] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
        limit: int | None = 50,
        newest_first: bool = True,
    ) -> list[Event]: ...


def state_class(event: Event) -> str:
    """up / down / off: what the target was after ``event``."""
    state = event.details.get("state")
    if not isinstance(state, str) or not state:
        state = str(event.kind)  # an event without it: its kind says enough
    if state in _UP_STATES:
        return UP
    return OFF if state == "stopped" else DOWN


def ratios(
    changes: Iterable[tuple[float, str]],
    now: float,
    windows: Mapping[str, timedelta] = WINDOWS,
) -> dict[str, float | None]:
    """Up time over observed time per window, from ``changes`` — (POSIX time, class) in
    order, each class holding until the next change, the last one until ``now``."""
    spans = [(name, now - window.total_seconds()) for name, window in windows.items()]
    up = dict.fromkeys(windows, 0.0)
    seen = dict.fromkeys(windows, 0.0)
    items = list(changes)
    for index, (start, kind) in enumerate(items):
        end = items[index + 1][0] if index + 1 < len(items) else now
        if kind == OFF or end <= start:
            continue
        for name, window_start in spans:
            overlap = min(end, now) - max(start, window_start)
            if overlap > 0:
                seen[name] += overlap
                if kind == UP:
                    up[name] += overlap
    return {name: (up[name] / seen[name] if seen[name] > 0 else None) for name in windows}


@dataclass
class _Timeline:
    changes: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=MAX_CHANGES))
    last_id: int = 0
    answer: dict[str, float | None] = field(default_factory=dict)
    answered_at: float = float("-inf")

    def add(self, event: Event) -> None:
        self.last_id = max(self.last_id, event.id or 0)
        kind = state_class(event)
        at = event.ts.timestamp()
        if self.changes:
            last_at, last_kind = self.changes[-1]
            if kind == last_kind:
                return
            at = max(at, last_at)  # the wall clock stepped back: keep the order
        self.changes.append((at, kind))

    def trim(self, horizon: float) -> None:
        """Drop changes before ``horizon`` except the one in force at it."""
        while len(self.changes) >= 2 and self.changes[1][0] <= horizon:
            self.changes.popleft()


class AvailabilityCache:
    """Per-target availability ratios over `WINDOWS`, read incrementally from the store.

    Thread-safe (the status server calls it from worker threads)."""

    def __init__(
        self,
        store: EventReader,
        *,
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._longest = max(WINDOWS.values())
        self._timelines: dict[str, _Timeline] = {}
        self._lock = threading.Lock()

    def get(self, target: str, now: datetime) -> dict[str, float | None]:
        """``{"24h": ratio | None, "7d": ..., "30d": ...}`` for ``target`` at ``now``."""
        with self._lock:
            timeline = self._timelines.get(target)
            if timeline is not None and self._clock() - timeline.answered_at < self._ttl:
                return dict(timeline.answer)
            if timeline is None:
                timeline = self._load(target, now)
                self._timelines[target] = timeline
            else:
                events = self._store.query(
                    target=target,
                    kinds=STATE_KINDS,
                    after_id=timeline.last_id,
                    limit=None,
                    newest_first=False,
                )
                for event in events:
                    timeline.add(event)
            timeline.trim((now - self._longest).timestamp())
            timeline.answer = ratios(timeline.changes, now.timestamp())
            timeline.answered_at = self._clock()
            return dict(timeline.answer)

    def _load(self, target: str, now: datetime) -> _Timeline:
        """The newest `MAX_CHANGES` state events of the longest window (no more can be
        kept: each is at most one change), and the one in force when the window began."""
        timeline = _Timeline()
        since = now - self._longest
        window = self._store.query(target=target, kinds=STATE_KINDS, since=since, limit=MAX_CHANGES)
        window.reverse()
        before: list[Event] = []
        if len(window) < MAX_CHANGES:
            before = self._store.query(target=target, kinds=STATE_KINDS, until=since, limit=1)
        for event in [*before, *window]:
            timeline.add(event)
        if before:  # in force when the window began: it counts from there
            at, kind = timeline.changes[0]
            timeline.changes[0] = (max(at, since.timestamp()), kind)
        return timeline

    def retain(self, targets: Iterable[str]) -> None:
        """Forget targets no longer supervised (a reload removed them)."""
        keep = set(targets)
        with self._lock:
            for name in [name for name in self._timelines if name not in keep]:
                del self._timelines[name]


# --- incidents -----------------------------------------------------------------------------


def _opens(event: Event) -> bool:
    """A trouble event: it opens an incident when none is open."""
    if event.kind == Kind.STARTED:
        return False  # a start (erpwatch's or an operator's) is no trouble by itself
    if event.kind == Kind.RESTARTED and event.details.get("actor"):
        return False  # an operator's restart
    return state_class(event) != OFF and event.details.get("state") != "healthy"


def event_cause(event: Event) -> dict[str, Any]:
    """The cause (shaped like ``/status``'s) an incident's first event names."""
    details = event.details
    checks = details.get("checks")
    failing = failing_checks([c for c in checks if isinstance(c, Mapping)]) if checks else []
    summary = event.message
    for prefix in ("degraded: ", "unhealthy: "):
        summary = summary.removeprefix(prefix)
    if event.kind == Kind.CRASHED:
        return cause(
            "crash",
            str(details.get("cause") or summary),
            exit_code=details.get("exit_code"),
            signal=details.get("signal"),
            stderr_line=last_line(details.get("stderr_tail")),
        )
    if event.kind == Kind.RESTART_LIMIT_REACHED:
        return cause("limit", summary)
    if event.kind == Kind.RESTARTED:
        return cause(str(details.get("cause_kind") or "probe"), summary)
    return cause("checks" if failing else "probe", summary, checks=failing)


def _notification(event: Event) -> dict[str, Any]:
    details = event.details
    return {
        "id": event.id,
        "at": format_ts(event.ts),
        "message": event.message,
        "receiver": details.get("receiver"),
        "purpose": details.get("purpose"),
    }


def build_incidents(events: Iterable[Event], now: datetime) -> list[dict[str, Any]]:
    """Incidents from ``events`` (oldest first, any targets), newest first."""
    done: list[dict[str, Any]] = []
    open_by: dict[str, dict[str, Any]] = {}
    last_by: dict[str, dict[str, Any]] = {}
    for event in events:
        target = event.target
        current = open_by.get(target)
        if event.kind == Kind.ALERT_SENT:
            into = current or last_by.get(target)
            if into is not None and len(into["notifications"]) < INCIDENT_NOTIFICATIONS:
                into["notifications"].append(_notification(event))
            continue
        if "state" not in event.details:
            continue  # not a target's own event (erpwatch's, ...)
        ended = state_class(event) == OFF or event.details.get("state") == "healthy"
        if current is not None:
            if event.kind == Kind.RESTARTED:
                current["restarts"] += 1
            if ended:
                current["ended_at"] = format_ts(event.ts)
                current["resolution"] = "stopped" if state_class(event) == OFF else "healthy"
                current["duration_s"] = round((event.ts - current["_start"]).total_seconds(), 3)
                del open_by[target]
        elif _opens(event):
            current = {
                "target": target,
                "id": event.id,
                "started_at": format_ts(event.ts),
                "ended_at": None,
                "duration_s": None,
                "cause": event_cause(event),
                "restarts": 1 if event.kind == Kind.RESTARTED else 0,
                "notifications": [],
                "resolution": None,
                "_start": event.ts,
            }
            open_by[target] = current
            last_by[target] = current
            done.append(current)
    for incident in open_by.values():
        incident["duration_s"] = round(max((now - incident["_start"]).total_seconds(), 0.0), 3)
    for incident in done:
        del incident["_start"]
    done.reverse()
    return done


def load_incidents(
    store: EventReader, *, target: str | None, limit: int, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` incidents (of ``target``, or of every target) from the store,
    built from its newest relevant events (a tenth of `INCIDENT_SCAN` first, all of it when
    that gave too few): an incident that began before them is left out rather than shown
    with a wrong start."""
    now = now or datetime.now(UTC)
    for scan in (INCIDENT_SCAN // 10, INCIDENT_SCAN):
        events = store.query(target=target, kinds=INCIDENT_KINDS, limit=scan)
        events.reverse()
        complete = len(events) < scan  # every relevant event there is
        found = build_incidents(events if complete else _from_first_recovery(events), now)
        if complete or len(found) >= limit:
            break
    return found[:limit]


def _from_first_recovery(events: list[Event]) -> list[Event]:
    """Drop each target's events before its first healthy or stopped event in ``events``:
    what came before that belongs to an incident whose start was not read."""
    started: set[str] = set()
    kept = []
    for event in events:
        if event.target in started:
            kept.append(event)
        elif "state" in event.details and (
            state_class(event) == OFF or event.details.get("state") == "healthy"
        ):
            started.add(event.target)
            kept.append(event)
    return kept
