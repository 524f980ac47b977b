"""The control socket serves at most `MAX_CLIENTS` connections at once: a flood of clients
that connect and send nothing cannot exhaust erpwatch's descriptors (EMFILE makes its own
workers fail, the systemd ping is withheld and systemd restarts erpwatch and its targets).
One past the bound is answered "busy" and closed at once. Real Unix socket."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import await_until
from watchdog import control
from watchdog.control import ControlServer, Peer


async def handler(request: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
    return {"ok": True, "results": []}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_clients_past_the_bound_are_answered_busy_and_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "READ_TIMEOUT", 600.0)  # idle clients stay for the test
    server = ControlServer(tmp_path / "erpwatch.sock", handler)
    await server.start()
    base = open_fds()
    idle = []
    try:
        for _ in range(control.MAX_CLIENTS):
            idle.append(await asyncio.open_unix_connection(str(server.path)))
        extra = []
        for _ in range(100):
            extra.append(await asyncio.open_unix_connection(str(server.path)))
        # Before: each extra one waited for a line (READ_TIMEOUT) and held a descriptor.
        for reader, _ in extra:
            answer = json.loads(await asyncio.wait_for(reader.readline(), 30))
            assert answer["ok"] is False and "busy" in answer["error"]
            assert await asyncio.wait_for(reader.read(), 30) == b""
        # The client's ends of every connection, and the server's of the bounded ones only.
        assert open_fds() <= base + len(idle) * 2 + len(extra) + 5
        for _, writer in extra:
            writer.close()
        # A client is served again as soon as one of the held ones goes.
        idle.pop()[1].close()

        async def served() -> bool:
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            writer.write(b'{"command": "start"}\n')
            answer = json.loads(await asyncio.wait_for(reader.readline(), 30))
            writer.close()
            return bool(answer["ok"])

        await await_until(served, what="a request served again")
    finally:
        for _, writer in idle:
            writer.close()
        await server.stop()
