"""``/status`` (and so the page and ``erpwatch status``, which read it) says what is wrong
with erpwatch itself, as ``/health`` does: a stalled monitor or a failing store must not
look like a sound erpwatch there. Real server on 127.0.0.1, real SQLite file."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.watchdog.test_api import FakeSource
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.store import EventStore


async def test_status_names_erpwatchs_own_problem(tmp_path: Path) -> None:
    problem: list[str | None] = ["stalled: backend"]
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store)
    settings = load_settings(status_port=0, log_path=tmp_path / "logs", status_cache_ttl=60)
    server = StatusServer(
        settings, source=FakeSource(), store=store, bus=bus, health=lambda: problem[0]
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/health")).status_code == 503
            document = (await client.get("/status")).json()
            assert document["erpwatch"]["problem"] == "stalled: backend"
            problem[0] = None
            document = (await client.get("/status", params={"fresh": "1"})).json()
            assert document["erpwatch"]["problem"] is None
    finally:
        await server.stop()
        await bus.close()
        store.close()
