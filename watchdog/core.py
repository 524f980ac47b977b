"""The pure per-target supervision core: state + observation + now → new state + effects.

Every decision about one target lives here: the start-up grace, the trouble counters, a hang
counted from the moment its probe was sent, the restart policy (window, backoff, limit, slow
retry), crash loops, "down", the memory cap and erpwatch's own shutdown. No I/O and no clock
reads: `TargetMonitor` (the shell) observes the world, feeds `Core.decide` and carries out
the effects it returns (spawn, stop with a grace, probe, emit an event). Tests drive it with
plain numbers.

    core = Core(Params.from_config(config))
    state, effects = core.start(now)
    state, effects = core.decide(state, Exited(pid, "exit code 3"), now)
    core.next_due(state)  # when the shell must call `decide(state, Tick(), ...)` next

An observation is handled, then the timers are checked in the same call, so a stop that
completes with a zero backoff yields the `Spawn` at once.

Why it is not healthy: `State.cause` (see `cause`) is set wherever trouble is decided (a
crash, a failing probe or health check, the memory cap, the restart limit, an operator's
stop) and cleared once it answers healthy. Events carry the same facts: ``crashed`` a one-line
``cause`` (the last stderr line), ``degraded``/``unhealthy`` the body's ``checks`` with the
failing ones named in the message, ``restart-limit-reached``/``down``/``crash-loop`` the
``next_retry_in_s`` of a scheduled automatic start (`Core.next_retry`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from watchdog.events import Kind
from watchdog.settings import TargetConfig
from watchdog.states import TargetState

S = TargetState

# While a target starts, probe this often (bounded by CHECK_INTERVAL) so a fresh start is seen
# healthy quickly; once it has answered, the normal interval applies.
STARTUP_PROBE_INTERVAL = 0.1
# A target without a health URL counts as healthy once it has stayed up this long (bounded by
# CHECK_INTERVAL), like supervisord's startsecs: a command that exits at once is no "healthy".
LIVENESS_SETTLE = 1.0
# Backoff doubles per successive restart; the exponent stops growing here (2**60 s is already
# far past any cap), so a target that stays down for 10**6 restarts never overflows.
_MAX_EXPONENT = 60
# A stop that raised (e.g. EPERM, EMFILE) is tried again this often.
STOP_RETRY = 1.0
CAUSE_LINE_MAX = 200  # characters of the stderr line a crash's cause quotes
SUMMARY_MAX = 500  # characters of a cause's summary
SUMMARY_CHECKS = 5  # failing checks named in a message or summary; the rest are counted
# A health check in one of these states is not failing (the same set as watchdog.probe).
OK_CHECK_STATUSES = frozenset({"ok", "pass", "passed", "up", "healthy"})


@dataclass(frozen=True, slots=True)
class Params:
    """The settings one target's core needs (seconds, counts)."""

    check_interval: float = 15.0
    timeout_threshold: float = 45.0
    startup_grace: float = 30.0
    max_restarts: int = 5
    restart_window: float = 600.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    healthy_reset: float = 300.0
    limit_retry: float = 900.0
    down_after: float = 60.0
    stop_timeout: float = 10.0
    hang_stop_timeout: float = 3.0
    crash_loop_count: int = 3
    has_probe: bool = True
    rss_limit_mb: float | None = None
    restart_on_rss: bool = False

    @classmethod
    def from_config(cls, config: TargetConfig, *, crash_loop_count: int = 3) -> Params:
        return cls(
            check_interval=config.check_interval,
            timeout_threshold=config.timeout_threshold,
            startup_grace=config.startup_grace,
            max_restarts=config.max_restarts,
            restart_window=config.restart_window,
            restart_backoff=config.restart_backoff,
            restart_backoff_max=config.restart_backoff_max,
            healthy_reset=config.healthy_reset,
            limit_retry=config.limit_retry,
            down_after=config.down_after,
            stop_timeout=config.stop_timeout,
            hang_stop_timeout=config.hang_stop_timeout,
            crash_loop_count=crash_loop_count,
            has_probe=config.health_url is not None,
            rss_limit_mb=config.rss_limit_mb,
            restart_on_rss=config.restart_on_rss,
        )


# --- observations: what the shell saw ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the shell's timer fired, or it just wants the timers checked)."""


@dataclass(frozen=True, slots=True)
class Spawned:
    pid: int
    jitter: float = 0.0  # in [0, 1): this start's share of CHECK_INTERVAL as probe phase


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    error: str  # e.g. "cannot start backend: 'uvicorn': No such file" or "EMFILE ..."


