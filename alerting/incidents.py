"""Incidents: what the alert pipeline remembers about each target between events.

A target's *streak* is the run of events since its last ``healthy`` event. The first alerting
event of a target opens an `Incident` that adopts the streak (so the crashes that led to a
crash loop belong to it). The incident closes once the target has been healthy, with no bad
event since, for ``ERPWATCH_ALERT_RECOVERY_AFTER`` seconds.

A *one-shot* event (`ONE_SHOT_KINDS`: a ``watchdog-fault``, whose task erpwatch already
restarted) has no ``healthy`` event to end it: its incident recovers from the moment of the
event, and each further one-shot event restarts that recovery timer. So a run of faults is
one incident, and a fault days later opens a new one (a new mail) instead of being folded.

Times used for decisions are monotonic (`Clock.now`). To survive a restart they are stored as
wall-clock instants and mapped back onto the new process's monotonic clock (`TimeBase`).

Bounded memory: the state is saved as JSON in ``alert_state`` at every step, so it keeps
*summaries* of events (`EventSummary`: id, time, kind, severity, a short message and a few
small details: a crash's one-line ``cause``, the ``next_retry_at`` a restart limit, crash loop
or down announces), never whole events, at most `RECENT_EVENTS` per incident and
`STREAK_EVENTS` per streak, plus one bounded stderr tail (the latest crash's, at most
`STDERR_LINES_MAX` lines of `STDERR_LINE_MAX` bytes, `STDERR_BYTES_MAX` in all). A target's
saved state stays below 20 KiB whatever its events carry (a crash loop with ordinary
messages: about 4 KiB); the full events stay in the store, by id.

Inhibition (``stages.py``): while a target that others start ``AFTER`` is down, the alerts of
those dependents are folded into its incident (`Incident.affected`, at most `AFFECTED_MAX`
dependents of `AFFECTED_KINDS_MAX` kinds each), and each dependent's incident remembers whose
incident it was folded into (`Incident.inhibited_by`, `Incident.folded_into`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from watchdog.events import Event, Kind, Severity, cut_text

# Events that mean "the target is not fine": they restart the recovery timer.
BAD_KINDS = frozenset(
    {
        Kind.CRASHED,
        Kind.UNHEALTHY,
        Kind.RESTARTED,
        Kind.RESTART_LIMIT_REACHED,
        Kind.CRASH_LOOP,
        Kind.DOWN,
    }
)
GOOD_KINDS = frozenset({Kind.HEALTHY})
# The pipeline's own decisions never enter it again (no feedback loop).
SELF_KINDS = frozenset({Kind.ALERT_SENT, Kind.ALERT_HELD})
# Bad news that is over once it is told: the incident recovers from the event on.
ONE_SHOT_KINDS = frozenset({Kind.WATCHDOG_FAULT})

RECENT_EVENTS = 20  # event summaries an incident keeps (the mail lists the last 15)
STREAK_EVENTS = 10  # summaries of the events since the last healthy one
# Sizes are bytes of JSON as saved (so a non-ASCII text cannot make them grow).
SUMMARY_MESSAGE_MAX = 160  # an event's message, in its summary
SUMMARY_DETAIL_MAX = 100  # a kept detail value
# What the mail uses, each with its bound in bytes of JSON (a number is kept as it is).
SUMMARY_DETAILS: Mapping[str, int] = {
    "reason": SUMMARY_DETAIL_MAX,
    "exit_code": 24,
    "returncode": 24,
    "signal": 32,
}
# Kept only for the kinds that carry them: a crash's one-line cause, and the automatic retry
# a restart limit, crash loop or down schedules (``next_retry_at``: ISO-8601 UTC).
CAUSE_MAX = 160
RETRY_KINDS = frozenset({"restart-limit-reached", "crash-loop", "down"})
RETRY_SECONDS = ("next_retry_in_s", "retry_in_s")
RETRY_AT_MAX = 40
STDERR_LINES_MAX = 50
STDERR_LINE_MAX = 240
STDERR_BYTES_MAX = 2048
THREAD_KEPT = 10  # Message-IDs kept per incident: the first and the latest ones
AFFECTED_MAX = 20  # dependents an incident lists as also affected
AFFECTED_KINDS_MAX = 10  # kinds kept per affected dependent
AFFECTED_NAME_MAX = 100  # bytes of a dependent's name or kind, as saved


@dataclass(frozen=True, slots=True)
class TimeBase:
    """Maps monotonic instants to wall-clock ones and back, for persistence only."""

    now: float
    wall: datetime

    def to_wall(self, mono: float | None) -> str | None:
        if mono is None:
            return None
        return (self.wall - timedelta(seconds=self.now - mono)).isoformat()

    def to_mono(self, wall: str | None) -> float | None:
        if wall is None:
            return None
        then = datetime.fromisoformat(wall)
        return self.now - (self.wall - then).total_seconds()


def _cut(value: Any, limit: int) -> Any:
    """A small JSON value: numbers and None as they are, anything else as cut text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return cut_text(value if isinstance(value, str) else str(value), limit)


