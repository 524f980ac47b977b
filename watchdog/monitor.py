"""TargetMonitor: one per supervised process.

``step()`` is one round (probe, update the counters, decide); ``run()`` only waits for the
next tick, the child's exit or a stop request. Every state change goes through
`watchdog.states.transition`, and an event is published only when something changed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from watchdog.bus import EventBus
from watchdog.clock import Clock
from watchdog.config import TargetConfig
from watchdog.events import Event, Kind
from watchdog.policy import GiveUp, RestartPolicy
from watchdog.probe import Prober, ProbeResult, ProbeStatus
from watchdog.process import ExitInfo, ManagedProcess, ProcessStartError
from watchdog.states import (
    Effect,
    Emit,
    Exited,
    ProbeDegraded,
    ProbeFailed,
    ProbeOk,
    Restart,
    RestartRequested,
    Signal,
    Spawned,
    SpawnFailed,
    Stop,
    StopRequested,
    TargetState,
    transition,
)

log = logging.getLogger(__name__)

# While a target starts, probe this often (bounded by CHECK_INTERVAL) so a fresh start is seen
# healthy quickly; once it has answered, the normal interval applies.
STARTUP_PROBE_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A snapshot of one target for the status API, `erpwatch status` and alerting."""

    name: str
    state: TargetState
    pid: int | None
    uptime: float | None
    restarts_in_window: int
    restarts_total: int
    health_url: str | None
    last_probe: ProbeResult | None
    last_event: Event | None
    resources: Mapping[str, Any] | None = None
    probe_age: float | None = None  # seconds since the last probe finished

    @property
    def colour(self) -> str:
        return self.state.colour

    def to_dict(self) -> dict[str, Any]:
        probe = self.last_probe
        return {
            "name": self.name,
            "state": str(self.state),
            "colour": self.colour,
            "pid": self.pid,
            "uptime": None if self.uptime is None else round(self.uptime, 3),
            "restarts_in_window": self.restarts_in_window,
            "restarts_total": self.restarts_total,
            "health_url": self.health_url,
            "last_probe": None
            if probe is None
            else {
                "status": str(probe.status),
                "latency_ms": round(probe.latency * 1000, 2),
                "status_code": probe.status_code,
                "reason": probe.reason,
                "age_s": None if self.probe_age is None else round(self.probe_age, 3),
            },
            "last_event": None if self.last_event is None else self.last_event.to_dict(),
            "resources": None if self.resources is None else dict(self.resources),
        }


@dataclass
class _Episode:
    """Counters of the current stretch of trouble; reset when the target is healthy again."""

    bad_since: float | None = None  # first moment it was down (crashed, unhealthy, failed)
    unhealthy_since: float | None = None  # start of the first failed probe in a row
    healthy_since: float | None = None
    down_reported: bool = False
    crash_loop_reported: bool = False
    crashes: deque[float] = field(default_factory=deque)


