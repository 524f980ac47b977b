"""The one place that wires erpwatch together, and the ``erpwatch run`` command.

Start order: store → bus → alerting (its commit hook must see the first event) → status
server → monitors. Stop order is the reverse, so every ``stopped`` event is recorded and
every subscriber has seen it before the store closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from alerting.service import AlertService
from watchdog import __version__, preflight, sdnotify
from watchdog.bus import EventBus
from watchdog.clock import Clock, RealClock
from watchdog.config import ConfigError, Settings, TargetConfig, load_settings
from watchdog.events import SYSTEM_TARGET, Event, Kind
from watchdog.logs import setup_logging
from watchdog.resources import ResourceMonitor, default_paths, host_snapshot
from watchdog.store import EventStore
from watchdog.supervisor import Supervisor

log = logging.getLogger("erpwatch")

EXIT_PREFLIGHT = 1


def select_targets(
    configs: Sequence[TargetConfig], only: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[TargetConfig]:
    """Apply ``--only``/``--except``; naming an unknown target is a configuration error."""
    names = {config.name.lower() for config in configs}
    for name in (*only, *exclude):
        if name.lower() not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ConfigError(f"unknown target {name!r} (configured: {known})")
    chosen = [c for c in configs if not only or c.name.lower() in {n.lower() for n in only}]
    chosen = [c for c in chosen if c.name.lower() not in {n.lower() for n in exclude}]
    if not chosen:
        raise ConfigError("no target left to supervise after --only/--except")
    chosen_names = {c.name.lower() for c in chosen}
    # A dependency that is not supervised here cannot become healthy: do not wait for it.
    return [
        c.model_copy(update={"after": tuple(d for d in c.after if d in chosen_names)})
        for c in chosen
    ]


class Watchdog:
    """The assembled service: `start()`, wait for a stop request, `stop()`."""

    def __init__(
        self,
        settings: Settings,
        targets: Sequence[TargetConfig],
        *,
        clock: Clock | None = None,
    ) -> None:
        if not targets:
            raise ConfigError(
                "nothing to supervise: set ERPWATCH_COMMAND (and ERPWATCH_HEALTH_URL) or "
                "ERPWATCH_TARGETS__<NAME>__COMMAND"
            )
        self.settings = settings
        self.targets = list(targets)
        self.clock = clock or RealClock()
        self.store = EventStore(settings.event_db_path)
        self.bus = EventBus(self.store)
        self.supervisor = Supervisor(
            self.targets,
            self.bus,
            log_dir=settings.log_path,
            clock=self.clock,
            crash_loop_count=settings.crash_loop_count,
            stderr_tail_lines=settings.alert_stderr_lines,
            log_max_bytes=settings.log_max_bytes,
            log_backups=settings.log_backups,
            resources=lambda name: self.resources.latest_target(name),
        )
        self.resources = ResourceMonitor.for_targets(
            settings,
            self.bus,
            self.targets,
            targets=self.supervisor.running_pids,
            restart=self.supervisor.restart,
            clock=self.clock,
        )
        self.alerts = AlertService(
            settings,
            self.store,
            self.bus,
            clock=self.clock,
            snapshot=self._host_resources,
        )
        self.status_server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def status_url(self) -> str | None:
        return None if self.status_server is None else str(self.status_server.url)

    async def start(self) -> None:
        # Alerting first: its commit hook must see the very first event.
        await self.alerts.start()
        if self.settings.status_enabled:
            from watchdog.api import StatusServer

            self.status_server = StatusServer(
                self.settings,
                source=self.supervisor,
                store=self.store,
                bus=self.bus,
                alert_stats=self.alerts.stats,
                probe_sample_interval=None,  # every probe is handed over below
                host_resources=self._host_resources,  # the resource monitor's latest sample
            )
            self.supervisor.add_probe_listener(self.status_server.metrics.observe_probe)
            await self.status_server.start()
            log.info("status page on %s", self.status_server.url)
        await self.bus.publish(
            Event.of(
                SYSTEM_TARGET,
                Kind.WATCHDOG_STARTED,
                f"erpwatch {__version__} started, supervising "
                + ", ".join(t.name for t in self.targets),
                targets=[t.name for t in self.targets],
            )
        )
        await self.supervisor.start()
        # Everything built so far lives as long as erpwatch: keep the cyclic GC from
        # re-scanning it in every full collection (a pause that delays probes at scale).
        gc.freeze()
        self._tasks.append(asyncio.create_task(self._rotate_logs(), name="log-rotation"))
        self._tasks.append(asyncio.create_task(self.resources.run(), name="resources"))
        sdnotify.ready(f"supervising {len(self.targets)} target(s)")
        interval = sdnotify.watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._ping_systemd(interval), name="sd-ping"))

    async def stop(self) -> None:
        sdnotify.stopping("stopping targets")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.supervisor.stop()
        with contextlib.suppress(RuntimeError):
            await self.bus.publish(
                Event.of(SYSTEM_TARGET, Kind.WATCHDOG_STOPPED, "erpwatch stopped")
            )
        if self.status_server is not None:
            await self.status_server.stop()
        await self.alerts.stop()
        await self.bus.close()
        self.store.close()

    def _host_resources(self) -> dict[str, Any]:
        return self.resources.latest_host() or host_snapshot(default_paths(self.settings))

    async def _rotate_logs(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            await asyncio.to_thread(self._rotate_all_logs)

    def _rotate_all_logs(self) -> None:
        for monitor in self.supervisor.monitors.values():
            try:
                monitor.process.rotate_logs()
            except OSError:
                log.exception("%s: log rotation failed", monitor.name)

    async def _ping_systemd(self, interval: float) -> None:
        while True:
            sdnotify.watchdog_ping()
            await asyncio.sleep(interval)


async def serve(watchdog: Watchdog, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set; always stop the targets, even when start-up failed."""
    try:
        await watchdog.start()
        await stop.wait()
    finally:
        log.info("stopping")
        await watchdog.stop()