@dataclass(frozen=True, slots=True)
class Exited:
    pid: int
    description: str  # "exit code 3" / "killed by SIGKILL"
    details: Mapping[str, Any] = field(default_factory=dict)  # exit_code, signal, stderr_tail


@dataclass(frozen=True, slots=True)
class Probed:
    """A health check of process ``pid`` finished. ``status``: "ok" | "degraded" | "failed".

    ``gone``: it failed because the process had died (its exit is reported separately).
    ``local``: it could not be made for want of erpwatch's own resources (EMFILE, ENOMEM):
    no verdict on the target, which is never restarted for erpwatch's own trouble."""

    pid: int
    status: str
    reason: str
    timed_out: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)  # latency_ms, status_code
    gone: bool = False
    # The body's check results: {"name", "status", "error", "latency_ms"} each (bounded).
    checks: tuple[Mapping[str, Any], ...] = ()
    local: bool = False


@dataclass(frozen=True, slots=True)
class Stopped:
    """A `Stop` finished: ``error`` when it raised; ``escalated`` when SIGKILL was needed."""

    escalated: bool = False
    after: float = 0.0  # seconds from SIGTERM to the tree being gone
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceSample:
    pids: tuple[int, ...]
    rss_mb: float


@dataclass(frozen=True, slots=True)
class RestartRequest:
    """Restart now; ``counted`` restarts count against MAX_RESTARTS and back off.

    An operator's restart (``counted=False``) is never limited, never backs off, and also
    starts a target that is held or past its restart limit."""

    reason: str
    counted: bool = True
    actor: str = "erpwatch"


@dataclass(frozen=True, slots=True)
class Hold:
    """An operator stops the target: keep it stopped (no restart, no alert, not "down")
    until `Release`. ``since`` is a wall-clock text for people (status, page)."""

    actor: str
    reason: str = ""
    since: str = ""


@dataclass(frozen=True, slots=True)
class Release:
    """An operator starts the target: ends a hold, or a stop after the restart limit."""

    actor: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """erpwatch is stopping: stop the child and stay stopped."""

    reason: str = "erpwatch is stopping"


Observation = (
    Tick
    | Spawned
    | SpawnFailed
    | Exited
    | Probed
    | Stopped
    | ResourceSample
    | RestartRequest
    | Hold
    | Release
    | Shutdown
)


