"""The control socket over a real Unix socket."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from watchdog.control import ControlError, ControlServer, NotRunning, Peer, call


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[Mapping[str, Any], Peer]] = []

    async def __call__(self, request: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        self.requests.append((request, peer))
        return {"ok": True, "results": [{"target": "backend", "ok": True, "message": "done"}]}


async def test_request_and_answer_with_the_peer_as_actor(tmp_path: Path) -> None:
    handler = Recorder()
    server = ControlServer(tmp_path / "erpwatch.sock", handler)
    await server.start()
    try:
        answer = await asyncio.to_thread(
            call, server.path, {"command": "restart", "targets": ["backend"], "reason": "x"}
        )
        assert answer["ok"] and answer["results"][0]["message"] == "done"
        request, peer = handler.requests[0]
        assert request == {"command": "restart", "targets": ["backend"], "reason": "x"}
        assert peer.pid == os.getpid()
        assert peer.actor == f"operator ({pwd.getpwuid(os.getuid()).pw_name})"
    finally:
        await server.stop()
    assert not server.path.exists()


async def test_socket_is_created_owner_only(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "erpwatch.sock", Recorder())
    await server.start()
    try:
        mode = server.path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        await server.stop()


async def test_a_stale_socket_from_a_killed_run_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "erpwatch.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed run leaves
    server = ControlServer(path, Recorder())
    await server.start()
    try:
        answer = await asyncio.to_thread(call, path, {"command": "start"})
        assert answer["ok"]
    finally:
        await server.stop()


async def test_a_live_socket_of_another_erpwatch_is_not_stolen(tmp_path: Path) -> None:
    first = ControlServer(tmp_path / "erpwatch.sock", Recorder())
    await first.start()
    try:
        with pytest.raises(ControlError, match="another erpwatch is running"):
            await ControlServer(first.path, Recorder()).start()
        assert (await asyncio.to_thread(call, first.path, {"command": "stop"}))["ok"]
    finally:
        await first.stop()


async def test_a_regular_file_in_the_way_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "erpwatch.sock"
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        await ControlServer(path, Recorder()).start()
    assert path.read_text() == "not a socket"


async def test_bad_requests_get_a_reason_and_reach_no_handler(tmp_path: Path) -> None:
    handler = Recorder()
    server = ControlServer(tmp_path / "erpwatch.sock", handler)
    await server.start()
    try:
        bad = await asyncio.to_thread(call, server.path, {"command": "rm -rf"})
        assert not bad["ok"] and "unknown command" in bad["error"]
        bad = await asyncio.to_thread(call, server.path, {"command": "stop", "targets": "x"})
        assert not bad["ok"] and "targets" in bad["error"]
        assert handler.requests == []
    finally:
        await server.stop()


def test_no_erpwatch_running(tmp_path: Path) -> None:
    with pytest.raises(NotRunning):
        call(tmp_path / "erpwatch.sock", {"command": "start"})


async def test_a_path_longer_than_af_unix_allows_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = ControlServer(deep / "erpwatch.sock", Recorder())
    await server.start()
    try:
        assert len(str(server.path)) > 108
        assert (await asyncio.to_thread(call, server.path, {"command": "start"}))["ok"]
    finally:
        await server.stop()
    assert not server.path.exists()
