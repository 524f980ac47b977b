"""The control API's body limit (`MAX_BODY`) is enforced before the body is read: a declared
Content-Length above it is refused at once, and a body without one (chunked) is read only
until it passes the limit. Real server on 127.0.0.1, raw sockets as the client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.watchdog.test_api import FakeSource
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.control import Peer
from watchdog.control_api import MAX_BODY
from watchdog.store import EventStore

TOKEN = "control-body-token"
PATH = "/api/targets/backend/restart"


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Mapping[str, Any]] = []

    async def __call__(self, request: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        self.requests.append(request)
        return {"ok": True}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[int, Recorder]]:
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store)
    control = Recorder()
    server = StatusServer(
        load_settings(status_port=0, log_path=tmp_path / "logs", status_token=TOKEN),
        source=FakeSource(),
        store=store,
        bus=bus,
        probe_sample_interval=None,
        control=control,
    )
    await server.start()
    try:
        yield server.port, control
    finally:
        await server.stop()
        await bus.close()
        store.close()


def head(extra: str) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def status_line(reader: asyncio.StreamReader) -> bytes:
    """The answer's status line; the deadline is a failure, not a measurement."""
    async with asyncio.timeout(10):
        return await reader.readline()


async def test_declared_length_above_the_limit_is_413_before_the_body(
    served: tuple[int, Recorder],
) -> None:
    port, control = served
    async with connection(port) as (reader, writer):
        writer.write(head(f"Content-Length: {10**9}\r\n") + b'{"reason": ')
        await writer.drain()
        line = await status_line(reader)  # answered with 10**9 - 11 bytes never sent
    assert line.startswith(b"HTTP/1.1 413"), line
    assert control.requests == []


async def test_chunked_body_is_read_only_until_it_passes_the_limit(
    served: tuple[int, Recorder],
) -> None:
    port, control = served
    async with connection(port) as (reader, writer):
        writer.write(head("Transfer-Encoding: chunked\r\n"))
        chunk = b" " * 4096
        for _ in range(MAX_BODY // len(chunk) + 2):  # just past the limit, never ended
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()
        line = await status_line(reader)
    assert line.startswith(b"HTTP/1.1 413"), line
    assert control.requests == []


async def test_body_within_the_limit_still_carries_the_reason(
    served: tuple[int, Recorder],
) -> None:
    port, control = served
    body = json.dumps({"reason": "deploy 2.3.1", "pad": " " * (MAX_BODY - 100)}).encode()
    assert len(body) <= MAX_BODY
    async with connection(port) as (reader, writer):
        writer.write(head(f"Content-Length: {len(body)}\r\nConnection: close\r\n") + body)
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert control.requests == [
        {"command": "restart", "targets": ["backend"], "reason": "deploy 2.3.1"}
    ]
