"""``erpwatch status`` as a real command: from the running API, else from the event log."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.config import Settings
from watchdog.events import SYSTEM_TARGET, Event, Kind
from watchdog.monitor import TargetStatus
from watchdog.states import TargetState
from watchdog.status_cmd import api_base_url, format_duration
from watchdog.store import EventStore

TOKEN = "status-cmd-token"


@dataclass
class Result:
    code: int
    out: str
    err: str


async def erpwatch(args: Sequence[str], env: dict[str, str]) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watchdog.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class Source:
    def __init__(self, last_event: Event) -> None:
        self.last_event = last_event

    def statuses(self) -> Sequence[TargetStatus]:
        return [
            TargetStatus(
                name="backend",
                state=TargetState.FAILED,
                pid=None,
                uptime=None,
                restarts_in_window=5,
                restarts_total=5,
                health_url=None,
                last_probe=None,
                last_event=self.last_event,
            )
        ]


@dataclass
class Running:
    env: dict[str, str]
    last_event: Event


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    port = free_port()
    db = tmp_path / "events.db"
    store = EventStore(db)
    bus = EventBus(store)
    last = await bus.publish(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up after 5"))
    settings = Settings(status_port=port, status_token=TOKEN, db_path=db)
    server = StatusServer(settings, source=Source(last), store=store, bus=bus)
    await server.start()
    env = {
        "ERPWATCH_STATUS_PORT": str(port),
        "ERPWATCH_STATUS_TOKEN": TOKEN,
        "ERPWATCH_DB_PATH": str(db),
    }
    try:
        yield Running(env, last)
    finally:
        await server.stop()
        await bus.close()
        store.close()


async def test_status_from_api(running: Running) -> None:
    result = await erpwatch(["status"], running.env)
    assert result.code == 0, result.err
    assert "from the status API" in result.out
    line = next(line for line in result.out.splitlines() if line.startswith("backend"))
    assert "failed" in line and "5/5" in line and "restart-limit-reached: gave up" in line


async def test_status_from_api_json(running: Running) -> None:
    result = await erpwatch(["status", "--json"], running.env)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["source"] == "api"
    (target,) = document["targets"]
    assert target["state"] == "failed" and target["colour"] == "red"
    assert target["last_event"]["id"] == running.last_event.id
    assert TOKEN not in result.out


async def test_status_wrong_token_is_an_error(running: Running) -> None:
    result = await erpwatch(["status"], {**running.env, "ERPWATCH_STATUS_TOKEN": "wrong"})
    assert result.code == 1
    assert "token was refused" in result.err


@pytest.fixture
def recorded(tmp_path: Path) -> dict[str, str]:
    db = tmp_path / "events.db"
    with EventStore(db) as store:
        store.append(Event.of("backend", Kind.CRASHED, "exit code 1"))
        store.append(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up"))
        store.append(Event.of("backend", Kind.RESOURCE_WARNING, "rss high"))
        store.append(Event.of("worker", Kind.HEALTHY, "answers"))
        store.append(Event.of(SYSTEM_TARGET, Kind.WATCHDOG_STOPPED, "stopped"))
    return {
        "ERPWATCH_DB_PATH": str(db),
        "ERPWATCH_STATUS_PORT": str(free_port()),  # nothing listens there
        "ERPWATCH_COMMAND": "sleep 1000",
        "ERPWATCH_TARGET_NAME": "idle",
    }


async def test_status_from_store_when_not_running(recorded: dict[str, str]) -> None:
    result = await erpwatch(["status"], recorded)
    assert result.code == 0, result.err
    assert "erpwatch is not running" in result.out
    assert "watchdog-stopped" in result.out
    lines = {line.split()[0]: line for line in result.out.splitlines()[3:]}
    assert set(lines) == {"idle", "backend", "worker"}
    # the state comes from the last state-bearing event, not from the resource warning
    assert lines["backend"].split()[1] == "failed"
    assert "resource-warning: rss high" in lines["backend"]
    assert lines["worker"].split()[1] == "healthy"
    assert lines["idle"].split()[1] == "unknown"


async def test_status_from_store_json(recorded: dict[str, str]) -> None:
    result = await erpwatch(["status", "--json"], recorded)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["source"] == "store"
    states = {t["name"]: t["state"] for t in document["targets"]}
    assert states == {"idle": "unknown", "backend": "failed", "worker": "healthy"}


async def test_status_without_api_or_database(tmp_path: Path) -> None:
    env = {"ERPWATCH_DB_PATH": str(tmp_path / "none.db"), "ERPWATCH_STATUS_PORT": str(free_port())}
    result = await erpwatch(["status"], env)
    assert result.code == 1
    assert "not running" in result.err and "none.db" in result.err


def test_api_base_url_maps_wildcards_to_loopback() -> None:
    assert api_base_url(Settings(status_port=1)) == "http://127.0.0.1:1"
    assert api_base_url(Settings(status_host="0.0.0.0", status_port=2)) == "http://127.0.0.1:2"
    assert api_base_url(Settings(status_host="::", status_port=3)) == "http://[::1]:3"


def test_format_duration() -> None:
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


class _Misdirected(http.server.BaseHTTPRequestHandler):
    """A server that answers every request 421, as erpwatch does to a foreign Host."""

    def do_GET(self) -> None:
        self.send_response(421)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_status_explains_a_misdirected_421(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misdirected)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "ERPWATCH_STATUS_PORT": str(server.server_address[1]),
            "ERPWATCH_DB_PATH": str(tmp_path / "none.db"),
        }
        result = await erpwatch(["status"], env)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.code == 1
    assert "does not answer to this host name" in result.err
    assert len(result.err.strip().splitlines()) == 1