def use_pidfd_child_watcher() -> None:
    """On Python 3.11 asyncio waits for each child in a thread of its own; with a pidfd the
    loop itself sees the exit (no thread per target). 3.12+ does this by default."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # kernel older than 5.3: keep the threaded watcher
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.get_event_loop_policy().set_child_watcher(watcher)


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


def run_service(settings: Settings, targets: Sequence[TargetConfig]) -> None:
    """Log, supervise ``targets`` until SIGINT/SIGTERM, stop them, return."""
    setup_logging(settings)

    async def main() -> None:
        use_pidfd_child_watcher()
        stop = asyncio.Event()
        install_stop_signals(stop)
        await serve(Watchdog(settings, targets), stop)

    asyncio.run(main())


def run_command(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"debug": True} if args.debug else {}
    settings = load_settings(**overrides)
    targets = select_targets(settings.targets_resolved(), args.only, args.exclude)
    chosen = {target.name for target in targets}
    checks = [r for r in preflight.fast_checks(settings) if r.target in (None, *chosen)]
    if not preflight.passed(checks):
        failed = [r for r in checks if not r.ok and not r.superseded]
        print(preflight.format_results(failed), file=sys.stderr)
        print("erpwatch: not starting (see `erpwatch check`)", file=sys.stderr)
        return EXIT_PREFLIGHT
    run_service(settings, targets)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="supervise the configured targets in the foreground (Ctrl+C stops)"
    )
    parser.add_argument("--debug", action="store_true", help="detailed debug output")
    parser.add_argument(
        "--only", action="append", default=[], metavar="TARGET", help="supervise only these"
    )
    parser.add_argument(
        "--except",
        dest="exclude",
        action="append",
        default=[],
        metavar="TARGET",
        help="supervise all but these",
    )
    parser.set_defaults(handler=run_command)