# --- effects: what the shell must do -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    restart: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the whole tree: SIGTERM, ``grace`` seconds, SIGKILL; cancel a probe in flight.
    The shell reports the outcome with `Stopped`."""

    grace: float
    reason: str


@dataclass(frozen=True, slots=True)
class Probe:
    """Send one health check of the current process; report it with `Probed`."""


@dataclass(frozen=True, slots=True)
class Emit:
    kind: Kind
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


Effect = Spawn | Stop | Probe | Emit


# --- the state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class State:
    phase: TargetState = S.STARTING
    pid: int | None = None  # the current child, while it is believed alive
    spawned_at: float | None = None
    spawning: bool = False  # a Spawn is being carried out
    stopping: bool = False  # a Stop is being carried out
    stop_retry_at: float | None = None  # a Stop failed: try it again then
    stop_failed_reported: bool = False
    answered: bool = False  # the current process has answered a probe
    jitter: float = 0.0
    probe_sent_at: float | None = None  # a probe is in flight since then
    next_probe_at: float = 0.0
    unhealthy_since: float | None = None  # first failed (or unanswered) probe in a row
    last_failure_timed_out: bool = False
    last_failure: str = ""  # the reason of the last failed (or unanswered) probe
    healthy_since: float | None = None
    bad_since: float | None = None  # the trouble (crash, unhealthy, limit) began then
    down_reported: bool = False
    crashes: tuple[float, ...] = ()  # recent crash times, for the crash loop
    crash_loop_reported: bool = False
    restarts: tuple[float, ...] = ()  # counted restarts within the window
    successive: int = 0  # successive restarts without a healthy stretch (the backoff)
    restarts_total: int = 0
    restart_at: float | None = None  # a spawn is scheduled then
    restart_reason: str = ""
    restart_counted: bool = True
    restart_delay: float = 0.0  # the backoff the scheduled restart waits (for its event)
    retry_at: float | None = None  # slow retry after the restart limit
    last_stop: Mapping[str, Any] | None = None  # how the last stop went, for the next event
    held: Mapping[str, str] | None = None  # an operator's stop: actor, reason, since
    start_by: str = ""  # the next spawn is an operator's start (its actor)
    shutting_down: bool = False
    cause: Mapping[str, Any] | None = None  # why it is not healthy now (see `cause`)

    @property
    def settled(self) -> bool:
        """Shut down and nothing left to do (the shell's loop may end)."""
        return self.shutting_down and not self.stopping and not self.spawning


class Core:
    """The decisions for one target with fixed `Params`. Pure: every method returns values."""

    def __init__(self, params: Params) -> None:
        self.params = params

    # --- entry points --------------------------------------------------------------

    def start(
        self, now: float, held: Mapping[str, str] | None = None
    ) -> tuple[State, list[Effect]]:
        """The first start of the target, or, when an operator's hold survived an erpwatch
        restart, no start at all: it stays stopped until released."""
        if held:
            by = held.get("actor", "operator")
            why = f"stopped by {by}" + (f": {held['reason']}" if held.get("reason") else "")
            state = State(
                phase=S.STOPPED, held=dict(held), next_probe_at=now, cause=cause("operator", why)
            )
            message = f"held stopped by {by} since {held.get('since', '?')}; not started"
            return state, [Emit(Kind.STOPPED, message, {"held": dict(held)})]
        state = State(phase=S.STARTING, spawning=True, next_probe_at=now)
        return state, [Spawn(restart=False)]

    def decide(self, state: State, obs: Observation, now: float) -> tuple[State, list[Effect]]:
        """The one place where a target changes: handle ``obs``, then check the timers."""
        effects: list[Effect] = []
        state = self._handle(state, obs, now, effects)
        state = self._timers(state, now, effects)
        return state, effects

    def next_due(self, state: State) -> float | None:
        """The earliest moment the timers need a `Tick` (None: nothing scheduled)."""
        p = self.params
        due: list[float] = []
        idle = not state.stopping and not state.spawning
        if state.restart_at is not None and idle and state.pid is None:
            due.append(state.restart_at)
        if state.retry_at is not None and idle and state.phase is S.FAILED:
            due.append(state.retry_at)
        if state.stop_retry_at is not None and state.stopping:
            due.append(state.stop_retry_at)
        if self._live(state):
            if p.has_probe and state.probe_sent_at is None:
                due.append(state.next_probe_at)
            since = self._unhealthy_since(state)
            if since is not None:
                due.append(since + p.timeout_threshold)
            if not p.has_probe and not state.answered and state.spawned_at is not None:
                due.append(state.spawned_at + self._settle())
        if state.bad_since is not None and not state.down_reported and state.phase is not S.STOPPED:
            due.append(state.bad_since + p.down_after)
        return min(due) if due else None

    def probe_cancelled(self, state: State, now: float) -> State:
        """The probe in flight was cancelled (a reload replaced the prober): no answer will
        come for it, so it must not count as one never answered (a hang); the next probe
        goes out at once."""
        if state.probe_sent_at is None:
            return state
        return dataclasses.replace(state, probe_sent_at=None, next_probe_at=now)

    def restarts_in_window(self, state: State, now: float) -> int:
        cutoff = now - self.params.restart_window
        return sum(1 for at in state.restarts if at > cutoff)

    def next_retry(self, state: State) -> float | None:
        """When an automatic start is scheduled: the backoff's restart, or the slow retry
        after the restart limit (None: none is, e.g. running, held or shutting down)."""
        if state.shutting_down or state.held:
            return None
        if state.phase is S.FAILED:
            return state.retry_at
        if state.phase is S.RESTARTING:
            return state.restart_at
        return None

    def _retry_details(self, state: State, now: float) -> dict[str, Any]:
        at = self.next_retry(state)
        return {} if at is None else {"next_retry_in_s": round(max(at - now, 0.0), 3)}

    # --- observations --------------------------------------------------------------

    def _handle(self, state: State, obs: Observation, now: float, out: list[Effect]) -> State:
        match obs:
            case Tick():
                return state
            case Spawned():
                return self._spawned(state, obs, now, out)
            case SpawnFailed(error=error):
                state = dataclasses.replace(state, spawning=False)
                if state.phase is S.STOPPED:
                    out.append(Emit(Kind.STOPPED, "stopped"))
                    return state
                why = f"could not start: {error}"
                state = dataclasses.replace(state, cause=cause("crash", why))
                out.append(Emit(Kind.CRASHED, why, {"error": error, "cause": why[:SUMMARY_MAX]}))
                return self._crashed(state, why, now, out)
            case Exited():
                return self._exited(state, obs, now, out)
            case Probed():
                return self._probed(state, obs, now, out)
            case Stopped():
                return self._stopped(state, obs, now, out)
            case ResourceSample(pids=pids, rss_mb=rss):
                limit = self.params.rss_limit_mb
                if (
                    not self.params.restart_on_rss
                    or limit is None
                    or rss <= limit
                    or state.pid not in pids
                    or not self._live(state)
                ):
                    return state
                why = f"memory (RSS) {rss:.0f} MB over the {limit:g} MB limit"
                state = dataclasses.replace(state, cause=cause("resource", why))
                return self._restart(state, why, now, out, grace=self.params.stop_timeout)
            case RestartRequest(reason=reason, counted=counted, actor=actor):
                if state.shutting_down:
                    return state
                if not counted and (state.held or state.phase is S.FAILED):
                    return self._release(state, actor, now, out)
                if state.phase is S.STOPPED:
                    return state
                if not counted:
                    reason = f"by {actor}: {reason}" if reason else f"by {actor}"
                    state = dataclasses.replace(
                        state, cause=cause("operator", f"restart requested {reason}")
                    )
                return self._restart(
                    state, reason, now, out, grace=self.params.stop_timeout, counted=counted
                )
            case Hold():
                return self._hold(state, obs, out)
            case Release(actor=actor):
                if state.shutting_down:
                    return state
                return self._release(state, actor, now, out)
            case Shutdown(reason=reason):
                return self._shutdown(state, reason, out)
        raise AssertionError(f"unhandled observation {obs!r}")  # pragma: no cover

    def _spawned(self, state: State, obs: Spawned, now: float, out: list[Effect]) -> State:
        reason, last_stop, start_by = state.restart_reason, state.last_stop, state.start_by
        backoff = state.restart_delay
        restart = reason != "" and not start_by
        state = dataclasses.replace(
            state,
            phase=S.STARTING if state.phase is not S.STOPPED else S.STOPPED,
            pid=obs.pid,
            spawned_at=now,
            spawning=False,
            answered=False,
            jitter=obs.jitter,
            probe_sent_at=None,
            next_probe_at=now,
            unhealthy_since=None,
            restart_reason="",
            restart_delay=0.0,
            start_by="",
            last_stop=None,
        )
        if state.phase is S.STOPPED:
            # A stop (erpwatch's or an operator's) came while this spawn was under way.
            return self._begin_stop(state, self.params.stop_timeout, "stopping", out)
        details: dict[str, Any] = {"pid": obs.pid}
        if last_stop:
            details["previous_stop"] = dict(last_stop)
        if restart:
            details["backoff_s"] = backoff
            if reason.startswith("by "):
                details["actor"] = reason[3:].split(":", 1)[0]
            if state.cause is not None:
                details["cause_kind"] = state.cause["kind"]
            out.append(Emit(Kind.RESTARTED, f"restarted ({reason})", details))
        elif start_by:
            details["actor"] = start_by
            out.append(Emit(Kind.STARTED, f"started by {start_by}", details))
        else:
            out.append(Emit(Kind.STARTED, "started", details))
        return state

    def _exited(self, state: State, obs: Exited, now: float, out: list[Effect]) -> State:
        if obs.pid != state.pid:
            return state  # an earlier child (already handled) or a stranger
        state = dataclasses.replace(state, pid=None, probe_sent_at=None)
        if state.stopping or not state.phase.running:
            return state  # we stopped it (restart, limit, shutdown): `Stopped` reports that
        line = last_line(obs.details.get("stderr_tail"))
        summary = f"{obs.description}: {line}" if line else obs.description
        details = obs.details
        state = dataclasses.replace(
            state,
            cause=cause(
                "crash",
                summary,
                exit_code=details.get("exit_code"),
                signal=details.get("signal"),
                stderr_line=line,
            ),
        )
        out.append(
            Emit(
                Kind.CRASHED,
                f"exited unexpectedly: {obs.description}",
                {"pid": obs.pid, **details, "cause": summary},
            )
        )
        return self._crashed(state, f"crashed: {obs.description}", now, out)

    def _crashed(self, state: State, why: str, now: float, out: list[Effect]) -> State:
        p = self.params
        cutoff = now - p.restart_window
        crashes = (*(at for at in state.crashes if at > cutoff), now)[-p.crash_loop_count :]
        state = dataclasses.replace(
            state,
            crashes=crashes,
            bad_since=state.bad_since if state.bad_since is not None else now,
            healthy_since=None,
            unhealthy_since=None,
        )
        state = self._restart(state, why, now, out, grace=p.stop_timeout)
        if len(crashes) >= p.crash_loop_count and not state.crash_loop_reported:
            state = dataclasses.replace(state, crash_loop_reported=True)
            out.append(
                Emit(
                    Kind.CRASH_LOOP,
                    f"crash loop: {len(crashes)} crashes within {p.restart_window:g}s",
                    {
                        "crashes": len(crashes),
                        "window_s": p.restart_window,
                        **self._retry_details(state, now),
                    },
                )
            )
        return state

    def _probed(self, state: State, obs: Probed, now: float, out: list[Effect]) -> State:
        if obs.pid != state.pid or not self._live(state):
            return state  # a probe of an earlier process, or one that raced a stop
        sent_at = self._last_sent(state, now)
        state = dataclasses.replace(state, probe_sent_at=None)
        if obs.local:
            return state  # erpwatch's own trouble (EMFILE): no verdict, it reports itself
        if obs.status == "ok":
            state = self._answered(state, now, healthy=True)
            if state.phase is not S.HEALTHY:
                state = dataclasses.replace(state, phase=S.HEALTHY)
                out.append(Emit(Kind.HEALTHY, "healthy", obs.details))
            return state
        failing = failing_checks(obs.checks)
        checks_details = {"checks": [dict(c) for c in obs.checks]} if obs.checks else {}
        if obs.status == "degraded":
            summary = checks_summary(failing) if failing else obs.reason
            state = self._answered(state, now, healthy=False)
            kind = "checks" if failing else "probe"
            state = dataclasses.replace(state, cause=cause(kind, summary, checks=failing))
            if state.phase is not S.DEGRADED:
                state = dataclasses.replace(state, phase=S.DEGRADED)
                details = {**obs.details, **checks_details}
                out.append(Emit(Kind.DEGRADED, f"degraded: {summary}", details))
            return state
        if obs.gone:
            return state  # it died under the probe: the exit reports that, not "unhealthy"
        assert state.spawned_at is not None
        # The start-up grace forgives a backend that is not listening yet or answers with an
        # error while it warms up, never one that takes the request and hangs: no blind spot.
        booting = not state.answered and not obs.timed_out
        if booting and now - state.spawned_at < self.params.startup_grace:
            return state
        since = state.unhealthy_since
        if since is None:
            since = state.spawned_at if booting else sent_at
        summary = obs.reason + (f"; {checks_summary(failing)}" if failing else "")
        state = dataclasses.replace(
            state,
            unhealthy_since=since,
            last_failure_timed_out=obs.timed_out,
            last_failure=obs.reason,
            healthy_since=None,
            bad_since=state.bad_since if state.bad_since is not None else since,
            cause=cause("checks" if failing else "probe", summary, checks=failing),
        )
        details = {**obs.details, **checks_details, "unhealthy_for_s": round(now - since, 3)}
        if state.phase is not S.UNHEALTHY:
            state = dataclasses.replace(state, phase=S.UNHEALTHY)
            out.append(Emit(Kind.UNHEALTHY, f"unhealthy: {summary}", details))
        return self._check_overdue(state, obs.reason, now, out)

    def _stopped(self, state: State, obs: Stopped, now: float, out: list[Effect]) -> State:
        if not state.stopping:
            return state
        if obs.error is not None:
            state = dataclasses.replace(state, stop_retry_at=now + STOP_RETRY)
            if not state.stop_failed_reported:
                state = dataclasses.replace(state, stop_failed_reported=True)
                out.append(
                    Emit(
                        Kind.STOP_FAILED,
                        f"could not stop: {obs.error}; trying again",
                        {"error": obs.error},
                    )
                )
            return state
        how: dict[str, Any] = {
            "signal": "SIGKILL" if obs.escalated else "SIGTERM",
            "after_s": round(obs.after, 3),
        }
        if obs.escalated:
            how["escalation"] = f"SIGTERM ignored, SIGKILL after {obs.after:.1f}s"
        state = dataclasses.replace(
            state,
            stopping=False,
            stop_retry_at=None,
            stop_failed_reported=False,
            pid=None,
            probe_sent_at=None,
            last_stop=how,
        )
        if state.phase is S.STOPPED:
            message = "stopped"
            details: dict[str, Any] = {"stop": how}
            if state.held and not state.shutting_down:
                message += _held_text(state.held)
                details["held"] = dict(state.held)
            if obs.escalated:
                message += f" (SIGTERM ignored, SIGKILL after {obs.after:.1f}s)"
            out.append(Emit(Kind.STOPPED, message, details))
        return state

    def _hold(self, state: State, obs: Hold, out: list[Effect]) -> State:
        if state.shutting_down or state.held:
            return state  # held already: the first hold's who/why/since stay
        held = {"actor": obs.actor, "reason": obs.reason, "since": obs.since}
        why = f"stopped by {obs.actor}" + (f": {obs.reason}" if obs.reason else "")
        state, idle = self._stop_for_good(
            state,
            why,
            out,
            held=held,
            cause=cause("operator", why),
            unhealthy_since=None,
            bad_since=None,
            down_reported=False,
            start_by="",
        )
        if idle:
            out.append(Emit(Kind.STOPPED, "stopped" + _held_text(held), {"held": held}))
        return state

    def _stop_for_good(
        self, state: State, why: str, out: list[Effect], **changes: Any
    ) -> tuple[State, bool]:
        """Stopped on purpose (an operator's hold, erpwatch's shutdown): nothing scheduled,
        the child stopped if one runs. True when nothing runs any more, so the caller records
        ``stopped`` now; otherwise `Stopped` (or `Spawned`, then `Stopped`) does."""
        state = dataclasses.replace(
            state, phase=S.STOPPED, restart_at=None, retry_at=None, probe_sent_at=None, **changes
        )
        if state.stopping or state.spawning:
            return state, False
        if state.pid is not None:
            return self._begin_stop(state, self.params.stop_timeout, why, out), False
        return state, True

    def _release(self, state: State, actor: str, now: float, out: list[Effect]) -> State:
        """Start a held (or given-up) target now, with a fresh restart window."""
        if state.phase.running or state.spawning or state.stopping:
            return state  # already running (or about to): nothing to do
        if state.phase is S.RESTARTING:
            return dataclasses.replace(state, restart_at=now, start_by=actor)
        state = dataclasses.replace(
            state,
            phase=S.RESTARTING,
            held=None,
            restarts=(),
            successive=0,
            retry_at=None,
            restart_at=now,
            restart_reason=f"started by {actor}",
            restart_counted=False,
            start_by=actor,
            bad_since=None,
            down_reported=False,
            cause=None,
        )
        return state

    def _shutdown(self, state: State, reason: str, out: list[Effect]) -> State:
        if state.shutting_down:
            return state
        was_stopped = state.phase is S.STOPPED and state.pid is None  # held: recorded then
        changes: dict[str, Any] = {"shutting_down": True}
        if not state.held:
            changes["cause"] = cause("operator", reason)
        state, idle = self._stop_for_good(state, reason, out, **changes)
        if idle and not was_stopped:
            out.append(Emit(Kind.STOPPED, "stopped"))
        return state

    # --- timers ----------------------------------------------------------------------

    def _timers(self, state: State, now: float, out: list[Effect]) -> State:
        p = self.params
        if state.stop_retry_at is not None and now >= state.stop_retry_at and state.stopping:
            state = dataclasses.replace(state, stop_retry_at=None)
            out.append(Stop(p.stop_timeout, "retrying a failed stop"))
            return state
        if state.stopping or state.spawning:
            return state
        if state.restart_at is not None and now >= state.restart_at and state.pid is None:
            return self._spawn(state, now, out)
        if state.retry_at is not None and now >= state.retry_at and state.phase is S.FAILED:
            state = dataclasses.replace(
                state,
                retry_at=None,
                restarts=(),
                successive=0,
                restart_reason="slow retry after the restart limit",
                restart_counted=True,
            )
            return self._spawn(state, now, out)
        if self._live(state):
            if not p.has_probe and not state.answered:
                assert state.spawned_at is not None
                if now - state.spawned_at >= self._settle():
                    state = self._answered(state, now, healthy=True)
                    state = dataclasses.replace(state, phase=S.HEALTHY)
                    out.append(Emit(Kind.HEALTHY, "healthy (process running)"))
            elif not p.has_probe:
                state = self._answered(state, now, healthy=True)
            if state.probe_sent_at is not None and now - state.probe_sent_at >= p.timeout_threshold:
                # No answer at all for TIMEOUT_THRESHOLD: a hang, whatever PROBE_TIMEOUT says.
                waited = now - state.probe_sent_at
                reason = f"no answer for {waited:.1f}s"
                since = state.probe_sent_at
                if state.unhealthy_since is not None:
                    since = min(since, state.unhealthy_since)
                state = dataclasses.replace(
                    state,
                    unhealthy_since=since,
                    last_failure_timed_out=True,
                    last_failure=reason,
                    healthy_since=None,
                    bad_since=state.bad_since if state.bad_since is not None else since,
                    cause=cause("probe", reason),
                )
                if state.phase is not S.UNHEALTHY:
                    state = dataclasses.replace(state, phase=S.UNHEALTHY)
                    details = {"unhealthy_for_s": round(now - since, 3)}
                    out.append(Emit(Kind.UNHEALTHY, f"unhealthy: {reason}", details))
                state = self._check_overdue(state, reason, now, out)
            elif state.unhealthy_since is not None:
                state = self._check_overdue(state, state.last_failure or "failing", now, out)
            if (
                self._live(state)
                and p.has_probe
                and state.probe_sent_at is None
                and now >= state.next_probe_at
                and state.pid is not None
            ):
                interval = p.check_interval
                if not state.answered:
                    interval = min(interval, STARTUP_PROBE_INTERVAL)
                # A fixed cadence: a round that came late (a busy loop) does not push every
                # later check back; more than an interval behind, the cadence starts anew.
                due = state.next_probe_at
                anchor = due if 0.0 <= now - due < interval else now
                state = dataclasses.replace(
                    state, probe_sent_at=now, next_probe_at=anchor + interval
                )
                out.append(Probe())
        if (
            state.bad_since is not None
            and not state.down_reported
            and state.phase is not S.STOPPED
            and now - state.bad_since >= p.down_after
        ):
            down_for = now - state.bad_since
            state = dataclasses.replace(state, down_reported=True)
            out.append(
                Emit(
                    Kind.DOWN,
                    f"down for {down_for:.0f}s ({state.phase})",
                    {"down_for_s": round(down_for, 3), **self._retry_details(state, now)},
                )
            )
        return state

    # --- building blocks ---------------------------------------------------------------

    def _check_overdue(self, state: State, reason: str, now: float, out: list[Effect]) -> State:
        since = state.unhealthy_since
        if since is None or now - since < self.params.timeout_threshold:
            return state
        why = f"unhealthy too long: {reason}"
        p = self.params
        # A hung server (a blocked event loop) never acts on SIGTERM: do not wait long for it.
        hung = state.last_failure_timed_out
        grace = min(p.hang_stop_timeout, p.stop_timeout) if hung else p.stop_timeout
        return self._restart(state, why, now, out, grace=grace)

    def _restart(
        self,
        state: State,
        why: str,
        now: float,
        out: list[Effect],
        *,
        grace: float,
        counted: bool = True,
    ) -> State:
        """Stop the child if it runs, then start it after the backoff, or give up."""
        p = self.params
        cutoff = now - p.restart_window
        restarts = tuple(at for at in state.restarts if at > cutoff)
        state = dataclasses.replace(state, restarts=restarts, probe_sent_at=None)
        if counted and len(restarts) >= p.max_restarts:
            state = dataclasses.replace(
                state,
                phase=S.FAILED,
                restart_at=None,
                bad_since=state.bad_since if state.bad_since is not None else now,
                retry_at=now + p.limit_retry if p.limit_retry > 0 else None,
            )
            details: dict[str, Any] = {"restarts": len(restarts), "window_s": p.restart_window}
            if state.retry_at is not None:
                details["retry_in_s"] = p.limit_retry
                details.update(self._retry_details(state, now))
            # Keep what the last trouble said (exit code, stderr line, checks).
            last = dict(state.cause) if state.cause is not None else cause("limit", why)
            if state.cause is None or last["kind"] != "limit":  # never "...; last: reached"
                summary = f"restart limit reached; last: {last['summary']}"
                last.update(kind="limit", summary=summary[:SUMMARY_MAX])
            state = dataclasses.replace(state, cause=last)
            out.append(
                Emit(
                    Kind.RESTART_LIMIT_REACHED,
                    f"restart limit reached, not restarting any more (last: {why})",
                    details,
                )
            )
        else:
            delay = self.backoff(state.successive) if counted else 0.0
            state = dataclasses.replace(
                state,
                phase=S.RESTARTING,
                retry_at=None,
                restart_at=now + delay,
                restart_delay=delay,
                restart_reason=why,
                restart_counted=counted,
            )
        if state.pid is not None and not state.stopping:
            state = self._begin_stop(state, grace, why, out)
        return state

    def backoff(self, successive: int) -> float:
        """0 for the first restart after a healthy stretch, then doubling up to the cap."""
        p = self.params
        if successive <= 0 or p.restart_backoff <= 0:
            return 0.0
        exponent = min(successive - 1, _MAX_EXPONENT)
        return float(min(p.restart_backoff * 2.0**exponent, p.restart_backoff_max))

    def _spawn(self, state: State, now: float, out: list[Effect]) -> State:
        counted = state.restart_counted
        state = dataclasses.replace(
            state,
            restart_at=None,
            spawning=True,
            restarts=(*state.restarts, now) if counted else state.restarts,
            successive=state.successive + 1 if counted else state.successive,
            restarts_total=state.restarts_total + 1,
            restart_counted=True,
        )
        out.append(Spawn(restart=True, reason=state.restart_reason))
        return state

    def _begin_stop(self, state: State, grace: float, why: str, out: list[Effect]) -> State:
        out.append(Stop(grace, why))
        return dataclasses.replace(state, stopping=True, probe_sent_at=None)

    def _answered(self, state: State, now: float, *, healthy: bool) -> State:
        """It answers (or, without a probe, runs): the trouble is over."""
        p = self.params
        healthy_since = state.healthy_since
        successive, crashes, loop_reported = (
            state.successive,
            state.crashes,
            state.crash_loop_reported,
        )
        if healthy:
            healthy_since = healthy_since if healthy_since is not None else now
            if now - healthy_since >= p.healthy_reset:
                successive, crashes, loop_reported = 0, (), False
        next_probe_at = state.next_probe_at
        if not state.answered and p.has_probe:
            # Targets started together would otherwise probe in lockstep, in bursts: once per
            # start, shift this one's schedule by its share of the interval.
            next_probe_at = now + state.jitter * p.check_interval
        return dataclasses.replace(
            state,
            answered=True,
            next_probe_at=next_probe_at,
            healthy_since=healthy_since,
            successive=successive,
            crashes=crashes,
            crash_loop_reported=loop_reported,
            unhealthy_since=None,
            last_failure_timed_out=False,
            last_failure="",
            bad_since=None,
            down_reported=False,
            cause=None if healthy else state.cause,
        )

    def _unhealthy_since(self, state: State) -> float | None:
        candidates = [t for t in (state.unhealthy_since, state.probe_sent_at) if t is not None]
        return min(candidates) if candidates else None

    def _last_sent(self, state: State, now: float) -> float:
        return now if state.probe_sent_at is None else state.probe_sent_at

    def _live(self, state: State) -> bool:
        return state.phase.running and state.pid is not None and not state.stopping

    def _settle(self) -> float:
        return min(LIVENESS_SETTLE, self.params.check_interval)


def _held_text(held: Mapping[str, str]) -> str:
    reason = held.get("reason")
    return f" by {held.get('actor', 'operator')}" + (f": {reason}" if reason else "")


def cause(
    kind: str,
    summary: str,
    *,
    exit_code: int | None = None,
    signal: str | None = None,
    stderr_line: str | None = None,
    checks: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Why a target is not healthy, as ``/status`` shows it. ``kind``: "crash" | "probe" |
    "checks" | "resource" | "operator" | "limit"."""
    return {
        "summary": summary[:SUMMARY_MAX],
        "kind": kind,
        "exit_code": exit_code,
        "signal": signal,
        "stderr_line": stderr_line,
        "checks": [dict(check) for check in checks],
    }


def last_line(tail: object) -> str | None:
    """The last non-empty line of a stderr tail, on one line, cut to `CAUSE_LINE_MAX`."""
    if not isinstance(tail, list | tuple):
        return None
    for line in reversed(tail):
        text = " ".join(str(line).split())
        if text:
            return text if len(text) <= CAUSE_LINE_MAX else text[: CAUSE_LINE_MAX - 1] + "…"
    return None


def failing_checks(checks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in checks if str(c.get("status", "")).lower() not in OK_CHECK_STATUSES]


def checks_summary(failing: Sequence[Mapping[str, Any]]) -> str:
    """``database failed (ConnectionError: could not connect)``, several joined by ", "."""
    parts = []
    for check in failing[:SUMMARY_CHECKS]:
        text = f"{check.get('name', '?')} {check.get('status') or 'failed'}"
        error = check.get("error")
        parts.append(f"{text} ({error})" if error else text)
    if len(failing) > SUMMARY_CHECKS:
        parts.append(f"and {len(failing) - SUMMARY_CHECKS} more")
    return ", ".join(parts)
