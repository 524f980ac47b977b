"""erpwatch's own health: a failing store degrades /health but never stops systemd's ping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import await_until
from watchdog.app import Watchdog
from watchdog.config import load_settings


async def test_store_trouble_degrades_health_but_keeps_the_systemd_ping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(command="sleep 60", log_path=tmp_path / "logs")
    watchdog = Watchdog(settings, settings.targets_resolved())
    try:
        assert watchdog.health_problem() is None and watchdog.alive()
        problem = "event store failing since 2026-12-01T10:00:00Z: database or disk is full"
        monkeypatch.setattr(watchdog.bus, "store_problem", lambda: problem)
        health = watchdog.health_problem()
        assert health is not None and health.startswith("degraded: event store failing")
        assert watchdog.alive()  # a restart by systemd would free no disk space
    finally:
        await watchdog.bus.close()
        watchdog.store.close()


async def test_a_reload_after_stop_began_changes_nothing(tmp_path: Path) -> None:
    """stop() waits for a reload in progress and refuses later ones: a reload finishing
    after the targets were stopped could start one again (an orphan)."""
    settings = load_settings(command="sleep 60", log_path=tmp_path / "logs")
    watchdog = Watchdog(settings, settings.targets_resolved())
    await watchdog._reload_lock.acquire()  # a reload in progress
    stopping = asyncio.create_task(watchdog.stop())
    await await_until(lambda: watchdog._stopping, what="stop begun")
    assert not stopping.done()  # it waits for the reload
    watchdog._reload_lock.release()
    await asyncio.wait_for(stopping, 30)
    answer = await watchdog.reload(actor="test")
    assert answer == {"ok": False, "error": "erpwatch is stopping: nothing reloaded"}