class TargetMonitor:
    def __init__(
        self,
        config: TargetConfig,
        bus: EventBus,
        *,
        log_dir: Path,
        clock: Clock,
        client: httpx.AsyncClient | None = None,
        crash_loop_count: int = 3,
        stderr_tail_lines: int = 20,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 5,
    ) -> None:
        self.config = config
        self.name = config.name
        self._bus = bus
        self._clock = clock
        self._crash_loop_count = crash_loop_count
        self.state = TargetState.STARTING
        self.policy = RestartPolicy(
            max_restarts=config.max_restarts,
            window=config.restart_window,
            backoff=config.restart_backoff,
            backoff_max=config.restart_backoff_max,
            healthy_reset=config.healthy_reset,
        )
        self.process = ManagedProcess(
            config.name,
            config.argv,
            log_dir=log_dir,
            cwd=config.workdir,
            stop_timeout=config.stop_timeout,
            stderr_tail_lines=stderr_tail_lines,
            log_max_bytes=log_max_bytes,
            log_backups=log_backups,
        )
        self._prober = (
            Prober(
                config.health_url,
                timeout=config.probe_timeout,
                degraded_latency=config.degraded_latency,
                client=client,
                clock=clock,
            )
            if config.health_url and client is not None
            else None
        )
        self.last_probe: ProbeResult | None = None
        self.probe_listeners: list[Callable[[str, ProbeResult], object]] = []
        self.last_event: Event | None = None
        self.healthy = asyncio.Event()  # set while HEALTHY or DEGRADED (start order waits on it)
        self.launched = asyncio.Event()  # set once the first start was tried
        self._episode = _Episode()
        self._spawned_at: float | None = None
        self._answered = False  # the current process has answered a probe at least once
        self._next_probe_at = 0.0
        self._restart_at: float | None = None
        self._restart_reason = ""
        self._retry_at: float | None = None
        self._pid: int | None = None
        self._rng = random.Random()
        self._stop_requested = asyncio.Event()
        self._wake = asyncio.Event()
        self._restart_requested: str | None = None

    # --- the loop: waiting only -----------------------------------------------------

    async def run(self) -> None:
        """Start the target and supervise it until `stop()` is called."""
        try:
            await self._spawn(restart=False)
        finally:
            self.launched.set()
        stop_wait = asyncio.ensure_future(self._stop_requested.wait())
        exit_wait: asyncio.Future[ExitInfo] | None = None
        try:
            while not self._stop_requested.is_set():
                if exit_wait is None and self.process.running:
                    exit_wait = asyncio.ensure_future(self.process.wait())
                delay = max(0.0, self._next_due() - self._clock.now())
                tick = asyncio.ensure_future(self._clock.sleep(delay))
                wake = asyncio.ensure_future(self._wake.wait())
                waiting: set[asyncio.Future[Any]] = {tick, stop_wait, wake}
                if exit_wait is not None:
                    waiting.add(exit_wait)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                tick.cancel()
                wake.cancel()
                if self._stop_requested.is_set():
                    break
                if self._restart_requested is not None:
                    reason, self._restart_requested = self._restart_requested, None
                    self._wake.clear()
                    await self._restart_now(reason)
                elif exit_wait is not None and exit_wait.done():
                    info = exit_wait.result()
                    exit_wait = None
                    await self.handle_exit(info)
                else:
                    await self.step()
        finally:
            stop_wait.cancel()
            if exit_wait is not None:
                exit_wait.cancel()
            await self._apply(StopRequested())

    def stop(self) -> None:
        """Ask `run()` to stop the child and return."""
        self._stop_requested.set()

    def request_restart(self, reason: str) -> None:
        """Ask `run()` to restart the child (counted by the restart policy)."""
        self._restart_requested = reason
        self._wake.set()

    async def _restart_now(self, reason: str) -> None:
        if not self.state.running:
            return
        decision = self.policy.decide(self._clock.now())
        delay = None if isinstance(decision, GiveUp) else decision.delay
        await self._apply(RestartRequested(reason, delay))

    # --- one round ------------------------------------------------------------------

    async def step(self) -> None:
        """Probe when a probe is due, then act on timers (restart, retry, down, resets)."""
        now = self._clock.now()
        if self.state.running and now >= self._next_probe_at:
            interval = self.config.check_interval
            answered_before = self._answered
            if not answered_before:
                interval = min(interval, STARTUP_PROBE_INTERVAL)
            self._next_probe_at = now + interval
            if self._prober is None:
                await self._observe_liveness()
            else:
                result = await self._prober.check()
                self.last_probe = result
                for listener in self.probe_listeners:
                    listener(self.name, result)
                await self._observe_probe(result)
            if self._answered and not answered_before:
                # Targets started together would otherwise probe in lockstep, in bursts:
                # once per start, shift this one's schedule by a random part of the interval.
                phase = self._rng.uniform(0.0, self.config.check_interval)
                self._next_probe_at = now + phase
        await self._on_timers()

    async def handle_exit(self, info: ExitInfo) -> None:
        """The child ended: record why, clean up what it left, and restart per policy."""
        if not self.state.running or info.pid != self._pid:
            return  # an exit we caused (restart, stop) or one from an earlier child
        now = self._clock.now()
        episode = self._episode
        episode.bad_since = episode.bad_since or now
        episode.healthy_since = None
        episode.crashes.append(now)
        while episode.crashes and episode.crashes[0] <= now - self.config.restart_window:
            episode.crashes.popleft()
        decision = self.policy.decide(now)
        delay = None if isinstance(decision, GiveUp) else decision.delay
        await self._apply(Exited(info.describe(), delay), _exit_details(info))
        if len(episode.crashes) >= self._crash_loop_count and not episode.crash_loop_reported:
            episode.crash_loop_reported = True
            await self._publish(
                Kind.CRASH_LOOP,
                f"crash loop: {len(episode.crashes)} crashes within "
                f"{self.config.restart_window:g}s",
                crashes=len(episode.crashes),
                window_s=self.config.restart_window,
            )

    # --- observations -----------------------------------------------------------------

    async def _observe_liveness(self) -> None:
        if self.process.running:
            self._answered = True
            self._mark_up(self._clock.now())
            await self._apply(ProbeOk())

    async def _observe_probe(self, result: ProbeResult) -> None:
        now = self._clock.now()
        details = {"latency_ms": round(result.latency * 1000, 2), "status_code": result.status_code}
        if result.status is ProbeStatus.OK:
            self._answered = True
            self._mark_up(now)
            await self._apply(ProbeOk(), details)
            return
        if result.status is ProbeStatus.DEGRADED:
            self._answered = True
            self._mark_up(now, healthy=False)
            await self._apply(ProbeDegraded(result.reason), details)
            return
        if self._pid is not None and _has_exited(self._pid):
            return  # it died under the probe: the exit handler reports that, not "unhealthy"
        episode = self._episode
        episode.healthy_since = None
        spawned_at = self._spawned_at if self._spawned_at is not None else now
        # The start-up grace forgives a backend that is not listening yet or answers with an
        # error while it warms up, never one that takes the request and hangs: no blind spot.
        booting = not self._answered and not result.timed_out
        if booting and now - spawned_at < self.config.startup_grace:
            await self._apply(ProbeFailed(result.reason, in_grace=True), details)
            return
        if episode.unhealthy_since is None:
            started = result.checked_at - result.latency
            episode.unhealthy_since = spawned_at if booting else started
        episode.bad_since = episode.bad_since or episode.unhealthy_since
        unhealthy_for = now - episode.unhealthy_since
        overdue = unhealthy_for >= self.config.timeout_threshold
        delay: float | None = None
        if overdue:
            decision = self.policy.decide(now)
            delay = None if isinstance(decision, GiveUp) else decision.delay
        details["unhealthy_for_s"] = round(unhealthy_for, 3)
        await self._apply(ProbeFailed(result.reason, overdue=overdue, restart_delay=delay), details)

    def _mark_up(self, now: float, *, healthy: bool = True) -> None:
        episode = self._episode
        if healthy:
            episode.healthy_since = episode.healthy_since or now
            healthy_for = now - episode.healthy_since
            self.policy.healthy_for(healthy_for)
            if healthy_for >= self.config.healthy_reset:
                episode.crash_loop_reported = False
                episode.crashes.clear()
        episode.unhealthy_since = None
        episode.bad_since = None
        episode.down_reported = False
        self._retry_at = None

    async def _on_timers(self) -> None:
        now = self._clock.now()
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            await self._spawn(restart=True, reason=self._restart_reason)
            return
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            await self._spawn(restart=True, reason="slow retry after the restart limit")
            return
        episode = self._episode
        if (
            episode.bad_since is not None
            and not episode.down_reported
            and now - episode.bad_since >= self.config.down_after
        ):
            episode.down_reported = True
            down_for = now - episode.bad_since
            await self._publish(
                Kind.DOWN, f"down for {down_for:.0f}s ({self.state})", down_for_s=round(down_for, 3)
            )
        if self.state.running:
            # Let the process remember the child's descendants on every round: after a crash,
            # ones that left its process group can no longer be found from it. Reading the
            # tree's /proc children files costs tens of microseconds.
            self.process.tree_pids()

    def _next_due(self) -> float:
        candidates = [self._clock.now() + self.config.check_interval]
        if self.state.running:
            candidates.append(self._next_probe_at)
        for due in (self._restart_at, self._retry_at):
            if due is not None:
                candidates.append(due)
        episode = self._episode
        if episode.bad_since is not None and not episode.down_reported:
            candidates.append(episode.bad_since + self.config.down_after)
        return min(candidates)

    # --- applying the state machine ------------------------------------------------------

    async def _apply(self, signal_: Signal, details: Mapping[str, Any] | None = None) -> None:
        self.state, effects = transition(self.state, signal_)
        if self.state in (TargetState.HEALTHY, TargetState.DEGRADED):
            self.healthy.set()
        else:
            self.healthy.clear()
        for effect in effects:
            await self._carry_out(effect, details or {})

    async def _carry_out(self, effect: Effect, details: Mapping[str, Any]) -> None:
        match effect:
            case Emit(kind=kind, message=message):
                await self._publish(kind, message, **details)
            case Restart(delay=delay, reason=reason):
                await self.process.stop()
                self._restart_reason = reason
                self._restart_at = self._clock.now() + delay
                if delay:
                    log.info("%s: restarting in %.2fs (%s)", self.name, delay, reason)
            case Stop(reason=reason):
                log.debug("%s: stopping (%s)", self.name, reason)
                self._restart_at = None
                await self.process.stop()
        limit = isinstance(effect, Emit) and effect.kind == Kind.RESTART_LIMIT_REACHED
        if limit and self.config.limit_retry > 0:
            self._retry_at = self._clock.now() + self.config.limit_retry

    async def _spawn(self, *, restart: bool, reason: str = "") -> None:
        now = self._clock.now()
        if restart:
            self.policy.record_restart(now)
        try:
            pid = await self.process.start()
        except ProcessStartError as exc:
            decision = self.policy.decide(now)
            delay = None if isinstance(decision, GiveUp) else decision.delay
            await self._apply(SpawnFailed(str(exc), delay))
            return
        self._pid = pid
        self._spawned_at = now
        self._answered = False
        self._next_probe_at = now
        await self._apply(Spawned(restart=restart, reason=reason), {"pid": pid})

    async def _publish(self, kind: str, message: str, **details: Any) -> None:
        now = self._clock.now()
        event = Event.of(
            self.name,
            kind,
            message,
            pid=details.pop("pid", self.process.pid),
            restarts_in_window=self.policy.restarts_in_window(now),
            restarts_total=self.policy.total,
            state=str(self.state),
            **details,
        )
        log_level = logging.WARNING if event.severity != "info" else logging.INFO
        log.log(log_level, "%s: %s", self.name, message)
        try:
            self.last_event = await self._bus.publish(event)
        except Exception:
            # The store is the audit log, but supervision must go on without it.
            log.exception("%s: could not record event %s", self.name, kind)
            self.last_event = event

    # --- reading ---------------------------------------------------------------------

    def status(self) -> TargetStatus:
        now = self._clock.now()
        running = self.state.running and self.process.running
        probe = self.last_probe
        return TargetStatus(
            name=self.name,
            state=self.state,
            pid=self.process.pid if running else None,
            uptime=(now - self._spawned_at) if running and self._spawned_at is not None else None,
            restarts_in_window=self.policy.restarts_in_window(now),
            restarts_total=self.policy.total,
            health_url=self.config.health_url,
            last_probe=probe,
            last_event=self.last_event,
            probe_age=None if probe is None else now - probe.checked_at,
        )


def _has_exited(pid: int) -> bool:
    """True when the child is gone or a zombie whose exit we have not yet been told about."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _exit_details(info: ExitInfo) -> dict[str, Any]:
    return {
        "pid": info.pid,
        "exit_code": info.returncode,
        "signal": info.signal,
        "stderr_tail": list(info.stderr_tail),
    }
