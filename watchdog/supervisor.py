"""Supervisor: all targets' monitors, started in dependency order and stopped in reverse."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from watchdog.bus import EventBus
from watchdog.clock import Clock
from watchdog.config import TargetConfig
from watchdog.monitor import TargetMonitor, TargetStatus
from watchdog.probe import ProbeResult, make_client

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


class Supervisor:
    """Owns one `TargetMonitor` per target (each with its own small HTTP client)."""

    def __init__(
        self,
        configs: Sequence[TargetConfig],
        bus: EventBus,
        *,
        log_dir: Path,
        clock: Clock,
        crash_loop_count: int = 3,
        stderr_tail_lines: int = 20,
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 5,
        resources: Callable[[str], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self._configs = start_order(configs)
        # One small client per target: httpcore's pool gets slower per request the more
        # connections one pool holds (500 targets on one client timed out; see probe.py).
        tls = httpx.create_ssl_context()  # what httpx would load for each client
        self._clients = {
            config.name: make_client(max_connections=2, ssl_context=tls) for config in self._configs
        }
        self._resources = resources
        self.monitors: dict[str, TargetMonitor] = {
            config.name: TargetMonitor(
                config,
                bus,
                log_dir=log_dir,
                clock=clock,
                client=self._clients[config.name],
                crash_loop_count=crash_loop_count,
                stderr_tail_lines=stderr_tail_lines,
                log_max_bytes=log_max_bytes,
                log_backups=log_backups,
            )
            for config in self._configs
        }
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._starting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every target; one with ``after`` waits until those are healthy first.

        Returns once all targets without dependencies run; dependants start in the background.
        """
        self._starting = asyncio.create_task(self._start_in_order(), name="start-order")
        independent = [c.name for c in self._configs if not c.after]
        await asyncio.gather(*(self._await_launch(name) for name in independent))

    async def _start_in_order(self) -> None:
        for config in self._configs:
            for dep in config.after:
                waited = self._monitor(dep)
                if not waited.healthy.is_set():
                    log.info("%s: waiting for %s to be healthy", config.name, waited.name)
                    await waited.healthy.wait()
            monitor = self.monitors[config.name]
            self._tasks[config.name] = asyncio.create_task(monitor.run(), name=config.name)

    async def _await_launch(self, name: str) -> None:
        monitor = self.monitors[name]
        launched = asyncio.ensure_future(monitor.launched.wait())
        assert self._starting is not None
        await asyncio.wait({launched, self._starting}, return_when=asyncio.FIRST_COMPLETED)
        launched.cancel()
        if self._starting.done() and not self._starting.cancelled():
            self._starting.result()  # re-raise a failure of the start order

    def _monitor(self, name: str) -> TargetMonitor:
        for monitor in self.monitors.values():
            if monitor.name.lower() == name.lower():
                return monitor
        raise KeyError(name)

    async def stop(self) -> None:
        """Stop targets in reverse start order, each fully (group, grace, SIGKILL)."""
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        for config in reversed(self._configs):
            task = self._tasks.get(config.name)
            if task is None:
                continue
            self.monitors[config.name].stop()
            await asyncio.gather(task, return_exceptions=True)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s: monitor failed", config.name, exc_info=task.exception())
        await asyncio.gather(*(client.aclose() for client in self._clients.values()))

    async def restart(self, name: str, reason: str) -> None:
        """Restart one target now (e.g. over its memory cap)."""
        self._monitor(name).request_restart(reason)

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