def bound_stderr(lines: Iterable[Any]) -> list[str]:
    """The newest stderr lines within `STDERR_LINES_MAX` lines of `STDERR_LINE_MAX` bytes,
    `STDERR_BYTES_MAX` in all (a long line keeps its head and its tail)."""
    kept: list[str] = []
    total = 0
    for line in reversed(list(lines)[-STDERR_LINES_MAX:]):
        text = cut_text(str(line), STDERR_LINE_MAX)
        size = len(json.dumps(text))
        if total + size > STDERR_BYTES_MAX:
            break
        kept.append(text)
        total += size
    kept.reverse()
    return kept


def stderr_of(event: Event | Mapping[str, Any]) -> list[str]:
    """The bounded stderr tail a crash event reports ([] for anything else)."""
    kind: Any
    details: Mapping[str, Any]
    if isinstance(event, Event):
        kind, details = event.kind, event.details
    else:
        kind, details = event.get("kind"), event.get("details") or {}
    tail = details.get("stderr_tail")
    if kind == Kind.CRASHED and isinstance(tail, list) and tail:
        return bound_stderr(tail)
    return []


def _parses_as_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def summary_details(kind: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """The few small details a summary keeps of an event of ``kind`` (each bounded)."""
    kept = {
        key: _cut(details[key], limit) for key, limit in SUMMARY_DETAILS.items() if key in details
    }
    if kind == Kind.CRASHED and isinstance(details.get("cause"), str) and details["cause"]:
        kept["cause"] = cut_text(details["cause"], CAUSE_MAX)
    if kind in RETRY_KINDS:
        at = details.get("next_retry_at")
        if isinstance(at, str) and len(at) <= RETRY_AT_MAX and _parses_as_time(at):
            kept["next_retry_at"] = at
        for key in RETRY_SECONDS:
            value = details.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                kept[key] = float(value)
    return kept


@dataclass(frozen=True, slots=True)
class EventSummary:
    """What the pipeline remembers of an event: its id (the full event stays in the store)
    and the few small fields the mails use."""

    id: int | None
    ts: datetime
    kind: str
    severity: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, event: Event) -> EventSummary:
        return cls(
            id=event.id,
            ts=event.ts,
            kind=event.kind,
            severity=str(event.severity),
            message=cut_text(event.message, SUMMARY_MESSAGE_MAX),
            details=summary_details(event.kind, event.details),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "ts": self.ts.isoformat(),
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
        }
        if self.details:
            data["details"] = dict(self.details)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EventSummary:
        """Reads a summary, or a whole event saved by an older version (then summarised)."""
        details = data.get("details") or {}
        return cls(
            id=data.get("id"),
            ts=datetime.fromisoformat(data["ts"]),
            kind=data["kind"],
            severity=str(Severity(data["severity"])),
            message=cut_text(str(data["message"]), SUMMARY_MESSAGE_MAX),
            details=summary_details(str(data["kind"]), details),
        )


