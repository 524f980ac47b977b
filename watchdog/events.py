"""Event kinds, severities and the immutable `Event` every state change becomes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Kind(StrEnum):
    # target lifecycle and health (watchdog/)
    STARTED = "started"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"
    RESTARTED = "restarted"
    RESTART_LIMIT_REACHED = "restart-limit-reached"
    CRASH_LOOP = "crash-loop"
    DOWN = "down"
    STOPPED = "stopped"
    STOP_FAILED = "stop-failed"  # stopping the tree raised (EPERM, EMFILE, ...): retried
    RESOURCE_WARNING = "resource-warning"
    RESOURCE_OK = "resource-ok"
    # erpwatch itself
    WATCHDOG_STARTED = "watchdog-started"
    WATCHDOG_STOPPED = "watchdog-stopped"
    WATCHDOG_FAULT = "watchdog-fault"  # a task of erpwatch's own raised and was restarted
    # alert decisions (alerting/)
    ALERT_SENT = "alert-sent"
    ALERT_HELD = "alert-held"
    ALERT_FAILED = "alert-failed"


DEFAULT_SEVERITY: Mapping[str, Severity] = {
    Kind.STARTED: Severity.INFO,
    Kind.HEALTHY: Severity.INFO,
    Kind.DEGRADED: Severity.WARNING,
    Kind.UNHEALTHY: Severity.WARNING,
    Kind.CRASHED: Severity.WARNING,
    Kind.RESTARTED: Severity.WARNING,
    Kind.RESTART_LIMIT_REACHED: Severity.CRITICAL,
    Kind.CRASH_LOOP: Severity.CRITICAL,
    Kind.DOWN: Severity.CRITICAL,
    Kind.STOPPED: Severity.INFO,
    Kind.STOP_FAILED: Severity.CRITICAL,
    Kind.RESOURCE_WARNING: Severity.WARNING,
    Kind.RESOURCE_OK: Severity.INFO,
    Kind.WATCHDOG_STARTED: Severity.INFO,
    Kind.WATCHDOG_STOPPED: Severity.INFO,
    Kind.WATCHDOG_FAULT: Severity.CRITICAL,
    Kind.ALERT_SENT: Severity.INFO,
    Kind.ALERT_HELD: Severity.INFO,
    Kind.ALERT_FAILED: Severity.CRITICAL,
}

# The pseudo-target of events about erpwatch itself (start, stop, alert path, host resources).
SYSTEM_TARGET = "erpwatch"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. Values are snapshots (JSON-safe), never live objects.

    ``id`` is None until the store has committed the event; the bus hands subscribers the
    committed copy, so every event a subscriber sees has an id.
    """

    target: str
    kind: str
    message: str
    severity: Severity = Severity.INFO
    details: Mapping[str, Any] = field(default_factory=dict)
    ts: datetime = field(default_factory=utcnow)
    id: int | None = None

    @classmethod
    def of(cls, target: str, kind: Kind | str, message: str, **details: Any) -> Event:
        """An event with the kind's default severity; ``None`` details are left out."""
        return cls(
            target=target,
            kind=str(kind),
            message=message,
            severity=DEFAULT_SEVERITY.get(kind, Severity.INFO),
            details={key: value for key, value in details.items() if value is not None},
        )

    def with_id(self, event_id: int) -> Event:
        return dataclasses.replace(self, id=event_id)

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape (history --json, /api/history, SSE)."""
        return {
            "id": self.id,
            "ts": self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "target": self.target,
            "kind": self.kind,
            "severity": str(self.severity),
            "message": self.message,
            "details": dict(self.details),
        }

    def details_json(self) -> str:
        return json.dumps(dict(self.details), sort_keys=True, default=str)
