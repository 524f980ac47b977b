"""Fixtures of the browser tests: one Chromium per test, and a real erpwatch stack (the real
`Supervisor` watching the demo ERP app, a real `StatusServer`, a real event store)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS
from tests.helpers import await_until, free_port
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.clock import RealClock
from watchdog.config import load_settings
from watchdog.states import TargetState
from watchdog.store import EventStore
from watchdog.supervisor import Supervisor

if CHROMIUM.exists():
    from playwright.async_api import Browser, async_playwright

ERP = "erp-backend"
LIMIT_RETRY_S = 600.0  # the slow retry after the restart limit: "next retry in 9m 59s"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class ErpStack:
    """The demo ERP app (Starlette + erpwatch's health kit, a "database" check) supervised
    with no automatic restarts; its fault file switches it to degraded or crashing."""

    supervisor: Supervisor
    server: StatusServer
    store: EventStore
    bus: EventBus
    fault_file: Path

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def url(self) -> str:
        return self.origin + "/"

    def state(self) -> TargetState:
        return self.supervisor.statuses()[0].state

    def fault(self, mode: str) -> None:
        self.fault_file.write_text(mode)

    async def reach(self, state: TargetState, within: float = 20) -> None:
        await await_until(lambda: self.state() is state, within, what=str(state))


@pytest.fixture
async def erp(tmp_path: Path) -> AsyncIterator[ErpStack]:
    port = free_port()
    fault_file = tmp_path / "fault"
    command = f"{sys.executable} -m watchdog.demo.erp_app --port {port} --fault-file {fault_file}"
    values: dict[str, Any] = dict(
        command=command,
        health_url=f"http://127.0.0.1:{port}/status",  # the kit's /status carries the checks
        target_name=ERP,
        check_interval=0.1,
        probe_timeout=0.5,
        startup_grace=15,
        max_restarts=0,
        limit_retry=LIMIT_RETRY_S,
        restart_backoff=0,
        stop_timeout=2,
        log_path=tmp_path / "logs",
    )
    configs = load_settings(**values).targets_resolved()
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store)
    supervisor = Supervisor(configs, bus, log_dir=tmp_path / "logs", clock=RealClock())
    server = StatusServer(
        load_settings(status_port=0, log_path=tmp_path / "logs"),
        source=supervisor,
        store=store,
        bus=bus,
    )
    await server.start()
    await supervisor.start()
    stack = ErpStack(supervisor, server, store, bus, fault_file)
    try:
        await stack.reach(TargetState.HEALTHY)
        yield stack
    finally:
        await supervisor.stop()
        await server.stop()
        await bus.close()
        store.close()
