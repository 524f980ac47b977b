"""The control socket's file deleted while erpwatch runs (``rm -rf LOG_PATH``, where it lives
by default): ``erpwatch ctl`` found nothing until erpwatch restarted. erpwatch now binds it
again (`ControlServer.ensure_bound`, every few seconds from the log-rotation worker); a file
something else put at the path is left alone. Real Unix sockets in a temp dir."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.watchdog.test_control import Recorder
from watchdog.control import ControlServer, NotRunning, call

RELOAD = {"command": "reload"}


async def test_a_deleted_socket_is_bound_again(tmp_path: Path) -> None:
    handler = Recorder()
    server = ControlServer(tmp_path / "logs" / "erpwatch.sock", handler)
    await server.start()
    try:
        assert not await server.ensure_bound()  # there: nothing to do
        shutil.rmtree(tmp_path / "logs")
        with pytest.raises(NotRunning):
            await asyncio.to_thread(call, server.path, RELOAD)

        assert await server.ensure_bound()
        answer = await asyncio.to_thread(call, server.path, RELOAD)
        assert answer["ok"] and [r["command"] for r, _peer in handler.requests] == ["reload"]
    finally:
        await server.stop()
    assert not server.path.exists()


async def test_something_else_at_the_path_is_left_alone(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "erpwatch.sock", Recorder())
    await server.start()
    try:
        server.path.unlink()
        server.path.write_text("not ours")
        assert not await server.ensure_bound()
        assert server.path.read_text() == "not ours"
    finally:
        await server.stop()
    assert server.path.read_text() == "not ours"  # stop() removes only its own socket
