from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import await_until
from watchdog import sdnotify
from watchdog.clock import FakeClock


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, {"NOTIFY_SOCKET": str(path)}
    sock.close()


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_unset_socket_is_a_noop() -> None:
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.ready(env={}) is False
    assert sdnotify.watchdog_interval(env={}) is None


def test_messages_reach_the_socket(listener: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = listener
    assert sdnotify.ready("supervising\n2 targets", env=env)
    assert _received(sock) == "READY=1\nSTATUS=supervising 2 targets"
    assert sdnotify.status("backend healthy", env=env)
    assert _received(sock) == "STATUS=backend healthy"
    assert sdnotify.watchdog_ping(env=env)
    assert _received(sock) == "WATCHDOG=1"
    assert sdnotify.stopping(env=env)
    assert _received(sock) == "STOPPING=1"


def test_process_environment_is_the_default(
    listener: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = listener
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert sdnotify.notify("READY=1")
    assert _received(sock) == "READY=1"


def test_abstract_namespace_socket() -> None:
    name = f"erpwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sdnotify.ready(env={"NOTIFY_SOCKET": "@" + name})
        assert _received(sock) == "READY=1"


def test_missing_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert sdnotify.watchdog_timeout(env={"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval(env={"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(env=mine) == 1.0
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_interval(env=other) is None
    assert sdnotify.watchdog_interval(env={"WATCHDOG_USEC": "soon"}) is None
    assert sdnotify.watchdog_interval(env={"WATCHDOG_USEC": "0"}) is None


async def test_keepalive_pings_each_interval(
    listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = listener
    sock.setblocking(False)
    env = {**env, "WATCHDOG_USEC": "10000000"}
    clock = FakeClock()
    healthy = [True]
    asked: list[bool] = []

    def alive() -> bool:
        asked.append(healthy[0])
        return healthy[0]

    task = asyncio.create_task(sdnotify.keepalive(clock, alive=alive, env=env))
    pings: list[str] = []

    def drain() -> int:
        while True:
            try:
                pings.append(sock.recv(4096).decode())
            except BlockingIOError:
                return len(pings)

    await await_until(lambda: drain() == 1, what="first ping")
    clock.advance(5.0)
    await await_until(lambda: drain() == 2, what="second ping after half the timeout")
    healthy[0] = False
    clock.advance(5.0)
    await await_until(lambda: len(asked) == 3, what="third liveness question")
    assert drain() == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pings == ["WATCHDOG=1", "WATCHDOG=1"]


def _drainer(sock: socket.socket, pings: list[str]) -> Callable[[], int]:
    sock.setblocking(False)

    def drain() -> int:
        while True:
            try:
                pings.append(sock.recv(4096).decode())
            except BlockingIOError:
                return len(pings)

    return drain


async def test_keepalive_withholds_while_unhealthy_and_rechecks_soon(
    listener: tuple[socket.socket, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="watchdog.sdnotify")
    sock, env = listener
    env = {**env, "WATCHDOG_USEC": "10000000"}  # ping every 5 s, recheck every 0.5 s
    clock = FakeClock()
    problem: list[str | None] = ["a task is dead"]
    asked = 0

    def alive() -> bool:
        nonlocal asked
        asked += 1
        return problem[0] is None

    pings: list[str] = []
    drain = _drainer(sock, pings)
    task = asyncio.create_task(sdnotify.keepalive(clock, alive=alive, env=env))
    await await_until(lambda: asked == 1, what="first question")
    clock.advance(0.4)
    await asyncio.sleep(0)
    assert asked == 1
    clock.advance(0.1)
    await await_until(lambda: asked == 2, what="recheck after a tenth of the interval")
    assert drain() == 0
    problem[0] = None
    clock.advance(0.5)
    await await_until(lambda: drain() == 1, what="ping as soon as healthy again")
    clock.advance(4.9)
    await asyncio.sleep(0)
    assert asked == 3 and drain() == 1  # healthy: back to the full interval
    clock.advance(0.1)
    await await_until(lambda: drain() == 2, what="next ping one interval later")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    warnings = [r for r in caplog.records if "withholding" in r.getMessage()]
    assert len(warnings) == 1  # logged when it starts, not at every recheck
    assert any("resuming" in r.getMessage() for r in caplog.records)


async def test_keepalive_counts_a_raising_check_as_failed(
    listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = listener
    env = {**env, "WATCHDOG_USEC": "2000000"}
    clock = FakeClock()
    calls = 0

    def alive() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("health function broke")
        return True

    pings: list[str] = []
    drain = _drainer(sock, pings)
    task = asyncio.create_task(sdnotify.keepalive(clock, alive=alive, env=env, recheck=0.2))
    await await_until(lambda: calls == 1, what="first question")
    assert not task.done() and drain() == 0
    clock.advance(0.2)
    await await_until(lambda: drain() == 1, what="ping after the recheck")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_keepalive_returns_when_watchdog_disabled() -> None:
    await asyncio.wait_for(sdnotify.keepalive(FakeClock(), env={}), timeout=1)


def test_unit_file_matches_the_notify_protocol() -> None:
    unit = Path(__file__).parents[2] / "deploy" / "erpwatch.service"
    values: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert values["Type"] == "notify"
    assert values["NotifyAccess"] == "main"
    assert values["WatchdogSec"] == "30"
    assert values["Restart"] == "on-failure"
    assert values["KillMode"] == "mixed"
    assert values["ExecStart"].endswith("erpwatch run")
    # erpwatch reads its env file itself, so that a reload (SIGHUP) re-reads it.
    assert values["Environment"].startswith("ERPWATCH_ENV_FILE=")
    assert values["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert values["LimitNOFILE"] == "65536"
    assert values.get("User", "root") != "root"
    from watchdog.settings import Settings

    default_stop = Settings().stop_timeout
    assert float(values["TimeoutStopSec"]) > 2 * default_stop
