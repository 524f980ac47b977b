"""``erpwatch demo``: the sample backend under supervision, with faults injected on a script.

Everything runs with short intervals in a scratch directory: a crash, a degraded spell, a
hang, a crash loop up to the restart limit (which mails an alert), the slow retry that brings
it back (and the recovery mail), then a clean stop and the recorded history.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from watchdog.app import Watchdog, install_stop_signals, use_pidfd_child_watcher
from watchdog.config import Settings, load_settings
from watchdog.events import Event
from watchdog.history import format_table

COLOURS = {"info": "\033[32m", "warning": "\033[33m", "critical": "\033[31m"}
RESET = "\033[0m"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_settings(workdir: Path, port: int, fault_file: Path) -> Settings:
    return load_settings(
        command=f"{sys.executable} -m watchdog.demo.erp_app --port {port} "
        f"--fault-file {fault_file}",
        health_url=f"http://127.0.0.1:{port}/status",
        target_name="backend",
        log_path=workdir / "logs",
        db_path=workdir / "erpwatch.db",
        check_interval=0.2,
        timeout_threshold=1.0,
        probe_timeout=0.8,
        degraded_latency=0.3,
        startup_grace=5.0,
        stop_timeout=1.0,
        max_restarts=4,
        restart_window=60.0,
        restart_backoff=0.2,
        restart_backoff_max=1.0,
        healthy_reset=2.0,
        limit_retry=3.0,
        down_after=2.0,
        smtp_host=None,
        alert_to=["ops@example.invalid"],
        alert_group_wait=1.5,
        alert_recovery_after=1.0,
        status_port=0,
    )


class Demo:
    def __init__(self, watchdog: Watchdog, port: int, fault_file: Path, color: bool) -> None:
        self.watchdog = watchdog
        self.port = port
        self.fault_file = fault_file
        self.color = color
        self.events: list[Event] = []
        self._started = time.monotonic()

    def show(self, event: Event) -> None:
        self.events.append(event)
        elapsed = time.monotonic() - self._started
        severity = str(event.severity)
        label = f"{severity:<8}"
        if self.color:
            label = f"{COLOURS.get(severity, '')}{label}{RESET}"
        print(f"  {elapsed:6.2f}s  {label} {event.target:<9} {event.kind:<22} {event.message}")

    def say(self, text: str) -> None:
        print(f"\n▶ {text}", flush=True)

    async def wait_for(self, kind: str, after: int, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while not any(e.kind == kind for e in self.events[after:]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo expected a {kind!r} event within {within:g}s")
            await asyncio.sleep(0.02)

    async def step(self, text: str, action: Callable[[], Awaitable[None]], *kinds: str) -> None:
        self.say(text)
        mark = len(self.events)
        await action()
        for kind in kinds:
            await self.wait_for(kind, mark)
            mark = next(i for i in range(mark, len(self.events)) if self.events[i].kind == kind)

    async def fault(self, text: str) -> None:
        self.fault_file.write_text(text)

    async def crash_over_http(self) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"http://127.0.0.1:{self.port}/fault/crash", timeout=2)

    async def script(self) -> None:
        await self.wait_for("healthy", 0)
        await self.step(
            "Injecting a crash (the backend exits with code 3)",
            self.crash_over_http,
            "crashed",
            "restarted",
            "healthy",
        )
        await self.step(
            "Its database check fails (/status says degraded): no restart",
            lambda: self.fault("degrade"),
            "degraded",
        )
        await self.step("Back to normal", lambda: self.fault(""), "healthy")
        await self.step(
            "Making it slow to answer: degraded again",
            lambda: self.fault("slow:0.5"),
            "degraded",
        )
        await self.step("Back to normal", lambda: self.fault(""), "healthy")
        await self.step(
            "Injecting a hang: its event loop blocks, it ignores SIGTERM, SIGKILL follows",
            lambda: self.fault("hang"),
            "unhealthy",
            "restarted",
        )
        await self.fault("")
        await self.wait_for("healthy", len(self.events) - 1)
        await self.step(
            "Injecting a crash loop: every start dies",
            lambda: self.fault("crash"),
            "crash-loop",
            "restart-limit-reached",
        )
        await self.step(
            "Fixing the cause; the slow retry brings it back", lambda: self.fault(""), "healthy"
        )
        self.say("Waiting for the recovery mail")
        with contextlib.suppress(TimeoutError):
            await self.wait_for("alert-sent", len(self.events) - 1, within=5.0)


async def _run_demo(workdir: Path, color: bool) -> int:
    port = _free_port()
    fault_file = workdir / "fault"
    settings = demo_settings(workdir, port, fault_file)
    watchdog = Watchdog(settings, settings.targets_resolved())
    demo = Demo(watchdog, port, fault_file, color)
    subscription = watchdog.bus.subscribe("demo", maxsize=10_000)

    async def printer() -> None:
        async for event in subscription:
            demo.show(event)

    stop = asyncio.Event()
    use_pidfd_child_watcher()
    install_stop_signals(stop)
    printing = asyncio.create_task(printer())
    ok = True
    try:
        await watchdog.start()
        if watchdog.status_url:
            print(f"Status page while the demo runs: {watchdog.status_url}")
        script = asyncio.create_task(demo.script())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({script, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not script.done():
            script.cancel()
            print("\ninterrupted")
        else:
            script.result()
    except TimeoutError as exc:
        ok = False
        print(f"\ndemo failed: {exc}", file=sys.stderr)
    finally:
        demo.say("Stopping erpwatch (SIGTERM to the process group, grace, SIGKILL)")
        await watchdog.stop()
        await printing
    _summary(settings, workdir)
    return 0 if ok else 1


def _summary(settings: Settings, workdir: Path) -> None:
    from watchdog.store import EventStore

    store = EventStore.open_readonly(settings.event_db_path)
    try:
        events = store.query(limit=None, newest_first=False)
    finally:
        store.close()
    print(f"\nHistory (erpwatch history --db {settings.event_db_path} --limit 0):\n")
    print(format_table(events))
    mail_dir = settings.alert_mail_dir or settings.log_path / "mail"
    mails = sorted(mail_dir.glob("*.eml")) if mail_dir.exists() else []
    print(f"\nMails written (no SMTP server configured): {len(mails)} in {mail_dir}")
    for mail in mails:
        subject = next(
            (
                line
                for line in mail.read_text(errors="replace").splitlines()
                if line.startswith("Subject:")
            ),
            "",
        )
        print(f"  {mail.name}: {subject}")
    print(f"\nLogs and database kept in {workdir}")


def demo_command(args: argparse.Namespace) -> int:
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="erpwatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    color = sys.stdout.isatty() and not args.no_color
    # The events are the demo's output; keep erpwatch's own log to errors only.
    logging.getLogger("watchdog").setLevel(logging.ERROR)
    logging.getLogger("alerting").setLevel(logging.ERROR)
    print(f"erpwatch demo: supervising a sample ERP backend, working in {workdir}")
    return asyncio.run(_run_demo(workdir, color))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="supervise a sample backend and inject a crash, a hang and a crash loop"
    )
    parser.add_argument("--dir", help="where to keep logs and the database (default: a temp dir)")
    parser.add_argument("--no-color", action="store_true", help="plain output")
    parser.set_defaults(handler=demo_command)
