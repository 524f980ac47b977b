"""TargetMonitor: the thin I/O shell around one target's `watchdog.core.Core`.

It waits (for the next due time, the child's exit, a probe's answer or a request), turns what
it saw into an observation, asks the core, and carries out the effects: spawn, stop the tree,
send a probe, publish an event. The process and the prober are handed in, so tests drive the
shell on a `FakeClock` with fakes; every failure of theirs becomes an observation (a spawn
that raises is `SpawnFailed`, a stop that raises is `Stopped(error=...)`), never an exception
that ends the loop. `run()` may be called again after it raised: it resumes where it was.

For the status it keeps the last `LATENCY_HISTORY` probes (a ring buffer) and the pid a stop
is still working on; an event whose details carry ``next_retry_in_s`` gains the wall-clock
``next_retry_at`` here (the core has no wall clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import psutil

from watchdog.clock import Clock
from watchdog.core import (
    Core,
    Effect,
    Emit,
    Exited,
    Hold,
    Observation,
    Params,
    Probe,
    Probed,
    Release,
    ResourceSample,
    RestartRequest,
    Shutdown,
    Spawn,
    Spawned,
    SpawnFailed,
    State,
    Stop,
    Stopped,
    Tick,
)
from watchdog.events import Event, utcnow
from watchdog.probe import ProbeResult, ProbeStatus
from watchdog.process import ExitInfo, StopReport
from watchdog.settings import TargetConfig
from watchdog.states import TargetState
from watchdog.store import format_ts

log = logging.getLogger(__name__)

# The loop wakes at least this often (bounded by CHECK_INTERVAL), so a stalled monitor shows.
MAX_TICK = 5.0
# A monitor that has not gone round its loop for this many ticks counts as stalled.
STALL_TICKS = 3
_STOP_SLACK = 7.0  # reaping after SIGKILL and its checks, on top of a stop's grace
LATENCY_HISTORY = 30  # probes kept for the status's response-time history
_MIN_WAIT = 0.01
_TREE_REREAD = 0.02  # s: a round this soon after the last does not read the tree again
# A dying process closes its sockets a moment before the kernel reports its exit: a check
# refused in that moment waits this long for the exit, so a crash reads "crashed", not
# "unhealthy" then "crashed".
EXIT_SETTLE_S = 0.2


class ManagedProcessLike(Protocol):
    """What the monitor needs of a child process (`watchdog.process.ManagedProcess`)."""

    stop_timeout: float

    @property
    def pid(self) -> int | None: ...
    @property
    def running(self) -> bool: ...
    async def start(self) -> int: ...
    async def wait(self) -> ExitInfo: ...
    async def stop_tree(self, grace: float | None = None) -> StopReport: ...
    def tree_pids(self) -> list[int]: ...
    def rotate_logs(self) -> None: ...


class ProberLike(Protocol):
    async def check(self) -> ProbeResult: ...


class Publisher(Protocol):
    async def publish(self, event: Event) -> Event: ...


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
    held: Mapping[str, str] | None = None  # stopped by an operator: actor, reason, since
    down_for: float | None = None  # seconds since it stopped being healthy or degraded
    cause: Mapping[str, Any] | None = None  # why it is not healthy now (`watchdog.core.cause`)
    next_retry_in: float | None = None  # seconds until a scheduled automatic start
    # The last probes, oldest first: (seconds ago, response time in ms or None without an
    # answer, status).
    latencies: tuple[tuple[float, float | None, str], ...] = ()
    stopping_pid: int | None = None  # a stop is still working on this process

    @property
    def colour(self) -> str:
        return self.state.colour

    @property
    def checks(self) -> list[dict[str, Any]]:
        """The last probe's health-check results ({name, status, error, latency_ms})."""
        probe = self.last_probe
        return [] if probe is None else [check.to_dict() for check in probe.checks]

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
            "held": None if self.held is None else dict(self.held),
            "down_for_s": _rounded(self.down_for),
            "cause": None if self.cause is None else dict(self.cause),
            "checks": self.checks,
            "next_retry_in_s": _rounded(self.next_retry_in),
            "latencies": [
                {"age_s": round(age, 3), "ms": ms, "ok": status == ProbeStatus.OK, "status": status}
                for age, ms, status in self.latencies
            ],
            "stopping_pid": self.stopping_pid,
        }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an operator's request ended."""

    ok: bool
    message: str
    pid: int | None = None


