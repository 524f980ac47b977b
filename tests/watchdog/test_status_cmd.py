"""``erpwatch status`` as a real command: from the running API, else from the event log; the
page's state names, relative times, colour on a terminal, and systemctl-like exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import await_until, free_port
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.cli import main
from watchdog.config import load_settings
from watchdog.events import SYSTEM_TARGET, Event, Kind
from watchdog.favicon import tone
from watchdog.monitor import TargetStatus
from watchdog.settings import Settings
from watchdog.states import TargetState
from watchdog.status_cmd import (
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_UNKNOWN,
    Painter,
    api_base_url,
    exit_code,
    format_api,
    format_duration,
    format_span,
    read_status,
    relative,
    state_style,
    use_colour,
)
from watchdog.store import EventStore

TOKEN = "status-cmd-token"
ESC = "\x1b["
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class Result:
    code: int
    out: str
    err: str


def _env(env: Mapping[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ERPWATCH_", "NO_COLOR"))}
    return {**base, "TERM": "xterm", **env}


async def erpwatch(args: Sequence[str], env: Mapping[str, str]) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watchdog.cli",
        *args,
        env=_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def erpwatch_on_pty(args: Sequence[str], env: Mapping[str, str]) -> Result:
    """Run the command with its stdout on a pseudo-terminal (isatty() is true there)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchdog.cli", *args],
        env=_env(env),
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(30)
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    return Result(code, b"".join(chunks).decode().replace("\r\n", "\n"), err)


def status(
    name: str,
    state: TargetState,
    *,
    held: Mapping[str, str] | None = None,
    uptime: float | None = None,
    last_event: Event | None = None,
) -> TargetStatus:
    return TargetStatus(
        name=name,
        state=state,
        pid=4242 if state.running else None,
        uptime=uptime,
        restarts_in_window=5 if state is TargetState.FAILED else 0,
        restarts_total=5 if state is TargetState.FAILED else 0,
        health_url=None,
        last_probe=None,
        last_event=last_event,
        held=held,
    )


@dataclass
class Source:
    """The supervisor's statuses, set by the test."""

    targets: list[TargetStatus] = field(default_factory=list)

    def statuses(self) -> Sequence[TargetStatus]:
        return list(self.targets)


