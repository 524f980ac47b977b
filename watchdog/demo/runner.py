"""``erpwatch demo``: the sample backend under supervision, with faults injected on a script.

Everything runs with short intervals in a scratch directory: a crash, a degraded spell, a
hang, a crash loop up to the restart limit (which mails an alert), the slow retry that brings
it back (and the recovery mail), then a clean stop and the recorded history.

The same events come in the same order on every run (`STORY`, checked by the tests). Each
step waits for the events it causes before the next one starts, faults that must not outlive
a process are switched over HTTP (the file switch persists across restarts), host resource
warnings are off (the host's load is not the demo's story), and every timer the story depends
on is far from every other: the healthy-reset is longer than the demo (backoff and crash
counts carry through), a hang is healthy again seconds before ``DOWN_AFTER``, and in the crash
loop the restart limit comes long before ``down``, ``down`` long before the group wait's
mail, and that mail long before the slow retry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from watchdog.app import Watchdog, install_stop_signals, use_pidfd_child_watcher
from watchdog.config import load_settings
from watchdog.events import Event
from watchdog.history import format_table
from watchdog.settings import Settings

COLOURS = {"info": "\033[32m", "warning": "\033[33m", "critical": "\033[31m"}
RESET = "\033[0m"

# The demo's event kinds, in order, on every run.
STORY: tuple[str, ...] = (
    "watchdog-started",
    "started",
    "healthy",
    # a crash: restarted at once (the first restart after a healthy stretch)
    "crashed",
    "restarted",
    "healthy",
    # the database check fails, then the backend is slow: degraded, never restarted
    "degraded",
    "healthy",
    "degraded",
    "healthy",
    # a hang: SIGTERM ignored, SIGKILL, healthy again long before it would count as down
    "unhealthy",
    "restarted",
    "healthy",
    # a crash loop up to the restart limit; down; one DOWN mail after the group wait
    "crashed",
    "restarted",
    "crashed",
    "crash-loop",
    "restarted",
    "crashed",
    "restart-limit-reached",
    "down",
    "alert-sent",
    # the slow retry after the cause was fixed, and the recovery mail
    "restarted",
    "healthy",
    "alert-sent",
    "stopped",
    "watchdog-stopped",
)

SLOW_FAULT = "slow:0.8"  # well above DEGRADED_LATENCY (0.5 s), well below PROBE_TIMEOUT (1.5 s)
STEP_TIMEOUT = 20.0  # seconds a step may take before the demo gives up (normally 0.2-9 s)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_settings(workdir: Path, port: int, fault_file: Path) -> Settings:
    """Every setting the story depends on, pinned (an ``ERPWATCH_*`` variable or a ``.env``
    of the user's must not add a target, a receiver or a threshold to the demo)."""
    return load_settings(
        command=f"{sys.executable} -m watchdog.demo.erp_app --port {port} "
        f"--fault-file {fault_file}",
        health_url=f"http://127.0.0.1:{port}/status",
        target_name="backend",
        targets={},
        env={},
        workdir=None,
        log_path=workdir / "logs",
        db_path=workdir / "erpwatch.db",
        control_socket=None,
        check_interval=0.2,
        probe_timeout=1.5,
        timeout_threshold=1.7,
        degraded_latency=0.5,  # a busy machine answers slower than 0.25 s now and then
        startup_grace=5.0,
        stop_timeout=1.0,
        hang_stop_timeout=3.0,
        max_restarts=4,
        restart_window=60.0,
        restart_backoff=0.1,
        restart_backoff_max=0.5,
        healthy_reset=60.0,  # longer than the demo
        down_after=5.0,  # a hang is healthy again after ~3.3 s; the crash loop's limit: ~1.1 s
        limit_retry=7.0,  # after the DOWN mail (crash loop + 6 s)
        cpu_threshold=100.0,
        ram_threshold=100.0,
        disk_threshold=100.0,
        rss_limit_mb=None,
        restart_on_rss=False,
        smtp_host=None,
        alert_mail_dir=None,
        alert_template_dir=None,
        alert_to=["ops@example.invalid"],
        alert_on=["restart-limit-reached", "crash-loop", "down", "alert-failed", "watchdog-fault"],
        crash_loop_count=3,
        email_min_severity="info",
        alert_group_wait=6.0,  # the DOWN mail folds crash loop, restart limit and down
        alert_group_interval=300.0,
        alert_reminder_interval=0.0,
        alert_recovery_after=1.0,
        webhook_urls=[],
        alertmanager_url=[],
        hook_command=None,
        status_enabled=True,
        status_host="127.0.0.1",
        status_port=0,
    )


class Demo:
    def __init__(self, watchdog: Watchdog, port: int, fault_file: Path, color: bool) -> None:
        self.watchdog = watchdog
        self.port = port
        self.fault_file = fault_file
        self.color = color
        self.events: list[Event] = []
        self._arrived = asyncio.Condition()
        self._mark = 0  # events before this index belong to earlier steps
        self._started = time.monotonic()

    async def show(self, event: Event) -> None:
        self.events.append(event)
        elapsed = time.monotonic() - self._started
        severity = str(event.severity)
        label = f"{severity:<8}"
        if self.color:
            label = f"{COLOURS.get(severity, '')}{label}{RESET}"
        print(f"  {elapsed:6.2f}s  {label} {event.target:<9} {event.kind:<22} {event.message}")
        async with self._arrived:
            self._arrived.notify_all()

    def say(self, text: str) -> None:
        print(f"\n▶ {text}", flush=True)

    async def expect(self, *kinds: str, within: float = STEP_TIMEOUT) -> None:
        """Wait until ``kinds`` have arrived in this order after the previous step's."""
        for kind in kinds:

            def found(kind: str = kind) -> bool:
                return any(e.kind == kind for e in self.events[self._mark :])

            try:
                async with asyncio.timeout(within), self._arrived:
                    await self._arrived.wait_for(found)
            except TimeoutError:
                raise TimeoutError(
                    f"the demo expected a {kind!r} event within {within:g}s"
                ) from None
            self._mark = next(
                i + 1 for i in range(self._mark, len(self.events)) if self.events[i].kind == kind
            )

    async def step(self, text: str, action: Callable[[], Awaitable[None]], *kinds: str) -> None:
        self.say(text)
        await action()
        await self.expect(*kinds)

    async def fault(self, text: str) -> None:
        """Switch the fault file: it holds across restarts (the crash loop needs that)."""
        self.fault_file.write_text(text)

    async def post_fault(self, fault: str) -> None:
        """Switch a fault in the running backend only: its next start is clean."""
        async with httpx.AsyncClient(trust_env=False) as client:
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"http://127.0.0.1:{self.port}/fault/{fault}", timeout=2)

    async def script(self) -> None:
        await self.expect("started", "healthy")
        await self.step(
            "Injecting a crash (the backend exits with code 3)",
            lambda: self.post_fault("crash"),
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
            lambda: self.fault(SLOW_FAULT),
            "degraded",
        )
        await self.step("Back to normal", lambda: self.fault(""), "healthy")
        await self.step(
            "Injecting a hang: its event loop blocks, it ignores SIGTERM, SIGKILL follows",
            lambda: self.post_fault("hang"),
            "unhealthy",
            "restarted",
            "healthy",
        )
        await self.step(
            "Injecting a crash loop: every start dies",
            lambda: self.fault("crash"),
            "crashed",
            "crash-loop",
            "restart-limit-reached",
        )
        await self.step(
            "Fixing the cause; erpwatch keeps it down until its slow retry, and mails "
            "the people on call",
            lambda: self.fault(""),
            "down",
            "alert-sent",
        )
        self.say("The slow retry brings it back")
        await self.expect("restarted", "healthy")
        self.say("Waiting for the recovery mail")
        await self.expect("alert-sent")