@dataclass
class _Operation:
    request: Observation
    done: asyncio.Future[Outcome]
    armed: bool = False  # its request has been fed to the core


def _held_suffix(state: State) -> str:
    held = state.held or {}
    reason = held.get("reason")
    return f" (held by {held.get('actor', 'operator')}" + (f": {reason})" if reason else ")")


class TargetMonitor:
    def __init__(
        self,
        config: TargetConfig,
        bus: Publisher,
        *,
        clock: Clock,
        process: ManagedProcessLike,
        prober: ProberLike | None,
        crash_loop_count: int = 3,
        resources: Callable[[str], Mapping[str, Any] | None] | None = None,
        rng: random.Random | None = None,
        on_spawned: Callable[[str, int], Awaitable[None]] | None = None,
        on_stopped: Callable[[str], Awaitable[None]] | None = None,
        on_hold: Callable[[str, Mapping[str, str] | None], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.process = process
        self._crash_loop_count = crash_loop_count
        self.core = Core(Params.from_config(config, crash_loop_count=crash_loop_count))
        self._bus = bus
        self._clock = clock
        self._prober = prober if config.health_url else None
        self._resources = resources
        self._rng = rng or random.Random()
        self._on_spawned = on_spawned  # e.g. the ledger of children (leftovers after a crash)
        self._on_stopped = on_stopped
        self._on_hold = on_hold  # persist an operator's hold (None: released)
        self.max_tick = min(config.check_interval, MAX_TICK)
        self.last_probe: ProbeResult | None = None
        # (since, reason) while checks cannot be made for erpwatch's own trouble (EMFILE):
        # the target is not judged meanwhile, erpwatch's /health says so.
        self.blind: tuple[float, str] | None = None
        self.probe_listeners: list[Callable[[str, ProbeResult], object]] = []
        self.last_event: Event | None = None
        self.healthy = asyncio.Event()  # set while HEALTHY or DEGRADED (start order waits on it)
        self.launched = asyncio.Event()  # set once the first start was tried
        self.last_tick = clock.now()
        self._state: State | None = None
        self._requests: deque[Observation] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._tree_read_at = -1.0e9
        self._exit_wait: asyncio.Future[ExitInfo] | None = None
        self._probe_task: asyncio.Task[ProbeResult] | None = None
        self._probe_pid: int | None = None
        self._busy_until: float | None = None  # a stop in progress may take this long
        self._last_sample_ts: object = None
        # (checked_at, ms or None, status) of the last probes: bounded.
        self._latencies: deque[tuple[float, float | None, str]] = deque(maxlen=LATENCY_HISTORY)
        self._stopping_pid: int | None = None
        self._acted = True  # the last round produced effects
        self._operations: list[_Operation] = []
        self.held_at_start: Mapping[str, str] | None = None  # a hold kept in the store

    @property
    def state(self) -> TargetState:
        return TargetState.STARTING if self._state is None else self._state.phase

    @property
    def core_state(self) -> State | None:
        return self._state

    # --- the loop: waiting only -----------------------------------------------------

    async def run(self) -> None:
        """Start the target and supervise it until `stop()`; resumes if called again."""
        if self._state is None:
            try:
                self._state, effects = self.core.start(self._clock.now(), self.held_at_start)
                await self._notify(self._on_hold, self.name, self._state.held)
                for obs in await self._carry_out(effects):
                    await self._feed(obs)
            finally:
                self.launched.set()
        while not self._state.settled:
            await self._wait()
            await self.step()
        for op in self._operations:  # requests still open when erpwatch stopped
            if not op.done.done():
                op.done.set_result(Outcome(False, "erpwatch is stopping"))
        self._operations.clear()

    def stop(self) -> None:
        """Ask `run()` to stop the child (whole tree) and return."""
        self.request(Shutdown())

    def request_restart(self, reason: str, *, counted: bool = True) -> None:
        """Ask `run()` to restart the child (counted by the restart policy unless told)."""
        self.request(RestartRequest(reason, counted=counted))

    def request(self, obs: Observation) -> None:
        self._requests.append(obs)
        self._wake()

    async def operate(self, obs: RestartRequest | Hold | Release) -> Outcome:
        """An operator's request, carried out: resolves once done (restart: a new process
        started; stop: the whole tree gone; start: started), or refused / failed."""
        if self._state is not None and self._state.shutting_down:
            return Outcome(False, "erpwatch is stopping")
        operation = _Operation(obs, asyncio.get_running_loop().create_future())
        self._operations.append(operation)
        self.request(obs)
        return await asyncio.shield(operation.done)

    def _settle_operations(self, obs: Observation) -> None:
        """Resolve the operator requests this observation completes."""
        state = self._state
        assert state is not None
        for op in list(self._operations):
            outcome: Outcome | None = None
            if op.request is obs:
                op.armed = True
                outcome = self._at_once(op, state)
            elif not op.armed:
                continue
            elif state.shutting_down:
                outcome = Outcome(False, "erpwatch is stopping")
            elif isinstance(op.request, Hold):
                if state.held and not state.stopping and state.pid is None:
                    outcome = Outcome(True, "stopped, whole tree gone" + _held_suffix(state))
                elif isinstance(obs, Stopped) and obs.error:
                    outcome = Outcome(False, f"could not stop: {obs.error} (retrying)")
            elif isinstance(obs, Spawned):
                verb = "restarted" if isinstance(op.request, RestartRequest) else "started"
                outcome = Outcome(True, f"{verb}, pid {obs.pid}", obs.pid)
            elif isinstance(obs, SpawnFailed):
                outcome = Outcome(False, f"could not start: {obs.error}")
            elif isinstance(obs, Stopped) and obs.error:
                outcome = Outcome(False, f"could not stop the old process: {obs.error}")
            if outcome is not None:
                self._operations.remove(op)
                if not op.done.done():
                    op.done.set_result(outcome)

    @staticmethod
    def _at_once(op: _Operation, state: State) -> Outcome | None:
        """A request that needed nothing (already so) or could not be taken."""
        if state.shutting_down:
            return Outcome(False, "erpwatch is stopping")
        busy = state.stopping or state.spawning or state.restart_at is not None
        if isinstance(op.request, Hold):
            if state.held and not busy and state.pid is None:
                return Outcome(True, "stopped" + _held_suffix(state))
            return None
        if isinstance(op.request, Release) and not busy and state.phase.running:
            return Outcome(True, f"already running, pid {state.pid}", state.pid)
        return None

    async def _wait(self) -> None:
        """Until the next decision is due, a request or wake-up arrives, the child exits or
        the probe finishes: one future and one timer (this runs twice a second per target:
        at 1000 targets, two tasks and `asyncio.wait` each time were ~10 % of a core)."""
        if self._requests or self._ready(self._exit_wait) or self._ready(self._probe_task):
            return
        now = self._clock.now()
        assert self._state is not None
        due = self.core.next_due(self._state)
        delay = self.max_tick if due is None else min(max(due - now, 0.0), self.max_tick)
        if delay == 0.0 and not self._acted:
            delay = _MIN_WAIT  # due, yet the last round did nothing: never spin the loop
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._waiter = waiter
        timer = self._clock.call_later(delay, wake)
        watched = [f for f in (self._exit_wait, self._probe_task) if f is not None]
        for future in watched:
            future.add_done_callback(wake)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
            for future in watched:
                future.remove_done_callback(wake)

    def _wake(self) -> None:
        """End the current wait (a request arrived, ...)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @staticmethod
    def _ready(future: asyncio.Future[Any] | None) -> bool:
        return future is not None and future.done()

    # --- one round ------------------------------------------------------------------

    async def step(self) -> None:
        """Observe what happened since the last round and let the core decide."""
        self.last_tick = self._clock.now()
        observations: list[Observation] = []
        if self._exit_wait is not None and self._exit_wait.done():
            observations.append(self._exit_observation(self._exit_wait))
            self._exit_wait = None
        if self._probe_task is not None and self._probe_task.done():
            observations.append(self._probe_observation(self._probe_task))
            self._probe_task = None
        while self._requests:
            observations.append(self._requests.popleft())
        sample = self._resource_observation()
        if sample is not None:
            observations.append(sample)
        observations.append(Tick())
        self._acted = False
        for obs in observations:
            await self._feed(obs)
        self._remember_descendants()

    async def _feed(self, first: Observation) -> None:
        """Feed ``first`` and every observation its effects produce, in order (no recursion:
        a spawn failing with a zero backoff yields the next spawn, round after round)."""
        pending: deque[Observation] = deque([first])
        while pending:
            obs = pending.popleft()
            assert self._state is not None
            held_before = self._state.held
            self._state, effects = self.core.decide(self._state, obs, self._clock.now())
            self._acted = self._acted or bool(effects)
            if self._state.held != held_before:
                await self._notify(self._on_hold, self.name, self._state.held)
            results = await self._carry_out(effects)
            # Only once its effects are carried out (the event recorded): a caller told
            # "restarted" finds the `restarted` event in the store.
            self._settle_operations(obs)
            pending.extend(results)

    async def _carry_out(self, effects: list[Effect]) -> list[Observation]:
        """Do each effect; returns what that showed (spawned, spawn failed, stopped)."""
        assert self._state is not None
        if self._state.phase in (TargetState.HEALTHY, TargetState.DEGRADED):
            self.healthy.set()
        else:
            self.healthy.clear()
        results: list[Observation] = []
        for effect in effects:
            match effect:
                case Emit():
                    await self._publish(effect)
                case Spawn():
                    results.append(await self._spawn())
                case Stop(grace=grace, reason=reason):
                    results.append(await self._stop(grace, reason))
                case Probe():
                    self._send_probe()
        return results

    # --- effects --------------------------------------------------------------------

    async def _spawn(self) -> Observation:
        try:
            pid = await self.process.start()
        except Exception as exc:  # OSError of any kind, a log it cannot open, ...
            return SpawnFailed(str(exc) or type(exc).__name__)
        # Set up before anything else awaits: an exit at once is never missed.
        self._exit_wait = asyncio.ensure_future(self.process.wait())
        await self._notify(self._on_spawned, self.name, pid)
        return Spawned(pid, jitter=self._rng.random())

    async def _notify(self, hook: Callable[..., Awaitable[None]] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            await hook(*args)
        except Exception as exc:  # bookkeeping only: never in the way of supervision
            log.warning("%s: %s failed: %s", self.name, getattr(hook, "__name__", hook), exc)

    async def _stop(self, grace: float, reason: str) -> Observation:
        self._cancel_probe()
        log.debug("%s: stopping (%s; grace %.1fs)", self.name, reason, grace)
        self._busy_until = self._clock.now() + grace + _STOP_SLACK
        self._stopping_pid = self.process.pid if self.process.running else self._stopping_pid
        try:
            report = await self.process.stop_tree(grace)
        except Exception as exc:
            log.error("%s: stopping failed: %s", self.name, exc)
            return Stopped(error=str(exc) or type(exc).__name__)  # still ours to stop
        finally:
            self._busy_until = None
        self._stopping_pid = None
        if self._exit_wait is not None and self._exit_wait.done():
            self._exit_wait = None  # the exit we caused: nothing to report
        if self._state is not None and self._state.phase is TargetState.STOPPED:
            await self._notify(self._on_stopped, self.name)
        return Stopped(escalated=report.escalated, after=report.after)

    def _send_probe(self) -> None:
        assert self._state is not None
        if self._prober is None:
            return
        self._cancel_probe()
        self._probe_pid = self._state.pid
        self._probe_task = asyncio.create_task(
            self._check(self._prober), name=f"erpwatch-probe-{self.name}"
        )

    async def _check(self, prober: ProberLike) -> ProbeResult:
        result = await prober.check()
        exiting, state = self._exit_wait, self._state
        refused = result.status is ProbeStatus.FAILED and not result.answered
        # Only for a process that answered before: one booting is forgiven anyway, and its
        # next check must not wait (that would slow crash → healthy).
        answered = state is not None and state.answered
        if refused and not result.timed_out and answered and exiting and not exiting.done():
            await self._exit_or(exiting, EXIT_SETTLE_S)  # see EXIT_SETTLE_S
        return result

    async def _exit_or(self, exiting: asyncio.Future[ExitInfo], seconds: float) -> None:
        """Until ``exiting`` is done or ``seconds`` passed on the monitor's clock."""
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(_: object = None) -> None:
            if not settled.done():
                settled.set_result(None)

        timer = self._clock.call_later(seconds, done)
        exiting.add_done_callback(done)
        try:
            await settled
        finally:
            timer.cancel()
            exiting.remove_done_callback(done)

    def _cancel_probe(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None

    async def _publish(self, emit: Emit) -> None:
        assert self._state is not None
        now = self._clock.now()
        state = self._state
        details = dict(emit.details)
        pid = details.pop("pid", state.pid)
        retry_in = details.get("next_retry_in_s")
        if isinstance(retry_in, int | float):
            details["next_retry_at"] = format_ts(utcnow() + timedelta(seconds=retry_in))
        event = Event.of(
            self.name,
            emit.kind,
            emit.message,
            pid=pid,
            restarts_in_window=self.core.restarts_in_window(state, now),
            restarts_total=state.restarts_total,
            state=str(state.phase),
            **details,
        )
        log_level = logging.WARNING if event.severity != "info" else logging.INFO
        log.log(log_level, "%s: %s", self.name, emit.message)
        try:
            self.last_event = await self._bus.publish(event)
        except Exception as exc:
            # The store is the audit log, but supervision must go on without it.
            log.error("%s: could not record event %s: %s", self.name, emit.kind, exc)
            self.last_event = event

    # --- observations -----------------------------------------------------------------

    def _exit_observation(self, future: asyncio.Future[ExitInfo]) -> Observation:
        info = future.result()
        details = {
            "exit_code": info.returncode,
            "signal": info.signal,
            "stderr_tail": list(info.stderr_tail),
        }
        return Exited(info.pid, info.describe(), details)

    def _probe_observation(self, task: asyncio.Task[ProbeResult]) -> Observation:
        pid = self._probe_pid if self._probe_pid is not None else -1
        try:
            result = task.result()
        except Exception as exc:  # a bug in the prober: a failed check, not a dead monitor
            now = self._clock.now()
            result = ProbeResult(ProbeStatus.FAILED, 0.0, None, f"probe error: {exc!r}", now)
        self.last_probe = result
        ms = round(result.latency * 1000, 2) if result.answered else None
        self._latencies.append((result.checked_at, ms, str(result.status)))
        for listener in self.probe_listeners:
            try:
                listener(self.name, result)
            except Exception:
                log.exception("%s: a probe listener failed", self.name)
        details = {"latency_ms": round(result.latency * 1000, 2), "status_code": result.status_code}
        failed = result.status is ProbeStatus.FAILED
        if result.local:
            if self.blind is None:
                log.error("%s: health check not made (erpwatch's own trouble): %s",
                          self.name, result.reason)  # fmt: skip
                self.blind = (result.checked_at, result.reason)
        else:
            self.blind = None
        return Probed(
            pid,
            str(result.status),
            result.reason,
            timed_out=result.timed_out,
            details=details,
            gone=failed and self._gone(pid),
            checks=tuple(check.to_dict() for check in result.checks),
            local=result.local,
        )

    def _gone(self, pid: int) -> bool:
        """The child died under the probe (its exit is then reported, not "unhealthy")."""
        if self.process.pid != pid or not self.process.running:
            return True
        try:
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True
        except (psutil.Error, OSError):
            return False

    def _resource_observation(self) -> Observation | None:
        if self._resources is None:
            return None
        try:
            sample = self._resources(self.name)
        except Exception:
            log.exception("%s: reading the resource sample failed", self.name)
            return None
        if not sample or sample.get("ts") == self._last_sample_ts:
            return None
        self._last_sample_ts = sample.get("ts")
        try:
            return ResourceSample(tuple(sample.get("pids", ())), float(sample["rss_mb"]))
        except (KeyError, TypeError, ValueError):
            return None

    def _remember_descendants(self) -> None:
        # Let the process remember the child's descendants on every round: after a crash,
        # ones that left its process group can no longer be found from it. Reading the
        # tree's /proc children files costs tens of microseconds; a round a few ms after
        # the last (a check's answer right after its sending) skips it: at 1000 targets
        # those second readings were ~5 % of a core.
        if self._state is None or not self._state.phase.running:
            return
        now = self._clock.now()
        if 0.0 <= now - self._tree_read_at < _TREE_REREAD:
            return
        self._tree_read_at = now
        try:
            self.process.tree_pids()
        except Exception as exc:  # EMFILE reading /proc, ...: try again next round
            log.debug("%s: reading the process tree failed: %s", self.name, exc)

    # --- for the supervisor ---------------------------------------------------------

    @property
    def prober(self) -> ProberLike | None:
        return self._prober

    def reconfigure(self, config: TargetConfig, prober: ProberLike | None) -> None:
        """New supervision settings for the same process (a reload): the core's state is
        kept, its parameters change from the next decision on."""
        self.config = config
        self.core = Core(Params.from_config(config, crash_loop_count=self._crash_loop_count))
        if prober is not self._prober:
            self._cancel_probe()
            if self._state is not None:
                self._state = self.core.probe_cancelled(self._state, self._clock.now())
            self._prober = prober if config.health_url else None
        self.max_tick = min(config.check_interval, MAX_TICK)
        self.process.stop_timeout = config.stop_timeout
        self._wake()

    def stalled(self, now: float) -> bool:
        """The loop has not gone round for STALL_TICKS ticks (a stop may take its grace)."""
        if self._state is None or self._state.settled:
            return False
        if self._busy_until is not None and now <= self._busy_until:
            return False
        return now - self.last_tick > STALL_TICKS * self.max_tick + 1.0

    async def abandon(self) -> None:
        """Stop the child directly, for when this monitor's loop can no longer do it."""
        self._cancel_probe()
        with contextlib.suppress(Exception):
            await self.process.stop_tree()

    # --- reading ---------------------------------------------------------------------

    def status(self) -> TargetStatus:
        now = self._clock.now()
        state = self._state
        running = state is not None and state.pid is not None and self.process.running
        probe = self.last_probe
        spawned_at = None if state is None else state.spawned_at
        down_for: float | None = None
        retry_at: float | None = None
        if state is not None:
            up = state.phase in (TargetState.HEALTHY, TargetState.DEGRADED, TargetState.STOPPED)
            if state.bad_since is not None and not up:
                down_for = max(now - state.bad_since, 0.0)
            retry_at = self.core.next_retry(state)
        return TargetStatus(
            name=self.name,
            state=self.state,
            pid=self.process.pid if running else None,
            uptime=(now - spawned_at) if running and spawned_at is not None else None,
            restarts_in_window=0 if state is None else self.core.restarts_in_window(state, now),
            restarts_total=0 if state is None else state.restarts_total,
            health_url=self.config.health_url,
            last_probe=probe,
            last_event=self.last_event,
            probe_age=None if probe is None else now - probe.checked_at,
            held=None if state is None or state.held is None else dict(state.held),
            down_for=down_for,
            cause=None if state is None or state.cause is None else dict(state.cause),
            next_retry_in=None if retry_at is None else max(retry_at - now, 0.0),
            latencies=tuple((now - at, ms, status) for at, ms, status in self._latencies),
            stopping_pid=self._stopping_pid,
        )
