"""The one place that wires erpwatch together, and the ``erpwatch run`` command.

Start order: store → bus → alerting (its cursor is set before the first event) → status
server → monitors → erpwatch's own workers. Stop order is the reverse, so every ``stopped``
event is recorded and every subscriber has seen it before the store closes.

erpwatch's own long-lived workers (log rotation, the resource sampler, the systemd keepalive,
and the supervisor's monitors) run under one `TaskSupervisor`, ``Watchdog.tasks``: a worker
that raises is logged once, recorded as a critical ``watchdog-fault`` event and restarted with
backoff. `Watchdog.health_problem` names a dead worker or a stalled monitor; ``/health`` answers
503 with it and the systemd watchdog ping is withheld while it is not None.

Signals: SIGINT/SIGTERM stop; SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored (never fatal);
SIGPIPE is ignored (a closed pipe is an OSError where it happens).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import resource
import signal
import sqlite3
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alerting.service import AlertService
from watchdog import __version__, heap, preflight, reaper, sdnotify
from watchdog.bus import EventBus
from watchdog.clock import Clock, RealClock
from watchdog.config_reader import read_settings
from watchdog.control import ControlError, ControlServer, Peer
from watchdog.errors import ConfigError
from watchdog.events import SYSTEM_TARGET, Event, Kind
from watchdog.leftovers import ChildLedger, Cleanup, LedgerHooks, clean_up
from watchdog.logs import add_secrets, flush_repeats, setup_logging
from watchdog.resources import ResourceMonitor, default_paths, host_snapshot
from watchdog.settings import Settings, TargetConfig, status_bind_problem
from watchdog.store import EventStore, StoreError
from watchdog.supervisor import Supervisor, UnknownTarget
from watchdog.tasks import TaskSupervisor

log = logging.getLogger("erpwatch")

EXIT_PREFLIGHT = 1
LOG_ROTATION_INTERVAL = 5.0
# Bounds of a watchdog-fault event's details.
FAULT_ERROR_MAX = 500
FAULT_TRACEBACK_LINES = 20
FAULT_TRACEBACK_LINE_MAX = 300
HEALTH_NAMES_MAX = 20  # names listed in a health problem; the rest are counted
# erpwatch's own workers on `Watchdog.tasks`, stopped before the targets.
WORKERS = ("log-rotation", "resources", "systemd-keepalive", "retention")
RETENTION_INTERVAL = 3600.0
CONFIG_RELOADED = Kind.CONFIG_RELOADED
CONFIG_REJECTED = Kind.CONFIG_REJECTED
LEFTOVER_STOPPED = Kind.LEFTOVER_STOPPED


def select_targets(
    configs: Sequence[TargetConfig], only: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[TargetConfig]:
    """Apply ``--only``/``--except``; naming an unknown target is a configuration error."""
    if not configs:
        raise ConfigError(
            "no target configured: set ERPWATCH_COMMAND (and ERPWATCH_HEALTH_URL) or "
            "ERPWATCH_TARGETS__<NAME>__COMMAND"
        )
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
        dataclasses.replace(c, after=tuple(d for d in c.after if d in chosen_names)) for c in chosen
    ]


class Watchdog:
    """The assembled service: `start()`, wait for a stop request, `stop()`."""

    def __init__(
        self,
        settings: Settings,
        targets: Sequence[TargetConfig],
        *,
        clock: Clock | None = None,
        only: Sequence[str] = (),
        exclude: Sequence[str] = (),
        overrides: Mapping[str, Any] | None = None,
        leftovers: Sequence[Cleanup] = (),
    ) -> None:
        if not targets:
            raise ConfigError(
                "nothing to supervise: set ERPWATCH_COMMAND (and ERPWATCH_HEALTH_URL) or "
                "ERPWATCH_TARGETS__<NAME>__COMMAND"
            )
        self.settings = settings
        self.targets = list(targets)
        self.clock = clock or RealClock()
        # What a reload re-applies: the run's --only/--except and command-line overrides.
        self._only, self._exclude = tuple(only), tuple(exclude)
        self._overrides = dict(overrides or {})
        self._leftovers = list(leftovers)
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[Any]] = set()
        self._stopping = False  # set by `stop`: a reload then changes nothing
        self.store = EventStore(settings.event_db_path)
        self.bus = EventBus(self.store)
        self.ledger = ChildLedger(self.store)
        self.control = ControlServer(settings.control_socket_path, self._control)
        # One supervisor of erpwatch's own tasks: the monitors run on it too.
        self.tasks = TaskSupervisor(clock=self.clock, on_fault=self._report_fault)
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
            tasks=self.tasks,
            ledger=LedgerHooks(
                self.ledger, self.bus.run_in_writer, {t.name: t.argv for t in self.targets}
            ),
            instance=settings.instance_id,
        )
        self.resources = ResourceMonitor.for_targets(
            settings,
            self.bus,
            self.targets,
            targets=self.supervisor.running_pids,
            clock=self.clock,
        )
        self.alerts = AlertService(
            settings,
            self.store,
            self.bus,
            clock=self.clock,
            snapshot=self._host_resources,
            tasks=self.tasks,
        )
        self.status_server: Any = None

    @property
    def status_url(self) -> str | None:
        return None if self.status_server is None else str(self.status_server.url)

    async def start(self) -> None:
        # The control socket first: a live one means another erpwatch runs this config.
        try:
            await self.control.start()
        except ControlError as exc:
            raise StartupError(str(exc)) from None
        await self.bus.run_in_writer(self.ledger.ensure_schema)
        # Alerting next: its durable cursor is set before the very first event.
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
                health=self.health_problem,  # erpwatch's own workers and monitors
                tasks=self.tasks,
                control=self._control,  # only with ERPWATCH_STATUS_TOKEN (control_api)
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
        for cleanup in self._leftovers:
            await self._record_leftover(cleanup)
        await self.supervisor.start()
        # Everything built so far lives as long as erpwatch: keep the cyclic GC from
        # re-scanning it in every full collection (a pause that delays probes at scale).
        gc.freeze()
        log_rotation, resources, keepalive, retention = WORKERS
        self.tasks.spawn(log_rotation, self._rotate_logs)
        self.tasks.spawn(resources, self.resources.run)
        days = self.settings.retention_days
        self.tasks.spawn(retention, lambda: self.bus.retention_worker(days, RETENTION_INTERVAL))
        sdnotify.ready(f"supervising {len(self.targets)} target(s)")
        # Returns at once outside systemd (no WATCHDOG_USEC): a normal end, not a fault.
        self.tasks.spawn(keepalive, lambda: sdnotify.keepalive(self.clock, alive=self.alive))

    async def stop(self) -> None:
        """Stop everything that runs, each step even when an earlier one failed; the
        ``watchdog-stopped`` event is recorded after the targets have stopped."""
        sdnotify.stopping("stopping targets")
        self._stopping = True
        await self._attempt("closing the control socket", self.control.stop())
        for task in list(self._reloads):
            task.cancel()
        # A reload still running (from the control socket or the API) finishes first: it
        # could otherwise start a target after the targets were stopped (an orphan).
        await self._attempt("waiting for a reload", self._reload_lock.acquire())
        self._reload_lock.release()
        for name in WORKERS:
            await self._attempt(f"stopping {name}", self.tasks.cancel(name))
        await self._attempt("stopping the targets", self.supervisor.stop())
        await self._attempt("ending adopted strays", self._end_strays())
        await self._attempt("stopping erpwatch's tasks", self.tasks.stop())
        await self._attempt(
            "recording watchdog-stopped",
            self.bus.publish(Event.of(SYSTEM_TARGET, Kind.WATCHDOG_STOPPED, "erpwatch stopped")),
        )
        if self.status_server is not None:
            await self._attempt("stopping the status server", self.status_server.stop())
        await self._attempt("stopping alerting", self.alerts.stop())
        await self._attempt("closing the event bus", self.bus.close())
        try:
            self.store.close()
        except Exception:
            log.exception("closing the event store failed")

    async def _end_strays(self) -> None:
        """What escaped a target without its marker dies with erpwatch, not after it."""
        if not reaper.is_subreaper():
            return
        grace = max(self.settings.stop_timeout, 1.0)
        ended = await asyncio.to_thread(reaper.end_strays, grace)
        if ended:
            log.warning(
                "ended %d process(es) a target left without its ERPWATCH_TARGET marker: %s",
                len(ended),
                ", ".join(map(str, ended)),
            )

    @staticmethod
    async def _attempt(what: str, step: Awaitable[Any]) -> None:
        try:
            await step
        except Exception:
            log.exception("%s failed; stopping the rest", what)

    # -- operating it while it runs ---------------------------------------------------------

    async def _control(self, request: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        """A request from the control socket (or the API): restart / stop / start / reload."""
        command = str(request["command"])
        if command == "reload":
            return await self.reload(actor=peer.actor)
        try:
            results = await self.supervisor.operate(
                command,
                list(request.get("targets", [])),
                reason=str(request.get("reason", "")),
                actor=peer.actor,
            )
        except UnknownTarget as exc:
            return {"ok": False, "error": str(exc.args[0])}
        return {"ok": all(r.ok for r in results), "results": [r.to_dict() for r in results]}

    def request_reload(self, actor: str = "SIGHUP") -> None:
        """SIGHUP: reload in the background (a signal handler must not wait)."""
        if actor == "SIGHUP":
            log.info("SIGHUP received: reloading the configuration")
        task = asyncio.get_running_loop().create_task(self.reload(actor=actor))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self, *, actor: str = "operator") -> dict[str, Any]:
        """Re-read the env file on top of the environment erpwatch was started with, all
        validated first: an invalid one changes nothing (``config-rejected``). Then start
        added targets, stop removed ones, restart those whose process changed, apply
        changed supervision settings in place (``config-reloaded`` lists what changed)."""
        async with self._reload_lock:
            if self._stopping:
                return {"ok": False, "error": "erpwatch is stopping: nothing reloaded"}
            try:
                settings = (await asyncio.to_thread(read_settings, self._overrides)).settings
                add_secrets(settings.secret_values())  # before anything logs about them
                targets = select_targets(settings.targets_resolved(), self._only, self._exclude)
            except ConfigError as exc:
                message = f"configuration rejected, nothing changed: {exc}"
                log.error("reload by %s: %s", actor, message)
                await self._publish(CONFIG_REJECTED, message, actor=actor, error=str(exc))
                return {"ok": False, "error": message}
            try:
                report = await self.supervisor.reload(targets)
            except ValueError as exc:
                message = f"configuration rejected, nothing changed: {exc}"
                await self._publish(CONFIG_REJECTED, message, actor=actor, error=str(exc))
                return {"ok": False, "error": message}
            changed = _changed_settings(self.settings, settings)
            needs_restart = sorted(set(changed) & _RESTART_ONLY_SETTINGS)
            self.settings = settings
            self.targets = list(targets)
            await self.alerts.apply_settings(settings)
            self.resources.apply_settings(settings, self.targets)
            message = f"configuration reloaded: {report.describe()}"
            if changed:
                message += f"; settings changed: {', '.join(changed)}"
            if needs_restart:
                message += f" (take effect at erpwatch's next start: {', '.join(needs_restart)})"
            log.info("reload by %s: %s", actor, message)
            await self._publish(
                CONFIG_RELOADED, message, actor=actor, settings_changed=changed, **report.to_dict()
            )
            heap.trim()  # what the old settings and the answer's unpickling freed
            return {"ok": True, "message": message, "changes": report.to_dict()}

    async def _publish(self, kind: str, message: str, **details: Any) -> None:
        try:
            await self.bus.publish(Event.of(SYSTEM_TARGET, kind, message, **details))
        except Exception as exc:
            log.warning("could not record %s: %r", kind, exc)

    async def _record_leftover(self, cleanup: Cleanup) -> None:
        if cleanup.found:
            log.warning("%s", cleanup.describe())
            await self._publish(
                LEFTOVER_STOPPED,
                cleanup.describe() + " (left running when the previous erpwatch died)",
                target_name=cleanup.target,
                pids=list(cleanup.killed),
                escalated=cleanup.escalated,
            )

    # -- erpwatch's own health ------------------------------------------------------------

    def health_problem(self, *, store: bool = True) -> str | None:
        """None when erpwatch itself is sound, else what is wrong, naming the worker(s): a
        worker waiting for its restart after a fault, a monitor that missed its ticks."""
        problems: list[str] = []
        dead = self.tasks.dead()
        if dead:
            problems.append("failed, restarting: " + _names(dead))
        dead_monitors = {name.removeprefix("monitor:") for name in dead}
        stalled = self.supervisor.stalled(self.clock.now())
        names = [name for name in stalled if name not in dead_monitors]
        if names:
            problems.append("stalled: " + _names(names))
        blind = self.supervisor.blind()
        if blind:
            problems.append("health checks cannot be made: " + ", ".join(blind))
        trouble = self.bus.store_problem() if store else None
        if trouble:
            problems.append(f"degraded: {trouble}")
        server = self.status_server.own_problem() if self.status_server is not None else None
        if server:
            problems.append(server)
        return "; ".join(problems) or None

    def alive(self) -> bool:
        """The systemd keepalive's question: ping only while nothing is wrong."""
        # A failing store degrades /health but must not make systemd restart erpwatch: a
        # restart frees no disk space and would interrupt the supervision that still works.
        return self.health_problem(store=False) is None

    async def _report_fault(self, name: str, exc: BaseException) -> None:
        """`TaskSupervisor` ``on_fault``: record a critical ``watchdog-fault`` event (the
        traceback was logged already; a failure to record is logged, never raised)."""
        error = repr(exc)[:FAULT_ERROR_MAX]
        lines = "".join(traceback.format_exception(exc)).splitlines()[-FAULT_TRACEBACK_LINES:]
        tail = "\n".join(line[:FAULT_TRACEBACK_LINE_MAX] for line in lines)
        try:
            await self.bus.publish(
                Event.of(
                    SYSTEM_TARGET,
                    Kind.WATCHDOG_FAULT,
                    f"{name} failed: {error}; restarting",
                    worker=name,
                    error=error,
                    traceback=tail,
                )
            )
        except Exception as publish_error:
            log.warning("could not record the fault of %s: %r", name, publish_error)

    def _host_resources(self) -> dict[str, Any]:
        return self.resources.latest_host() or host_snapshot(default_paths(self.settings))

    async def _rotate_logs(self) -> None:
        while True:
            await self.clock.sleep(LOG_ROTATION_INTERVAL)
            flush_repeats()  # summaries of suppressed repeats whose window has ended
            await asyncio.to_thread(self._rotate_all_logs)
            await self.control.ensure_bound()  # e.g. after rm -rf LOG_PATH

    def _rotate_all_logs(self) -> None:
        for monitor in self.supervisor.monitors.values():
            try:
                monitor.process.rotate_logs()
            except OSError:
                log.exception("%s: log rotation failed", monitor.name)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:HEALTH_NAMES_MAX])
    more = len(names) - HEALTH_NAMES_MAX
    return f"{shown} and {more} more" if more > 0 else shown