@dataclass
class Running:
    env: dict[str, str]
    settings: Settings
    source: Source
    last_event: Event


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """A real status server (the one `erpwatch run` embeds) on 127.0.0.1, with a token."""
    port = free_port()
    db = tmp_path / "events.db"
    store = EventStore(db)
    bus = EventBus(store)
    last = await bus.publish(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up after 5"))
    settings = load_settings(status_port=port, status_token=TOKEN, db_path=db)
    source = Source([status("backend", TargetState.FAILED, last_event=last)])
    server = StatusServer(settings, source=source, store=store, bus=bus)
    await server.start()
    env = {
        "ERPWATCH_STATUS_PORT": str(port),
        "ERPWATCH_STATUS_TOKEN": TOKEN,
        "ERPWATCH_DB_PATH": str(db),
    }
    try:
        yield Running(env, settings, source, last)
    finally:
        await server.stop()
        await bus.close()
        store.close()


# --- from the status API ------------------------------------------------------------------


async def test_a_down_target_exits_3_with_the_page_label(running: Running) -> None:
    result = await erpwatch(["status"], running.env)
    assert result.code == EXIT_NOT_RUNNING, result.err
    head, *rest = result.out.splitlines()
    assert "is running" in head and "1 of 1 target not running as they should: backend" in head
    line = next(line for line in rest if line.startswith("backend"))
    assert "Down: restart limit reached" in line and "failed" not in line.split("  ")[1]
    assert "5/5" in line and "restart-limit-reached: gave up" in line
    assert "just now restart-limit-reached" in line or "s ago restart-limit-reached" in line
    assert ESC not in result.out  # not a terminal


async def test_healthy_and_held_targets_exit_0(running: Running) -> None:
    running.source.targets = [
        status("backend", TargetState.HEALTHY, uptime=2 * 3600 + 3 * 60 + 7),
        status("worker", TargetState.DEGRADED, uptime=59),
        status(
            "reports",
            TargetState.STOPPED,
            held={"actor": "operator (alice)", "reason": "upgrade", "since": ""},
        ),
    ]
    result = await erpwatch(["status"], running.env)
    assert result.code == EXIT_OK, result.out + result.err
    lines = {line.split()[0]: line for line in result.out.splitlines()[1:]}
    assert "3 targets, all as they should be" in result.out.splitlines()[0]
    assert "Healthy" in lines["backend"] and "up 2h 3m" in lines["backend"]
    assert "Degraded" in lines["worker"] and "up 59s" in lines["worker"]
    assert "Stopped by operator (alice): upgrade" in lines["reports"]


BOB = {"actor": "operator (bob)", "reason": ""}
# What each state means for the exit code, read from the real server's documents.
STATE_EXITS = [
    (TargetState.HEALTHY, None, EXIT_OK, "Healthy"),
    (TargetState.DEGRADED, None, EXIT_OK, "Degraded"),
    (TargetState.STOPPED, BOB, EXIT_OK, "Stopped by operator (bob)"),
    (TargetState.STARTING, None, EXIT_NOT_RUNNING, "Starting"),  # like systemd's activating
    (TargetState.UNHEALTHY, None, EXIT_NOT_RUNNING, "Unhealthy"),
    (TargetState.RESTARTING, None, EXIT_NOT_RUNNING, "Restarting"),
    (TargetState.FAILED, None, EXIT_NOT_RUNNING, "Down: restart limit reached"),
    (TargetState.STOPPED, None, EXIT_NOT_RUNNING, "Stopped"),  # erpwatch stopping it
]


async def test_each_state_maps_to_its_exit_code(running: Running) -> None:
    for state, held, expected, label in STATE_EXITS:
        running.source.targets = [status("backend", state, held=held)]
        document = await asyncio.to_thread(read_status, running.settings, 5.0)
        assert document["source"] == "api"
        assert (document["targets"][0]["label"], exit_code(document)) == (label, expected), state
    # one target not as it should be is enough
    running.source.targets = [
        status("backend", TargetState.HEALTHY),
        status("worker", TargetState.STARTING),
    ]
    result = await erpwatch(["status", "--json"], running.env)
    assert result.code == EXIT_NOT_RUNNING
    assert [t["state"] for t in json.loads(result.out)["targets"]] == ["healthy", "starting"]


async def test_status_from_api_json(running: Running) -> None:
    result = await erpwatch(["status", "--json"], running.env)
    assert result.code == EXIT_NOT_RUNNING, result.err
    document = json.loads(result.out)
    assert document["source"] == "api"
    (target,) = document["targets"]
    assert target["state"] == "failed" and target["colour"] == "red"
    assert target["label"] == "Down: restart limit reached"
    assert target["last_event"]["id"] == running.last_event.id
    assert TOKEN not in result.out and ESC not in result.out


async def test_wrong_token_cannot_read_the_state(running: Running) -> None:
    result = await erpwatch(["status"], {**running.env, "ERPWATCH_STATUS_TOKEN": "wrong"})
    assert result.code == EXIT_UNKNOWN
    assert "token was refused" in result.err and len(result.err.strip().splitlines()) == 1
    assert result.out == ""


class _Serve(http.server.BaseHTTPRequestHandler):
    """A stand-in status server: answers every GET with the class's status and body."""

    code = 200
    body = b""

    def do_GET(self) -> None:
        self.send_response(self.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(code: int, body: bytes) -> Iterator[int]:
    handler = type("Handler", (_Serve,), {"code": code, "body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_misdirected_421_cannot_read_the_state(tmp_path: Path) -> None:
    with serving(421, b"") as port:
        env = {"ERPWATCH_STATUS_PORT": str(port), "ERPWATCH_DB_PATH": str(tmp_path / "none.db")}
        result = await erpwatch(["status"], env)
    assert result.code == EXIT_UNKNOWN
    assert "does not answer to this host name" in result.err
    assert len(result.err.strip().splitlines()) == 1


async def test_not_a_status_document_cannot_read_the_state(tmp_path: Path) -> None:
    with serving(200, b"<html>hello</html>") as port:
        env = {"ERPWATCH_STATUS_PORT": str(port), "ERPWATCH_DB_PATH": str(tmp_path / "none.db")}
        result = await erpwatch(["status", "--json"], env)
    assert result.code == EXIT_UNKNOWN and result.out == ""
    assert "not an erpwatch status document" in result.err


async def test_a_server_that_never_answers_cannot_read_the_state(tmp_path: Path) -> None:
    """Connected (the kernel completes the handshake for a listening socket) but no reply:
    a hung erpwatch. That is "unknown" (4), not "not running"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        env = {
            "ERPWATCH_STATUS_PORT": str(listener.getsockname()[1]),
            "ERPWATCH_DB_PATH": str(tmp_path / "none.db"),
        }
        result = await erpwatch(["status", "--timeout", "0.3"], env)
    assert result.code == EXIT_UNKNOWN
    assert "no answer within 0.3 s" in result.err and len(result.err.strip().splitlines()) == 1


def contract_document() -> dict[str, Any]:
    """A /status document with the issue 13 fields (down_since, cause, next_retry_at)."""

    def iso(moment: datetime) -> str:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return {
        "generated_at": iso(NOW),
        "erpwatch": {"version": "9.9", "pid": 100, "uptime": 3 * 86400 + 7200},
        "targets": [
            {
                "name": "backend",
                "state": "failed",
                "colour": "red",
                "label": "Down: restart limit reached",
                "pid": None,
                "uptime": None,
                "restarts_in_window": 5,
                "restarts_total": 7,
                "last_probe": {
                    "status": "failed",
                    "latency": None,
                    "answered": False,
                    "reason": "connection refused",
                    "age_s": 4.2,
                },
                "last_event": {
                    "ts": iso(NOW - timedelta(minutes=5)),
                    "kind": "restart-limit-reached",
                    "message": "gave up after 5 restarts",
                },
                "held": None,
                "down_since": iso(NOW - timedelta(minutes=5, seconds=20)),
                "cause": {
                    "summary": "exit code 1: ConnectionError: could not connect to postgres",
                    "kind": "crash",
                },
                "next_retry_at": iso(NOW + timedelta(minutes=4, seconds=10)),
            },
            {
                "name": "worker",
                "state": "healthy",
                "colour": "green",
                "label": "Healthy",
                "pid": 4243,
                "uptime": 2 * 3600 + 3 * 60,
                "restarts_in_window": 0,
                "restarts_total": 0,
                "last_probe": {"status": "ok", "latency": 0.012, "age_s": 4.0},
                "last_event": None,
                "held": None,
                "down_since": None,
                "cause": None,
                "next_retry_at": None,
            },
        ],
    }


def test_format_api_reads_at_a_glance() -> None:
    text = format_api(contract_document(), now=NOW)
    head, header, backend, why, retry, worker = text.splitlines()
    assert head == (
        "erpwatch 9.9 is running (pid 100, up 3d 2h); "
        "1 of 2 targets not running as they should: backend"
    )
    assert header.split() == ["TARGET", "STATE", "PID", "UP/DOWN", "RESTARTS", "LAST", "PROBE",
                              "LAST", "EVENT"]  # fmt: skip
    assert "Down: restart limit reached" in backend and "down 5m" in backend
    assert "5/7" in backend and "failed 4s ago" in backend
    assert "5m ago restart-limit-reached: gave up after 5 restarts" in backend
    assert why.strip() == "why: exit code 1: ConnectionError: could not connect to postgres"
    assert retry.strip() == "next retry in 4m"
    assert "up 2h 3m" in worker and "12 ms 4s ago" in worker and "Healthy" in worker
    # the columns line up: every row's state starts where the header's does
    column = header.index("STATE")
    assert backend[column:].startswith("Down") and worker[column:].startswith("Healthy")


def test_format_api_says_what_is_wrong_with_erpwatch_itself() -> None:
    """What /health answers 503 for (a failing store, a stalled monitor) is the second line,
    in red: the targets' table alone would show a sound erpwatch."""
    document = contract_document()
    problem = "degraded: event store failing (database is locked)"
    document["erpwatch"]["problem"] = problem
    lines = format_api(document, now=NOW, colour=True).splitlines()
    assert lines[1] == f"\x1b[31merpwatch itself: {problem}\x1b[0m"
    assert "erpwatch itself" not in format_api(contract_document(), now=NOW)


async def test_contract_fields_from_a_status_server(tmp_path: Path) -> None:
    body = json.dumps(contract_document()).encode()
    with serving(200, body) as port:
        env = {"ERPWATCH_STATUS_PORT": str(port), "ERPWATCH_DB_PATH": str(tmp_path / "none.db")}
        result = await erpwatch(["status", "--color=always"], env)
        as_json = await erpwatch(["status", "--json"], env)
    assert result.code == as_json.code == EXIT_NOT_RUNNING, result.err
    assert f"{ESC}31mDown: restart limit reached{ESC}0m" in result.out
    assert f"{ESC}32mHealthy{ESC}0m" in result.out
    assert "down 5m" in result.out and "why: exit code 1" in result.out
    assert json.loads(as_json.out)["targets"][0]["next_retry_at"].endswith("Z")


# --- from the event log (erpwatch not running) ------------------------------------------


@pytest.fixture
def recorded(tmp_path: Path) -> dict[str, str]:
    db = tmp_path / "events.db"
    held = {"actor": "operator (alice)", "reason": "upgrade", "since": "2026-12-01T10:00:00+00:00"}
    with EventStore(db) as store:
        store.append(Event.of("backend", Kind.CRASHED, "exit code 1"))
        store.append(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up"))
        store.append(Event.of("backend", Kind.RESOURCE_WARNING, "rss high"))
        store.append(Event.of("worker", Kind.HEALTHY, "answers"))
        store.append(Event.of("reports", Kind.STOPPED, "stopped by alice", held=held))
        store.append(Event.of("mailer", Kind.HEALTHY, "answers"))
        store.append(Event.of("mailer", Kind.STOPPED, "stopped"))  # with erpwatch
        store.append(Event.of(SYSTEM_TARGET, Kind.WATCHDOG_STOPPED, "stopped"))
    return {
        "ERPWATCH_DB_PATH": str(db),
        "ERPWATCH_STATUS_PORT": str(free_port()),  # nothing listens there
        "ERPWATCH_COMMAND": "sleep 1000",
        "ERPWATCH_TARGET_NAME": "idle",
    }


async def test_status_from_store_when_not_running(recorded: dict[str, str]) -> None:
    result = await erpwatch(["status"], recorded)
    assert result.code == EXIT_NOT_RUNNING, result.err
    first, second, *rest = result.out.splitlines()
    assert first.startswith("erpwatch is not running; last known states from the event log")
    assert second.startswith("erpwatch's last event: ") and "watchdog-stopped" in second
    lines = {line.split()[0]: line for line in rest[1:]}
    assert set(lines) == {"idle", "backend", "worker", "reports", "mailer"}
    # the state comes from the last state-bearing event, not from the resource warning
    assert "Down: restart limit reached" in lines["backend"]
    assert "resource-warning: rss high" in lines["backend"]
    assert "Healthy" in lines["worker"]
    assert "Stopped by operator (alice): upgrade" in lines["reports"]
    assert lines["idle"].split()[1] == "Unknown"
    assert "Stopped (was Healthy)" in lines["mailer"]  # what it was when erpwatch stopped
    assert " ago " in lines["worker"] or "just now" in lines["worker"]


async def test_status_from_store_json(recorded: dict[str, str]) -> None:
    result = await erpwatch(["status", "--json"], recorded)
    assert result.code == EXIT_NOT_RUNNING, result.err
    document = json.loads(result.out)
    assert document["source"] == "store" and document["erpwatch_running"] is False
    labels = {t["name"]: (t["state"], t["label"], t["was"]) for t in document["targets"]}
    assert labels == {
        "idle": ("unknown", "Unknown", None),
        "backend": ("failed", "Down: restart limit reached", None),
        "worker": ("healthy", "Healthy", None),
        "reports": ("stopped", "Stopped by operator (alice): upgrade", None),
        "mailer": ("stopped", "Stopped", "Healthy"),
    }


async def test_api_off_but_erpwatch_running_judges_the_last_states(tmp_path: Path) -> None:
    """Without a status API, the control socket tells whether erpwatch runs."""
    db, sock_path = tmp_path / "events.db", tmp_path / "erpwatch.sock"
    with EventStore(db) as store:
        store.append(Event.of("backend", Kind.HEALTHY, "answers"))
    env = {
        "ERPWATCH_DB_PATH": str(db),
        "ERPWATCH_STATUS_ENABLED": "false",
        "ERPWATCH_CONTROL_SOCKET": str(sock_path),
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock_path))
        listener.listen(4)
        result = await erpwatch(["status"], env)
    assert result.code == EXIT_OK, result.out + result.err
    assert result.out.startswith("erpwatch is running, but its status API is off")
    sock_path.unlink()  # nothing listens any more
    result = await erpwatch(["status"], env)
    assert result.code == EXIT_NOT_RUNNING
    assert result.out.startswith("erpwatch is not running")


# --- the state cannot be read: 4 --------------------------------------------------------


async def test_without_api_or_database(tmp_path: Path) -> None:
    env = {"ERPWATCH_DB_PATH": str(tmp_path / "none.db"), "ERPWATCH_STATUS_PORT": str(free_port())}
    result = await erpwatch(["status"], env)
    assert result.code == EXIT_UNKNOWN
    assert "not running" in result.err and "no event log" in result.err
    assert "none.db" in result.err and len(result.err.strip().splitlines()) == 1


async def test_corrupt_database(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    db.write_bytes(b"this is not sqlite" * 100)
    env = {"ERPWATCH_DB_PATH": str(db), "ERPWATCH_STATUS_PORT": str(free_port())}
    result = await erpwatch(["status", "--json"], env)
    assert result.code == EXIT_UNKNOWN and result.out == ""
    assert "cannot be read" in result.err and len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err


# Python itself lives under /root here (mode 0700), so nobody cannot start it: the process
# starts as root, imports the command, then becomes nobody before running it.
AS_NOBODY = """
import os, sys
import encodings.idna  # lazily imported by getaddrinfo
import shutil, gettext  # argparse imports these lazily
import watchdog.cli, watchdog.commands, watchdog.status_cmd
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(watchdog.cli.main(["status"]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_permission_denied(tmp_path: Path) -> None:
    # outside tmp_path: nobody must reach the directory (pytest's base is mode 0700)
    where = Path(tempfile.mkdtemp(prefix="erpwatch-status-"))
    try:
        where.chmod(0o755)
        db = where / "events.db"
        with EventStore(db) as store:
            store.append(Event.of("backend", Kind.HEALTHY, "answers"))
        db.chmod(0o600)
        done = subprocess.run(
            [sys.executable, "-c", AS_NOBODY],
            env=_env({"ERPWATCH_DB_PATH": str(db), "ERPWATCH_STATUS_PORT": str(free_port())}),
            cwd=where,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        shutil.rmtree(where)
    assert done.returncode == EXIT_UNKNOWN, done.stdout + done.stderr
    assert "cannot be read" in done.stderr and "ermission denied" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- colour -------------------------------------------------------------------------------


def test_colour_on_a_terminal_unless_no_color(recorded: dict[str, str]) -> None:
    on_tty = erpwatch_on_pty(["status"], recorded)
    assert on_tty.code == EXIT_NOT_RUNNING, on_tty.err
    assert f"{ESC}31mDown: restart limit reached{ESC}0m" in on_tty.out
    assert f"{ESC}32mHealthy{ESC}0m" in on_tty.out
    assert f"{ESC}2mStopped by operator (alice): upgrade{ESC}0m" in on_tty.out
    for quiet in (
        erpwatch_on_pty(["status"], {**recorded, "NO_COLOR": "1"}),
        erpwatch_on_pty(["status", "--no-color"], recorded),
        erpwatch_on_pty(["status", "--color=never"], recorded),
        erpwatch_on_pty(["status"], {**recorded, "TERM": "dumb"}),
        erpwatch_on_pty(["status", "--json"], recorded),
    ):
        assert quiet.code == EXIT_NOT_RUNNING and "Down: restart limit reached" in quiet.out
        assert ESC not in quiet.out


async def test_colour_always_through_a_pipe(recorded: dict[str, str]) -> None:
    forced = await erpwatch(["status", "--color=always"], {**recorded, "NO_COLOR": "1"})
    assert f"{ESC}31mDown: restart limit reached{ESC}0m" in forced.out
    piped = await erpwatch(["status"], recorded)
    assert ESC not in piped.out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_use_colour() -> None:
    tty, pipe = _Tty(), io.StringIO()
    assert use_colour("auto", tty, {}) and not use_colour("auto", pipe, {})
    assert not use_colour("auto", tty, {"NO_COLOR": "1"})
    assert use_colour("auto", tty, {"NO_COLOR": ""})  # no-color.org: only a non-empty value
    assert not use_colour("auto", tty, {"TERM": "dumb"})
    assert use_colour("always", pipe, {"NO_COLOR": "1"}) and not use_colour("never", tty, {})


@pytest.mark.parametrize("state", list(TargetState))
def test_every_state_colour_has_a_terminal_style_the_pages_tone(state: TargetState) -> None:
    """The CLI paints what `/status` says: a stopped target grey (dim), never red."""
    style = state_style({"state": str(state), "colour": state.colour})
    painted = Painter(True)("x", style)
    expected = {"ok": "32", "warn": "33", "bad": "31", "off": "2"}[tone(state)]
    assert painted == f"{ESC}{expected}mx{ESC}0m"


# --- relative times (pure) --------------------------------------------------------------


def test_format_span() -> None:
    assert format_span(0) == "0s" and format_span(4.9) == "4s" and format_span(-3) == "0s"
    assert format_span(59) == "59s" and format_span(60) == "1m" and format_span(5 * 60 + 59) == "5m"
    assert format_span(2 * 3600 + 3 * 60 + 59) == "2h 3m" and format_span(7200) == "2h"
    assert format_span(3 * 86400 + 4 * 3600) == "3d 4h" and format_span(86400) == "1d"


def test_relative() -> None:
    assert relative(NOW - timedelta(seconds=4), NOW) == "4s ago"
    assert relative("2026-12-01T09:57:00.000Z", NOW) == "2h 3m ago"
    assert relative("2026-12-01T12:05:00+00:00", NOW) == "in 5m"
    assert relative(NOW - timedelta(milliseconds=300), NOW) == "just now"
    assert relative(None, NOW) == relative("not a time", NOW) == "-"


# --- the command line ---------------------------------------------------------------------


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "exit status" in text and "activating" in text and "NO_COLOR" in text
    assert "--no-color" in text and "--color" in text


def test_api_base_url_maps_wildcards_to_loopback() -> None:
    assert api_base_url(load_settings(status_port=1)) == "http://127.0.0.1:1"
    assert api_base_url(load_settings(status_host="0.0.0.0", status_port=2)) == "http://127.0.0.1:2"
    assert api_base_url(load_settings(status_host="::", status_port=3)) == "http://[::1]:3"


def test_format_duration() -> None:
    """The page's duration filter (`watchdog.api`) keeps its form."""
    assert format_duration(None) == "-"
    assert format_duration(5.9) == "5s"
    assert format_duration(65) == "1m 05s"
    assert format_duration(3 * 3600 + 60) == "3h 01m"
    assert format_duration(2 * 86400 + 7200) == "2d 2h"


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "1e9"])
async def test_absurd_timeout_is_a_usage_error(tmp_path: Path, value: str) -> None:
    env = {"ERPWATCH_DB_PATH": str(tmp_path / "none.db"), "ERPWATCH_STATUS_PORT": str(free_port())}
    result = await erpwatch(["status", "--timeout", value], env)
    assert result.code == 2
    assert "argument --timeout" in result.err and "Traceback" not in result.err


# --- with a real `erpwatch run` -----------------------------------------------------------


async def test_with_a_real_erpwatch_run(tmp_path: Path) -> None:
    status_port, backend_port = free_port(), free_port()
    env = {
        "ERPWATCH_LOG_PATH": str(tmp_path / "logs"),
        "ERPWATCH_DB_PATH": str(tmp_path / "events.db"),
        "ERPWATCH_CHECK_INTERVAL": "0.05",
        "ERPWATCH_STATUS_PORT": str(status_port),
        "ERPWATCH_TARGETS__BACKEND__COMMAND": (
            f"{sys.executable} -m watchdog.demo.backend --port {backend_port}"
        ),
        "ERPWATCH_TARGETS__BACKEND__HEALTH_URL": f"http://127.0.0.1:{backend_port}/health",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watchdog.cli",
        "run",
        env=_env(env),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:

        async def healthy() -> Any:
            shown = await erpwatch(["status"], env)
            # starting (3), or not serving yet: no API, maybe no event log yet either (4)
            assert shown.code in (EXIT_OK, EXIT_NOT_RUNNING, EXIT_UNKNOWN), shown.out + shown.err
            return shown if shown.code == EXIT_OK else None

        up = await await_until(healthy, timeout=60, interval=0.1, what="status says healthy")
        line = next(line for line in up.out.splitlines() if line.startswith("backend"))
        assert "Healthy" in line and " up " in line, up.out
        assert "healthy" in line.split("  ")[-1]  # the last event, "just now" or "1s ago"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)
    assert proc.returncode == 0
    gone = await erpwatch(["status"], env)
    assert gone.code == EXIT_NOT_RUNNING, gone.err
    assert gone.out.startswith("erpwatch is not running")
    assert "watchdog-stopped" in gone.out.splitlines()[1]
    line = next(line for line in gone.out.splitlines() if line.startswith("backend"))
    assert "Stopped (was Healthy)" in line
