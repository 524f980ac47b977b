"""A client that asks for a large answer and never reads it holds no connection slot for
ever: once erpwatch's send buffer for it stays full for the write timeout the connection is
dropped, so ``/health`` is answered again. Real server on 127.0.0.1, real SQLite file."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.helpers import await_until
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.events import Event, Kind
from watchdog.store import EventStore

BIG = "x" * 40_000  # details of one event: 200 of them are an ~8 MB /api/history answer
REQUEST = b"GET /api/history?limit=200 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class NoTargets:
    def statuses(self) -> list[object]:
        return []


async def test_a_client_that_never_reads_is_dropped_and_health_answers_again(
    tmp_path: Path,
) -> None:
    store = EventStore(tmp_path / "events.db")
    store.append_many([Event.of("backend", Kind.HEALTHY, f"n{n}", pad=BIG) for n in range(200)])
    bus = EventBus(store)
    settings = load_settings(status_port=0, log_path=tmp_path / "logs", status_max_connections=1)
    server = StatusServer(settings, source=NoTargets(), store=store, bus=bus, write_timeout=0.5)
    await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(REQUEST * 3)  # and never reads a byte of the answers

        async def health() -> bool:
            try:
                return (await client.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        # Before: the stalled connection stayed busy for ever and every other one got 503.
        await await_until(health, timeout=30, interval=0.1, what="/health answered again")
    finally:
        stalled.close()
        await client.aclose()
        await server.stop()
        await bus.close()
        store.close()
