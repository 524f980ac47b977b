"""The states a target can be in, as shown on the page, in ``/status`` and in events.

The decisions that move a target between them live in `watchdog.core`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class TargetState(StrEnum):
    STARTING = "starting"  # spawned, not yet answering its health check
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # answers, but slowly or says it is partly working
    UNHEALTHY = "unhealthy"  # probe failing; restarted once that lasts TIMEOUT_THRESHOLD
    RESTARTING = "restarting"  # stopped or crashed, waiting out the backoff before a start
    FAILED = "failed"  # restart limit reached: no automatic restart until the slow retry
    STOPPED = "stopped"  # stopped on purpose (erpwatch shutting down)

    @property
    def colour(self) -> str:
        """green / yellow / red; grey for stopped on purpose (nothing is on fire), as on the
        page, its favicon and ``erpwatch status``."""
        if self is TargetState.HEALTHY:
            return "green"
        if self in (TargetState.DEGRADED, TargetState.STARTING, TargetState.RESTARTING):
            return "yellow"
        if self is TargetState.STOPPED:
            return "grey"
        return "red"

    @property
    def running(self) -> bool:
        """States in which a child process is supposed to be alive."""
        return self in _LIVE


_LIVE = frozenset(
    {TargetState.STARTING, TargetState.HEALTHY, TargetState.DEGRADED, TargetState.UNHEALTHY}
)


# The page's name of each state; `/status`, the page and `erpwatch status` all use it.
STATE_LABELS: Mapping[str, str] = {
    TargetState.STARTING: "Starting",
    TargetState.HEALTHY: "Healthy",
    TargetState.DEGRADED: "Degraded",
    TargetState.UNHEALTHY: "Unhealthy",
    TargetState.RESTARTING: "Restarting",
    TargetState.FAILED: "Down: restart limit reached",
    TargetState.STOPPED: "Stopped",
}
