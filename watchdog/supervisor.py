"""Supervisor: all targets' monitors, started in dependency order and stopped in reverse."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from watchdog.clock import Clock
from watchdog.core import Hold, Release, RestartRequest
from watchdog.events import utcnow
from watchdog.monitor import (
    ManagedProcessLike,
    ProberLike,
    Publisher,
    TargetMonitor,
    TargetStatus,
)
from watchdog.probe import Prober, ProbeResult, make_client
from watchdog.probe_transport import ProbeClient
from watchdog.process import ManagedProcess
from watchdog.settings import TargetConfig
from watchdog.tasks import TaskSupervisor

log = logging.getLogger(__name__)


def start_order(configs: Sequence[TargetConfig]) -> list[TargetConfig]:
    """Targets sorted so each comes after the ones it names in ``after`` (stable otherwise)."""
    by_name = {config.name.lower(): config for config in configs}
    ordered: list[TargetConfig] = []
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(config: TargetConfig, path: tuple[str, ...]) -> None:
        key = config.name.lower()
        if key in done:
            return
        if key in visiting:
            cycle = " -> ".join((*path, config.name))
            raise ValueError(f"start order has a cycle: {cycle}")
        visiting.add(key)
        for dep in config.after:
            if dep in by_name:
                visit(by_name[dep], (*path, config.name))
        visiting.discard(key)
        done.add(key)
        ordered.append(config)

    for config in configs:
        visit(config, ())
    return ordered


class ChildLedgerHooks(Protocol):
    """Bookkeeping of started children (see `watchdog.leftovers`)."""

    async def spawned(self, target: str, pid: int) -> None: ...
    async def stopped(self, target: str) -> None: ...
    async def held(self, target: str, held: Mapping[str, str] | None) -> None: ...
    async def load_holds(self) -> dict[str, dict[str, str]]: ...


# A change of these restarts the target's process; any other change applies in place.
_PROCESS_FIELDS = ("argv", "workdir", "env")


def _process_changed(old: TargetConfig, new: TargetConfig) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in _PROCESS_FIELDS)


@dataclass
class ReloadReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)  # their process changed
    updated: list[str] = field(default_factory=list)  # supervision settings, same process
    unchanged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in self.to_dict().items()
            if names and label != "unchanged"
        ]
        return "; ".join(parts) or "no target changed"


class UnknownTarget(LookupError):
    """An operator named a target that is not configured."""


@dataclass(frozen=True, slots=True)
class OperationResult:
    target: str
    ok: bool
    message: str
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "message": self.message, "pid": self.pid}


ProcessFactory = Callable[[TargetConfig], ManagedProcessLike]
ProberFactory = Callable[[TargetConfig], ProberLike | None]

# How long `stop()` waits for a monitor to stop its target before doing it directly.
_SHUTDOWN_PATIENCE = 5.0
# An operator's request may take the stop grace plus this (spawn, reaping).
_OPERATE_SLACK = 15.0


class Supervisor:
    """Owns one `TargetMonitor` per target (each with its own small HTTP client), each run
    as a worker of a `TaskSupervisor`: a monitor that raises is restarted and resumes."""

    def __init__(
        self,
        configs: Sequence[TargetConfig],
        bus: Publisher,
        *,
        log_dir: Path,
        clock: Clock,
        crash_loop_count: int = 3,
        stderr_tail_lines: int = 20,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 5,
        resources: Callable[[str], Mapping[str, Any] | None] | None = None,
        tasks: TaskSupervisor | None = None,
        process_factory: ProcessFactory | None = None,
        prober_factory: ProberFactory | None = None,
        ledger: ChildLedgerHooks | None = None,
        instance: str | None = None,
    ) -> None:
        self._configs = start_order(configs)
        self._clock = clock
        self.tasks = tasks or TaskSupervisor(clock=clock)
        self._clients: dict[str, ProbeClient] = {}
        # One small client per target: its checks never overlap, so one kept-alive
        # connection serves them all (see probe.py and probe_transport.py).
        self._tls: ssl.SSLContext | None = None

        def make_process(config: TargetConfig) -> ManagedProcessLike:
            return ManagedProcess(
                config.name,
                config.argv,
                log_dir=log_dir,
                cwd=config.workdir,
                stop_timeout=config.stop_timeout,
                stderr_tail_lines=stderr_tail_lines,
                log_max_bytes=log_max_bytes,
                log_backups=log_backups,
                clock=clock,
                env=dict(config.env) or None,
                marker=f"{config.name}@{instance}" if instance else None,
            )

        self._resources = resources
        self._bus = bus
        self._crash_loop_count = crash_loop_count
        self._process_factory = process_factory or make_process
        self._prober_factory = prober_factory or self._make_prober
        self._ledger = ledger
        self.monitors: dict[str, TargetMonitor] = {
            config.name: self._new_monitor(config) for config in self._configs
        }
        self._started: set[str] = set()
        # One task per target not started yet: it waits for the target's AFTER dependencies
        # to be healthy, then spawns its monitor. A reload cancels the task of a target it
        # removes or replaces; a task that failed is kept in `_start_failed` (health).
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._start_failed: dict[str, str] = {}

    def _new_monitor(self, config: TargetConfig) -> TargetMonitor:
        ledger = self._ledger
        return TargetMonitor(
            config,
            self._bus,
            clock=self._clock,
            process=self._process_factory(config),
            prober=self._prober_factory(config),
            crash_loop_count=self._crash_loop_count,
            resources=self._resources,
            on_spawned=None if ledger is None else ledger.spawned,
            on_stopped=None if ledger is None else ledger.stopped,
            on_hold=None if ledger is None else ledger.held,
        )

    def _make_prober(self, config: TargetConfig) -> ProberLike | None:
        if not config.health_url:
            return None
        if self._tls is None and config.health_url.lower().startswith("https:"):
            self._tls = httpx.create_ssl_context()  # the CA bundle, once for all clients
        client = make_client(max_connections=2, ssl_context=self._tls)
        self._clients[config.name] = client
        return Prober(
            config.health_url,
            timeout=config.probe_timeout,
            degraded_latency=config.degraded_latency,
            client=client,
            clock=self._clock,
        )

    async def start(self) -> None:
        """Start every target; one with ``after`` waits until those are healthy first.

        Returns once all targets without dependencies run; dependants start in the background.
        A target an operator stopped (a hold kept in the store) stays stopped.
        """
        if self._ledger is not None:
            try:
                holds = {k.lower(): v for k, v in (await self._ledger.load_holds()).items()}
            except Exception as exc:
                log.error("cannot read the operators' holds from the store: %s", exc)
                holds = {}
            for name, monitor in self.monitors.items():
                monitor.held_at_start = holds.get(name.lower())
        self._schedule_waiting()  # (a reload before start may have done some)
        independent = [c.name for c in self._configs if not c.after]
        await asyncio.gather(*(self._await_launch(name) for name in independent))

    def _schedule_waiting(self) -> None:
        """A start task for every target neither started nor waiting to start."""
        for config in self._configs:
            if config.name not in self._pending and config.name not in self._started:
                self._schedule_start(config)

    def _schedule_start(self, config: TargetConfig) -> None:
        task = asyncio.create_task(self._start_one(config), name=f"start:{config.name}")
        self._pending[config.name] = task
        self._start_failed.pop(config.name, None)
        task.add_done_callback(lambda done: self._start_done(config.name, done))

    def _start_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._pending.get(name) is task:
            del self._pending[name]
        if task.cancelled() or task.exception() is None:
            return
        self._start_failed[name] = f"{type(task.exception()).__name__}: {task.exception()}"
        log.error("%s: could not be started: %s", name, self._start_failed[name])

    async def _cancel_start(self, name: str) -> None:
        task = self._pending.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _start_one(self, config: TargetConfig) -> None:
        """Start ``config``'s monitor once its AFTER dependencies are healthy (each waits
        alone: a dependency that never comes up holds back only its dependants)."""
        monitor = self.monitors[config.name]
        for dep in config.after:
            try:
                waited = self._monitor(dep)
            except KeyError:
                continue  # not supervised (any more): nothing to wait for
            if not waited.healthy.is_set():
                log.info("%s: waiting for %s to be healthy", config.name, waited.name)
                await waited.healthy.wait()
        if config.name in self._started or self.monitors.get(config.name) is not monitor:
            return  # started meanwhile, or replaced by a reload (whose task starts it)
        self._started.add(config.name)
        self.tasks.spawn(f"monitor:{config.name}", monitor.run)

    async def _await_launch(self, name: str) -> None:
        """Until ``name``'s first start was tried (or its start task ended otherwise)."""
        task = self._pending.get(name)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                raise failure
        monitor = self.monitors.get(name)
        if monitor is not None and name in self._started:
            await monitor.launched.wait()

    def _monitor(self, name: str) -> TargetMonitor:
        for monitor in self.monitors.values():
            if monitor.name.lower() == name.lower():
                return monitor
        raise KeyError(name)

    async def stop(self) -> None:
        """Stop every target fully (group, grace, SIGKILL): each once the targets that start
        ``after`` it have stopped, the others at the same time, so that stopping 1000
        independent targets takes one stop grace, not 1000."""
        for name in list(self._pending):
            await self._cancel_start(name)
        stopped = {config.name.lower(): asyncio.Event() for config in self._configs}
        dependents: dict[str, list[str]] = {name: [] for name in stopped}
        for config in self._configs:
            for parent in config.after:
                dependents.setdefault(parent.lower(), []).append(config.name.lower())

        async def stop_after_dependents(config: TargetConfig) -> None:
            name = config.name.lower()
            for dependent in dependents[name]:
                await stopped[dependent].wait()
            try:
                await self._stop_one(config.name)
            finally:
                stopped[name].set()

        # Every stop runs to its end even if another raised; the first error is raised after.
        outcomes = await asyncio.gather(
            *(stop_after_dependents(config) for config in self._configs), return_exceptions=True
        )
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _stop_one(self, name: str) -> None:
        """Stop one target fully. A monitor that cannot do it (dead, stalled) gets
        ``_SHUTDOWN_PATIENCE`` beyond its stop grace; then the tree is stopped directly: no
        target outlives erpwatch."""
        if name not in self._started:
            return
        monitor = self.monitors[name]
        monitor.stop()
        worker = f"monitor:{name}"
        patience = monitor.config.stop_timeout + _SHUTDOWN_PATIENCE
        try:
            await asyncio.wait_for(self.tasks.join(worker), patience)
        except TimeoutError:
            log.error("%s: its monitor did not stop in %.0fs; stopping directly", name, patience)
            await self.tasks.cancel(worker)
            await monitor.abandon()
        self._started.discard(name)

    async def reload(self, configs: Sequence[TargetConfig]) -> ReloadReport:
        """Apply a new set of target configs while running: start added targets (after
        their AFTER dependencies are healthy), stop removed ones, restart those whose process
        changed (command, working directory, environment), apply changed supervision
        settings (intervals, thresholds, limits, health URL) in place, leave the rest alone.

        Raises ValueError (a cycle in AFTER) before changing anything."""
        ordered = start_order(configs)
        new = {c.name: c for c in ordered}
        old = {c.name: c for c in self._configs}
        report = ReloadReport()
        # Targets still waiting for their dependencies wait anew (at the end), for the
        # current ones: their AFTER may change, a dependency be removed or replaced.
        for name in list(self._pending):
            await self._cancel_start(name)
        for name in [n for n in reversed(list(old)) if n not in new]:
            self._start_failed.pop(name, None)
            await self._stop_one(name)
            monitor = self.monitors.pop(name)
            client = self._clients.pop(name, None)
            if client is not None:
                await client.aclose()
            del monitor
            report.removed.append(name)
        self._configs = ordered
        for config in ordered:
            name = config.name
            previous = old.get(name)
            if previous is None:
                self.monitors[name] = self._new_monitor(config)
                report.added.append(name)
            elif previous == config:
                report.unchanged.append(name)
            elif _process_changed(previous, config):
                held = self.monitors[name].core_state
                hold = None if held is None else held.held
                await self._stop_one(name)
                client = self._clients.pop(name, None)
                if client is not None:
                    await client.aclose()
                monitor = self._new_monitor(config)
                monitor.held_at_start = hold
                self.monitors[name] = monitor
                report.restarted.append(name)
            else:
                monitor = self.monitors[name]
                prober = monitor.prober
                if previous.health_url != config.health_url or (
                    previous.probe_timeout,
                    previous.degraded_latency,
                ) != (config.probe_timeout, config.degraded_latency):
                    client = self._clients.pop(name, None)
                    if client is not None:
                        await client.aclose()
                    prober = self._prober_factory(config)
                monitor.reconfigure(config, prober)
                report.updated.append(name)
        self._schedule_waiting()  # added, replaced and still waiting targets
        return report

    async def operate(
        self, command: str, names: Sequence[str], *, reason: str = "", actor: str = "operator"
    ) -> list[OperationResult]:
        """restart / stop / start the named targets (all, in start order; stop in reverse).

        Unknown names are refused before anything is done. Each waits until carried out."""
        if command not in ("restart", "stop", "start"):
            raise ValueError(f"unknown command {command!r}")
        chosen = self._resolve(names)
        if command == "stop":
            chosen.reverse()
        results = []
        for monitor in chosen:
            name = monitor.name
            if name not in self._started:
                waiting = ", ".join(monitor.config.after) or "its start"
                results.append(
                    OperationResult(name, False, f"not started yet (waits for {waiting})")
                )
                continue
            obs: RestartRequest | Hold | Release
            if command == "restart":
                obs = RestartRequest(reason, counted=False, actor=actor)
            elif command == "stop":
                obs = Hold(actor, reason, utcnow().isoformat(timespec="seconds"))
            else:
                obs = Release(actor)
            patience = monitor.config.stop_timeout + _OPERATE_SLACK
            try:
                outcome = await asyncio.wait_for(monitor.operate(obs), patience)
            except TimeoutError:
                results.append(
                    OperationResult(name, False, f"not done after {patience:.0f}s (still trying)")
                )
                continue
            results.append(OperationResult(name, outcome.ok, outcome.message, outcome.pid))
        return results

    def _resolve(self, names: Sequence[str]) -> list[TargetMonitor]:
        if not names:
            return list(self.monitors.values())
        by_name = {name.lower(): monitor for name, monitor in self.monitors.items()}
        unknown = [n for n in names if n.lower() not in by_name]
        if unknown:
            known = ", ".join(self.monitors) or "none"
            raise UnknownTarget(
                f"unknown target {', '.join(map(repr, unknown))} (configured: {known})"
            )
        wanted = {n.lower() for n in names}
        return [m for m in self.monitors.values() if m.name.lower() in wanted]

    async def restart(self, name: str, reason: str) -> None:
        """Restart one target now (counted by its restart policy)."""
        self._monitor(name).request_restart(reason)

    def stalled(self, now: float) -> list[str]:
        """Targets nobody is watching right now: monitor task dead, missed its ticks, or its
        start failed."""
        dead = set(self.tasks.dead())
        return [
            name
            for name, monitor in self.monitors.items()
            if name in self._start_failed
            or (name in self._started and (f"monitor:{name}" in dead or monitor.stalled(now)))
        ]

    def blind(self) -> list[str]:
        """Targets whose last health check could not be made for erpwatch's own trouble
        (EMFILE, ENOMEM), with the reason: they are not judged meanwhile."""
        return [
            f"{name} ({monitor.blind[1]})"
            for name, monitor in self.monitors.items()
            if monitor.blind is not None
        ]

    def add_probe_listener(self, listener: Callable[[str, ProbeResult], object]) -> None:
        """Call ``listener(target, result)`` after every health probe (e.g. for metrics)."""
        for monitor in self.monitors.values():
            monitor.probe_listeners.append(listener)

    def statuses(self) -> list[TargetStatus]:
        statuses = []
        for monitor in self.monitors.values():
            status = monitor.status()
            if self._resources is not None:
                status = dataclasses.replace(status, resources=self._resources(monitor.name))
            statuses.append(status)
        return statuses

    def running_pids(self) -> dict[str, list[int]]:
        """Each running target's main pid (samplers walk the tree below it themselves)."""
        return {
            name: [monitor.process.pid]
            for name, monitor in self.monitors.items()
            if monitor.process.running and monitor.process.pid is not None
        }
