"""Open SSE streams cannot lock ``/health`` out: at the connection limit with every
connection busy, the oldest ``/events`` stream is ended (EventSource reconnects and resumes
from its Last-Event-ID) to make room; only when no stream can go is one more refused with
503. Real server on 127.0.0.1, real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx

from tests.helpers import await_until
from tests.watchdog.test_api import close_env, make_env
from watchdog.events import Event, Kind

BIG = "x" * 40_000  # details of one event: 200 of them are an ~8 MB /api/history answer
STALLED_REQUEST = b"GET /api/history?limit=200 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 3


async def test_streams_at_the_limit_make_room_for_health(tmp_path: Path) -> None:
    e = await make_env(tmp_path, status_max_connections=3)
    try:
        # Three raw streams that never read (and never will): all connections busy.
        streams = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", e.server.port)
            writer.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
            streams.append((reader, writer))
        await await_until(lambda: e.server.hub.count == 3, what="three open streams")
        # Before: 503 "too many connections" for as long as the streams stayed open.
        response = await e.client.get("/health")
        assert response.status_code == 200
        # The oldest stream was the one ended.
        first = streams[0][0]
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(first.read(65536), 5):
                pass
        assert first.at_eof() or first.exception() is not None
        assert e.server.hub.count <= 2
    finally:
        for _, writer in streams:
            writer.close()
        await close_env(e)


def _has_data(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


async def test_when_no_connection_can_make_room_one_more_gets_503(tmp_path: Path) -> None:
    """Busy connections that are no stream (here: answers their clients do not read) are
    not ended to make room."""
    e = await make_env(tmp_path, status_max_connections=2)
    e.store.append_many([Event.of("backend", Kind.HEALTHY, f"n{n}", pad=BIG) for n in range(200)])
    stalled = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", e.server.port))
            sock.sendall(STALLED_REQUEST)
            sock.setblocking(False)
            stalled.append(sock)
        # Answering has begun on both (until then a connection without a request is idle).
        await await_until(lambda: all(_has_data(sock) for sock in stalled), what="answers")

        async def refused() -> bytes | None:
            reader, writer = await asyncio.open_connection("127.0.0.1", e.server.port)
            try:
                answer = await asyncio.wait_for(reader.read(), 5)
            except (TimeoutError, ConnectionError):
                return None
            finally:
                writer.close()
            return answer if answer.startswith(b"HTTP/1.1 503 ") else None

        answer = await await_until(refused, what="a connection refused with 503")
        assert answer.endswith(b"erpwatch: too many connections\n")
        for sock in stalled:
            sock.close()
        stalled.clear()

        async def health() -> bool:
            try:
                return (await e.client.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        await await_until(health, what="/health once the stalled clients left")
    finally:
        for sock in stalled:
            sock.close()
        await close_env(e)