async def serve(watchdog: Watchdog, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set; always stop the targets and record ``watchdog-stopped``,
    also when start-up or the wait failed (the error is logged, then raised)."""
    try:
        await watchdog.start()
        await stop.wait()
    except Exception as exc:
        log.error("erpwatch failed: %r; stopping the targets", exc)
        raise
    finally:
        log.info("stopping")
        await watchdog.stop()
        flush_repeats(force=True)


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


def on_sighup() -> None:
    """SIGHUP without a running `Watchdog` to reload: never stops erpwatch."""
    log.warning("SIGHUP received: nothing to reload yet; ignoring")


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    log.info("%s received; stopping", signal.Signals(signum).name)
    stop.set()


def _ignore(signum: int) -> None:
    log.info("%s received; erpwatch does not use it; ignoring", signal.Signals(signum).name)


def install_stop_signals(stop: asyncio.Event, *, hup: Callable[[], None] = on_sighup) -> None:
    """SIGINT/SIGTERM set ``stop``; SIGHUP calls ``hup``; SIGUSR1/SIGUSR2 are logged;
    SIGPIPE is ignored. Call from the main thread, in the running loop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _request_stop, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, hup)
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(signum, _ignore, signum)
    # Python ignores it already; say so here. Children get the default back (restore_signals).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


