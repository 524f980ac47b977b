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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from watchdog.events import Event, Kind, Severity

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

RECENT_EVENTS = 50


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


def event_to_json(event: Event) -> dict[str, Any]:
    data = event.to_dict()
    data["ts"] = event.ts.isoformat()
    return data


def event_from_json(data: dict[str, Any]) -> Event:
    return Event(
        target=data["target"],
        kind=data["kind"],
        message=data["message"],
        severity=Severity(data["severity"]),
        details=data.get("details") or {},
        ts=datetime.fromisoformat(data["ts"]),
        id=data.get("id"),
    )


@dataclass
class Incident:
    id: str
    target: str
    opened_at: datetime  # wall time of the first event of the outage
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    notified_kinds: set[str] = field(default_factory=set)
    pending: dict[str, str] = field(default_factory=dict)  # kind -> first message, not yet mailed
    group_deadline: float | None = None
    healthy_since: float | None = None
    recovered_at: datetime | None = None  # wall time of the healthy event that started recovery
    last_notified: float | None = None
    thread: list[str] = field(default_factory=list)  # Message-IDs sent in this incident's thread
    duplicates: int = 0  # alerting events folded into an earlier notification
    restarts: int = 0
    held_reason: str | None = None  # last hold published, so a hold is announced once
    closed: bool = False

    def record(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == Kind.RESTARTED:
            self.restarts += 1

    @property
    def alert_kinds(self) -> list[str]:
        return sorted(self.notified_kinds | set(self.pending))

    def restart_reasons(self) -> list[str]:
        return [
            str(e.details.get("reason") or e.message)
            for e in self.events
            if e.kind == Kind.RESTARTED
        ]

    def last_crash(self) -> Event | None:
        for event in reversed(self.events):
            if event.kind == Kind.CRASHED:
                return event
        return None

    def stderr_tail(self, lines: int) -> list[str]:
        """The last ``lines`` stderr lines of the most recent crash that reported any."""
        if lines <= 0:
            return []
        for event in reversed(self.events):
            tail = event.details.get("stderr_tail")
            if event.kind == Kind.CRASHED and isinstance(tail, list) and tail:
                return [str(line) for line in tail[-lines:]]
        return []

    def to_json(self, base: TimeBase) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "opened_at": self.opened_at.isoformat(),
            "events": [event_to_json(e) for e in self.events],
            "notified_kinds": sorted(self.notified_kinds),
            "pending": self.pending,
            "group_deadline": base.to_wall(self.group_deadline),
            "healthy_since": base.to_wall(self.healthy_since),
            "recovered_at": self.recovered_at.isoformat() if self.recovered_at else None,
            "last_notified": base.to_wall(self.last_notified),
            "thread": self.thread,
            "duplicates": self.duplicates,
            "restarts": self.restarts,
            "held_reason": self.held_reason,
            "closed": self.closed,
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
            duplicates=int(data["duplicates"]),
            restarts=int(data["restarts"]),
            held_reason=data["held_reason"],
            closed=bool(data["closed"]),
        )
        incident.events.extend(event_from_json(e) for e in data["events"])
        return incident


@dataclass
class TargetTrack:
    """One target as the pipeline sees it: its current streak and open incident, if any."""

    name: str
    healthy: bool = False
    streak: deque[Event] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    incident: Incident | None = None

    def observe(self, event: Event, now: float) -> None:
        """Bookkeeping for any event of this target (alerting or not)."""
        if event.kind in GOOD_KINDS:
            self.healthy = True
            self.streak.clear()
            if self.incident is not None and self.incident.healthy_since is None:
                self.incident.healthy_since = now
                self.incident.recovered_at = event.ts
        else:
            if event.kind in BAD_KINDS:
                self.healthy = False
                if self.incident is not None:
                    self.incident.healthy_since = None
                    self.incident.recovered_at = None
            self.streak.append(event)
            if (
                event.kind in ONE_SHOT_KINDS
                and self.incident is not None
                and self.incident.healthy_since is not None
            ):
                self.incident.healthy_since = now
                self.incident.recovered_at = event.ts
        if self.incident is not None:
            self.incident.record(event)

    def open_incident(self, event: Event, now: float) -> Incident:
        """Open an incident for ``event`` (an alerting event already `observe`d)."""
        one_shot = event.kind in ONE_SHOT_KINDS  # began with the event, not with the streak
        first = self.streak[0] if self.streak and not one_shot else event
        incident = Incident(
            id=f"{self.name}-{event.id if event.id is not None else 0}",
            target=self.name,
            opened_at=first.ts,
        )
        for earlier in self.streak:
            incident.record(earlier)
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
            "streak": [event_to_json(e) for e in self.streak],
            "incident": self.incident.to_json(base) if self.incident else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], base: TimeBase) -> TargetTrack:
        track = cls(name=data["name"], healthy=bool(data["healthy"]))
        track.streak.extend(event_from_json(e) for e in data["streak"])
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
