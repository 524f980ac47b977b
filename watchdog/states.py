"""Target states and the one pure function every state change goes through.

``transition(state, signal)`` maps what was observed to the new state and the effects the
monitor must carry out. No I/O, no clock reads: the monitor measures durations and asks the
restart policy, then passes the facts in the signal.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        if self is TargetState.HEALTHY:
            return "green"
        if self in (TargetState.DEGRADED, TargetState.STARTING, TargetState.RESTARTING):
            return "yellow"
        return "red"

    @property
    def running(self) -> bool:
        """States in which a child process is supposed to be alive."""
        return self in _LIVE


_LIVE = frozenset(
    {TargetState.STARTING, TargetState.HEALTHY, TargetState.DEGRADED, TargetState.UNHEALTHY}
)


# --- signals: what the monitor observed ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawned:
    restart: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProbeOk:
    pass


@dataclass(frozen=True, slots=True)
class ProbeDegraded:
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeFailed:
    """``in_grace``: still inside the start-up grace. ``overdue``: unhealthy for at least
    TIMEOUT_THRESHOLD; then ``restart_delay`` is the policy's answer (None = limit reached)."""

    reason: str
    in_grace: bool = False
    overdue: bool = False
    restart_delay: float | None = None


@dataclass(frozen=True, slots=True)
class Exited:
    """The child ended (or could not be started); ``restart_delay`` None = limit reached."""

    description: str
    restart_delay: float | None


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    """The command could not be started at all (e.g. its executable vanished)."""

    description: str
    restart_delay: float | None


@dataclass(frozen=True, slots=True)
class RestartRequested:
    """Something outside the health check wants a restart (e.g. the memory cap)."""

    reason: str
    restart_delay: float | None


@dataclass(frozen=True, slots=True)
class StopRequested:
    pass


Signal = (
    Spawned
    | SpawnFailed
    | RestartRequested
    | ProbeOk
    | ProbeDegraded
    | ProbeFailed
    | Exited
    | StopRequested
)


# --- effects: what the monitor must do ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Restart:
    """Stop the child if it still runs, wait ``delay`` seconds, start it again."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    reason: str


Effect = Emit | Restart | Stop


def transition(state: TargetState, signal: Signal) -> tuple[TargetState, tuple[Effect, ...]]:
    """The single place where a target changes state."""
    S = TargetState
    match signal:
        case Spawned(restart=restart, reason=reason):
            if restart:
                return S.STARTING, (Emit("restarted", f"restarted ({reason})"),)
            return S.STARTING, (Emit("started", "started"),)

        case StopRequested():
            if state is S.STOPPED:
                return state, ()
            return S.STOPPED, (Stop("erpwatch is stopping"), Emit("stopped", "stopped"))

        case SpawnFailed(description=description, restart_delay=delay):
            if state is S.STOPPED:
                return state, ()
            failed = Emit("crashed", f"could not start: {description}")
            if delay is None:
                limit = Emit("restart-limit-reached", _limit_message(description))
                return S.FAILED, (failed, limit)
            return S.RESTARTING, (failed, Restart(delay, f"could not start: {description}"))

        case _ if not state.running:
            # A probe or exit that raced a restart, a stop or the limit: nothing changes.
            return state, ()

        case ProbeOk():
            if state is S.HEALTHY:
                return state, ()
            return S.HEALTHY, (Emit("healthy", "healthy"),)

        case ProbeDegraded(reason=reason):
            if state is S.DEGRADED:
                return state, ()
            return S.DEGRADED, (Emit("degraded", f"degraded: {reason}"),)

        case ProbeFailed(reason=reason, in_grace=True) if state is S.STARTING:
            return state, ()

        case ProbeFailed(reason=reason, overdue=overdue, restart_delay=delay):
            effects: list[Effect] = []
            if state is not S.UNHEALTHY:
                effects.append(Emit("unhealthy", f"unhealthy: {reason}"))
            if not overdue:
                return S.UNHEALTHY, tuple(effects)
            why = f"unhealthy too long: {reason}"
            if delay is None:
                effects += [Emit("restart-limit-reached", _limit_message(why)), Stop(why)]
                return S.FAILED, tuple(effects)
            return S.RESTARTING, (*effects, Restart(delay, why))

        case RestartRequested(reason=reason, restart_delay=delay):
            if delay is None:
                limit = Emit("restart-limit-reached", _limit_message(reason))
                return S.FAILED, (limit, Stop(reason))
            return S.RESTARTING, (Restart(delay, reason),)

        case Exited(description=description, restart_delay=delay):
            crashed = Emit("crashed", f"exited unexpectedly: {description}")
            if delay is None:
                limit = Emit("restart-limit-reached", _limit_message(f"crashed: {description}"))
                return S.FAILED, (crashed, limit)
            return S.RESTARTING, (crashed, Restart(delay, f"crashed: {description}"))

    raise AssertionError(f"unhandled signal {signal!r}")  # pragma: no cover


def _limit_message(why: str) -> str:
    return f"restart limit reached, not restarting any more (last: {why})"