def _legacy_stderr(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """The stderr tail of the latest crash among whole events saved by an older version."""
    for data in reversed(list(items)):
        tail = stderr_of(data)
        if tail:
            return tail
    return []


@dataclass
class Incident:
    id: str
    target: str
    opened_at: datetime  # wall time of the first event of the outage
    events: deque[EventSummary] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    notified_kinds: set[str] = field(default_factory=set)
    pending: dict[str, str] = field(default_factory=dict)  # kind -> first message, not yet mailed
    group_deadline: float | None = None
    healthy_since: float | None = None
    recovered_at: datetime | None = None  # wall time of the healthy event that started recovery
    last_notified: float | None = None
    thread: list[str] = field(default_factory=list)  # Message-IDs: the first + the latest
    thread_count: int = 0  # mails sent in this incident's thread
    duplicates: int = 0  # alerting events folded into an earlier notification
    restarts: int = 0
    held_reason: str | None = None  # last hold published, so a hold is announced once
    closed: bool = False
    crash: EventSummary | None = None  # the latest crash
    stderr: list[str] = field(default_factory=list)  # the latest crash's tail that had one
    # Dependents whose alerts were folded into this incident: target -> its alerting kinds.
    affected: dict[str, list[str]] = field(default_factory=dict)
    # While this incident's mail is withheld because a dependency is down: that target and
    # the id of its incident (kept until this incident closes or is mailed again).
    inhibited_by: str | None = None
    folded_into: str | None = None

    def record(self, event: Event) -> None:
        self.add(EventSummary.of(event), stderr_of(event))

    def add(self, summary: EventSummary, stderr: list[str] | None = None) -> None:
        self.events.append(summary)
        if summary.kind == Kind.RESTARTED:
            self.restarts += 1
        elif summary.kind == Kind.CRASHED:
            self.crash = summary
        if stderr:
            self.stderr = list(stderr)

    def add_message_id(self, message_id: str) -> None:
        """Remember a mail of this thread: the first and the `THREAD_KEPT` - 1 latest."""
        self.thread.append(message_id)
        self.thread_count += 1
        if len(self.thread) > THREAD_KEPT:
            del self.thread[1 : len(self.thread) - THREAD_KEPT + 1]

    def fold(self, dependent: str, kinds: Iterable[str]) -> bool:
        """Record ``dependent`` as also affected, with ``kinds`` added to the kinds already
        recorded for it (bounded: a dependent beyond `AFFECTED_MAX` is not listed).
        Returns whether anything changed."""
        name = cut_text(dependent, AFFECTED_NAME_MAX)
        known = self.affected.get(name)
        if known is None and len(self.affected) >= AFFECTED_MAX:
            return False
        merged = sorted({*(known or []), *(cut_text(k, AFFECTED_NAME_MAX) for k in kinds)})
        merged = merged[:AFFECTED_KINDS_MAX]
        if merged == known:
            return False
        self.affected[name] = merged
        return True

    @property
    def alert_kinds(self) -> list[str]:
        return sorted(self.notified_kinds | set(self.pending))

    def restart_reasons(self) -> list[str]:
        return [
            str(e.details.get("reason") or e.message)
            for e in self.events
            if e.kind == Kind.RESTARTED
        ]

    def last_crash(self) -> EventSummary | None:
        return self.crash

    def stderr_tail(self, lines: int) -> list[str]:
        """The last ``lines`` stderr lines of the most recent crash that reported any
        (bounded, see `bound_stderr`)."""
        if lines <= 0:
            return []
        return self.stderr[-lines:]

    def to_json(self, base: TimeBase) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "opened_at": self.opened_at.isoformat(),
            "events": [e.to_json() for e in self.events],
            "notified_kinds": sorted(self.notified_kinds),
            "pending": {k: cut_text(v, SUMMARY_MESSAGE_MAX) for k, v in self.pending.items()},
            "group_deadline": base.to_wall(self.group_deadline),
            "healthy_since": base.to_wall(self.healthy_since),
            "recovered_at": self.recovered_at.isoformat() if self.recovered_at else None,
            "last_notified": base.to_wall(self.last_notified),
            "thread": self.thread,
            "thread_count": self.thread_count,
            "duplicates": self.duplicates,
            "restarts": self.restarts,
            "held_reason": _cut(self.held_reason, SUMMARY_MESSAGE_MAX),
            "closed": self.closed,
            "crash": self.crash.to_json() if self.crash else None,
            "stderr": self.stderr,
            "affected": self.affected,
            "inhibited_by": self.inhibited_by,
            "folded_into": self.folded_into,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], base: TimeBase) -> Incident:
        incident = cls(
            id=data["id"],
            target=data["target"],
            opened_at=datetime.fromisoformat(data["opened_at"]),
            notified_kinds=set(data["notified_kinds"]),
            pending=dict(data["pending"]),
            group_deadline=base.to_mono(data["group_deadline"]),
            healthy_since=base.to_mono(data["healthy_since"]),
            recovered_at=(
                datetime.fromisoformat(data["recovered_at"]) if data["recovered_at"] else None
            ),
            last_notified=base.to_mono(data["last_notified"]),
            thread=list(data["thread"]),
            thread_count=int(data.get("thread_count", len(data["thread"]))),
            duplicates=int(data["duplicates"]),
            restarts=int(data["restarts"]),
            held_reason=data["held_reason"],
            closed=bool(data["closed"]),
            inhibited_by=data.get("inhibited_by"),
            folded_into=data.get("folded_into"),
        )
        for dependent, kinds in (data.get("affected") or {}).items():
            incident.fold(str(dependent), (str(k) for k in kinds))
        incident.events.extend(EventSummary.from_json(e) for e in data["events"])
        if "stderr" in data:  # this version's form
            incident.stderr = bound_stderr(data["stderr"])
            incident.crash = EventSummary.from_json(data["crash"]) if data["crash"] else None
        else:  # an older version saved whole events: take the crash facts from them
            incident.stderr = _legacy_stderr(data["events"])
            crashes = [e for e in incident.events if e.kind == Kind.CRASHED]
            incident.crash = crashes[-1] if crashes else None
        if len(incident.thread) > THREAD_KEPT:
            del incident.thread[1 : len(incident.thread) - THREAD_KEPT + 1]
        return incident