async def _run_demo(workdir: Path, color: bool) -> int:
    port = _free_port()
    fault_file = workdir / "fault"
    settings = demo_settings(workdir, port, fault_file)
    watchdog = Watchdog(settings, settings.targets_resolved())
    demo = Demo(watchdog, port, fault_file, color)
    subscription = watchdog.bus.subscribe("demo", maxsize=10_000)

    async def printer() -> None:
        async for event in subscription:
            await demo.show(event)

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
    mails = mails_in_time_order(mail_dir)
    print(f"\nMails written (no SMTP server configured): {len(mails)} in {mail_dir}")
    for mail in mails:
        sent = mail_date(mail)
        when = sent.astimezone().strftime("%H:%M:%S") if sent else "--:--:--"
        print(f"  {when}  {mail.name}: {_header(mail, 'Subject')}")
    print(f"\nLogs and database kept in {workdir}")


def _header(mail: Path, name: str) -> str:
    prefix = f"{name}:"
    for line in mail.read_text(errors="replace").splitlines():
        if line.startswith(prefix):
            return line
        if not line:
            break  # end of the headers
    return ""


def mail_date(mail: Path) -> datetime | None:
    """The mail's Date header (None: missing or not a date)."""
    value = _header(mail, "Date").removeprefix("Date:").strip()
    try:
        return email.utils.parsedate_to_datetime(value) if value else None
    except ValueError:
        return None


def mails_in_time_order(mail_dir: Path) -> list[Path]:
    """The ``.eml`` files in the order they were written: by Date header, then (a Date has
    whole seconds) by modification time. Their names are random and say nothing of it."""
    if not mail_dir.is_dir():
        return []
    epoch = datetime.fromtimestamp(0, UTC)

    def key(mail: Path) -> tuple[datetime, int, str]:
        return (mail_date(mail) or epoch, mail.stat().st_mtime_ns, mail.name)

    return sorted(mail_dir.glob("*.eml"), key=key)


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
