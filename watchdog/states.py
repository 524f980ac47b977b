"""Target states and the one pure transition function every change goes through.

No I/O, no clock reads: ``transition(state, signal, now)`` gets the time it needs.
"""

from __future__ import annotations

from enum import StrEnum


class TargetState(StrEnum):
    STARTING = "starting"  # spawned, inside the start-up grace, not yet healthy
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # answers, but slowly or says it is partly working
    UNHEALTHY = "unhealthy"  # probe failing; restarted once it lasts TIMEOUT_THRESHOLD
    RESTARTING = "restarting"  # stopped or crashed, waiting out the backoff before a start
    FAILED = "failed"  # restart limit reached: no automatic restart (but a slow retry)
    STOPPED = "stopped"  # stopped on purpose (erpwatch shutting down)

    @property
    def colour(self) -> str:
        if self in (TargetState.HEALTHY,):
            return "green"
        if self in (TargetState.DEGRADED, TargetState.STARTING, TargetState.RESTARTING):
            return "yellow"
        return "red"