@dataclass
class TargetTrack:
    """One target as the pipeline sees it: its current streak and open incident, if any."""

    name: str
    healthy: bool = False
    streak: deque[EventSummary] = field(default_factory=lambda: deque(maxlen=STREAK_EVENTS))
    incident: Incident | None = None
    stderr: list[str] = field(default_factory=list)  # of the streak's latest crash (no incident)
    # The streak keeps only its latest summaries; these remember its start and its restarts.
    streak_since: datetime | None = None
    streak_restarts: int = 0

    def observe(self, event: Event, now: float) -> None:
        """Bookkeeping for any event of this target (alerting or not)."""
        summary = EventSummary.of(event)
        stderr = stderr_of(event)
        if event.kind in GOOD_KINDS:
            self.healthy = True
            self.streak.clear()
            self.stderr = []
            self.streak_since = None
            self.streak_restarts = 0
            if self.incident is not None and self.incident.healthy_since is None:
                self.incident.healthy_since = now
                self.incident.recovered_at = event.ts
        else:
            if event.kind in BAD_KINDS:
                self.healthy = False
                if self.incident is not None:
                    self.incident.healthy_since = None
                    self.incident.recovered_at = None
            self.streak.append(summary)
            if self.streak_since is None:
                self.streak_since = event.ts
            if event.kind == Kind.RESTARTED:
                self.streak_restarts += 1
            if stderr and self.incident is None:
                self.stderr = stderr  # an open incident keeps it instead (one copy only)
            if (
                event.kind in ONE_SHOT_KINDS
                and self.incident is not None
                and self.incident.healthy_since is not None
            ):
                self.incident.healthy_since = now
                self.incident.recovered_at = event.ts
        if self.incident is not None:
            self.incident.add(summary, stderr)

    def open_incident(self, event: Event, now: float) -> Incident:
        """Open an incident for ``event`` (an alerting event already `observe`d)."""
        one_shot = event.kind in ONE_SHOT_KINDS  # began with the event, not with the streak
        opened_at = event.ts
        if self.streak and not one_shot:
            opened_at = self.streak_since or self.streak[0].ts
        incident = Incident(
            id=f"{self.name}-{event.id if event.id is not None else 0}",
            target=self.name,
            opened_at=opened_at,
        )
        for earlier in self.streak:
            incident.add(earlier)
        incident.restarts = max(incident.restarts, self.streak_restarts)
        if self.stderr:
            incident.stderr, self.stderr = self.stderr, []
        # Recovering at once: an alert-failed about a target that is fine, a watchdog-fault.
        if self.healthy or one_shot:
            incident.healthy_since = now
            incident.recovered_at = event.ts
        self.incident = incident
        return incident

    def to_json(self, base: TimeBase) -> dict[str, Any]:
        return {
            "name": self.name,
            "healthy": self.healthy,
            "streak": [e.to_json() for e in self.streak],
            "stderr": self.stderr,
            "streak_since": self.streak_since.isoformat() if self.streak_since else None,
            "streak_restarts": self.streak_restarts,
            "incident": self.incident.to_json(base) if self.incident else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], base: TimeBase) -> TargetTrack:
        track = cls(name=data["name"], healthy=bool(data["healthy"]))
        track.streak.extend(EventSummary.from_json(e) for e in data["streak"])
        since = data.get("streak_since")
        if since is not None:
            track.streak_since = datetime.fromisoformat(since)
        elif data["streak"]:
            track.streak_since = datetime.fromisoformat(data["streak"][0]["ts"])
        track.streak_restarts = int(
            data.get("streak_restarts", sum(e["kind"] == Kind.RESTARTED for e in data["streak"]))
        )
        if "stderr" in data:
            track.stderr = bound_stderr(data["stderr"])
        elif data["incident"] is None:
            track.stderr = _legacy_stderr(data["streak"])
        if data["incident"] is not None:
            track.incident = Incident.from_json(data["incident"], base)
        return track


@dataclass
class IncidentBook:
    targets: dict[str, TargetTrack] = field(default_factory=dict)

    def track(self, target: str) -> TargetTrack:
        track = self.targets.get(target)
        if track is None:
            track = self.targets[target] = TargetTrack(name=target)
        return track

    def open_incidents(self) -> list[Incident]:
        return [t.incident for t in self.targets.values() if t.incident is not None]

    def incident(self, target: str) -> Incident | None:
        track = self.targets.get(target)
        return track.incident if track is not None else None