class StartupError(Exception):
    """erpwatch cannot start (the event database, the status port): one line for people."""


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every target, probe, log file and
    status connection costs descriptors, and EMFILE must not be what stops the watching.
    Returns (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if hard == resource.RLIM_INFINITY:  # Linux refuses an infinite soft limit: use nr_open
        try:
            wanted = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            wanted = soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


def run_service(
    settings: Settings,
    targets: Sequence[TargetConfig],
    *,
    warnings: Sequence[str] = (),
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    leftovers: Sequence[Cleanup] = (),
) -> None:
    """Log, supervise ``targets`` until SIGINT/SIGTERM, stop them, return. ``warnings``
    (unknown variables) are logged first. `StartupError` when the event database cannot be
    opened or the status server cannot listen."""
    before, now, hard = raise_open_file_limit()  # before anything opens a descriptor
    heap.one_arena()  # before any thread starts
    setup_logging(settings)
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    if now != before:
        log.info("open-file limit raised from %d to %d (hard limit %s)", before, now, hard_text)
    else:
        log.info("open-file limit %d (hard limit %s)", now, hard_text)
    for warning in warnings:
        log.warning("%s", warning)

    async def main() -> None:
        from watchdog.api import StatusBindError

        use_pidfd_child_watcher()
        stop = asyncio.Event()
        try:
            watchdog = Watchdog(
                settings,
                targets,
                only=only,
                exclude=exclude,
                overrides=overrides,
                leftovers=leftovers,
            )
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        except sqlite3.Error as exc:  # e.g. the path is a directory
            path = settings.event_db_path
            raise StartupError(f"cannot use {path} as the event database: {exc}") from None
        install_stop_signals(stop, hup=watchdog.request_reload)
        # Only `erpwatch run` becomes a subreaper: double-forked daemons of a target are
        # re-parented here, stay findable by their marker and are ended with the target.
        if reaper.become_subreaper():
            watchdog.tasks.spawn("stray-reaper", reaper.run)  # ended by tasks.stop(), last
        else:
            log.warning("not a child subreaper: a target's double-forked daemons may escape")
        try:
            await serve(watchdog, stop)
        except StatusBindError as exc:
            raise StartupError(_bind_failure(settings, exc)) from None

    asyncio.run(main())


def _bind_failure(settings: Settings, exc: OSError) -> str:
    host, port = preflight.status_address(settings)
    holder = preflight.find_port_holder(host, port) if port else None
    text = exc.strerror or str(exc)
    return text + (f" (held by {holder.describe()})" if holder is not None else "")


def end_leftovers(settings: Settings) -> list[Cleanup]:
    """End what the previous run's children left (see `watchdog.leftovers`); never fatal."""
    path = settings.event_db_path
    if not path.is_file():
        return []
    try:
        store = EventStore(path)
    except Exception as exc:  # the pre-flight check reports an unusable database
        log.debug("leftovers: cannot open %s: %s", path, exc)
        return []
    try:
        ledger = ChildLedger(store)
        records = ledger.records()
        grace = max(settings.stop_timeout, 1.0)
        instance = settings.instance_id
        results = clean_up(records, grace, marker=lambda target: f"{target}@{instance}")
        for record in records:
            ledger.forget(record.target)
    except Exception as exc:
        print(
            f"erpwatch: warning: could not end the previous run's children: {exc}", file=sys.stderr
        )
        return []
    finally:
        store.close()
    for cleanup in results:
        if cleanup.found:
            print(f"erpwatch: {cleanup.describe()}", file=sys.stderr)
    return results


# Settings a reload cannot apply to a running erpwatch (its sockets, files, logging).
_RESTART_ONLY_SETTINGS = frozenset(
    {
        "log_path",
        "db_path",
        "control_socket",
        "status_enabled",
        "status_host",
        "status_port",
        "status_token",
        "status_max_connections",
        "status_allowed_hosts",
        "log_format",
        "log_max_bytes",
        "log_backups",
        "debug",
    }
)
_PER_TARGET = frozenset({"command", "health_url", "workdir", "targets", "env", "target_name"})


def _changed_settings(old: Settings, new: Settings) -> list[str]:
    """The names (never the values: some are secrets) of global settings that changed."""
    return sorted(
        f"ERPWATCH_{item.name.upper()}"
        for item in dataclasses.fields(new)
        if item.name not in _PER_TARGET and getattr(old, item.name) != getattr(new, item.name)
    )


def _print_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"erpwatch: warning: {warning}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"debug": True} if args.debug else {}
    answer = read_settings(overrides)  # validated in a child: no pydantic in the daemon
    settings, warnings = answer.settings, answer.warnings
    try:
        targets = select_targets(settings.targets_resolved(), args.only, args.exclude)
        problem = status_bind_problem(settings)
        if problem is not None:
            raise ConfigError(problem)
    except ConfigError:
        _print_warnings(warnings)  # a typo may well be why (ERPWATCH_COMAND)
        raise
    # A previous erpwatch killed hard left its children running (holding the ports the
    # checks below look at): end them first, verified by start time, never a stranger.
    leftovers = end_leftovers(settings)
    chosen = {target.name for target in targets}
    checks = [r for r in preflight.fast_checks(settings) if r.target in (None, *chosen)]
    if not preflight.passed(checks):
        _print_warnings(warnings)
        failed = [r for r in checks if not r.ok and not r.superseded]
        print(preflight.format_results(failed), file=sys.stderr)
        print("erpwatch: not starting (see `erpwatch check`)", file=sys.stderr)
        return EXIT_PREFLIGHT
    try:
        run_service(
            settings,
            targets,
            warnings=warnings,
            only=args.only,
            exclude=args.exclude,
            overrides=overrides,
            leftovers=leftovers,
        )
    except StartupError as exc:
        print(f"erpwatch: not starting: {exc}", file=sys.stderr)
        return EXIT_PREFLIGHT
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
