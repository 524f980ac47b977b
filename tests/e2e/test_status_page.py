"""The status page in a real headless Chromium, watching a real supervised child.

A demo backend runs under the real `Supervisor` (no restarts allowed); the test kills it with
SIGKILL and the page, without a reload, must turn the card red within 2 s. Then the refresh
button must fetch a fresh status. Screenshots land in the artifacts directory (see
`tests.e2e.browser`); the per-state tests are in ``test_status_page_states.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser import CHROMIUM, MARKS, screenshot
from tests.helpers import await_until, free_port
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.clock import RealClock
from watchdog.config import load_settings
from watchdog.states import TargetState
from watchdog.store import EventStore
from watchdog.supervisor import Supervisor

pytestmark = MARKS

if CHROMIUM.exists():
    from playwright.async_api import Browser, Page


@dataclass
class Stack:
    supervisor: Supervisor
    server: StatusServer
    store: EventStore
    bus: EventBus

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/"

    def state(self) -> TargetState:
        return self.supervisor.statuses()[0].state


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    port = free_port()
    command = f"{sys.executable} -m watchdog.demo.backend --port {port}"
    configs = load_settings(
        command=command,
        health_url=f"http://127.0.0.1:{port}/health",
        target_name="erp-backend",
        check_interval=0.1,
        probe_timeout=0.5,
        startup_grace=10,
        max_restarts=0,
        limit_retry=0,
        restart_backoff=0,
        stop_timeout=2,
        log_path=tmp_path / "logs",
    ).targets_resolved()
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
    stack = Stack(supervisor, server, store, bus)
    try:
        await await_until(lambda: stack.state() is TargetState.HEALTHY, 15, what="healthy")
        yield stack
    finally:
        await supervisor.stop()
        await server.stop()
        await bus.close()
        store.close()


CARD = '.card[data-target="erp-backend"]'


async def card_class(page: Page) -> str:
    return str(await page.get_attribute(CARD, "class"))


async def test_card_turns_red_on_crash_without_reload(stack: Stack, browser: Browser) -> None:
    page = await browser.new_page(viewport={"width": 1100, "height": 800})
    await page.goto(stack.url)
    assert "green" in await card_class(page)
    assert "Healthy" in (await page.text_content(f"{CARD} .badge") or "")
    await page.wait_for_function(
        "document.getElementById('conn').textContent === 'live'", timeout=5000
    )
    await page.evaluate("window.__sameDocument = true")

    pid = stack.supervisor.statuses()[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await page.wait_for_function(
        f"document.querySelector('{CARD}').classList.contains('red')", timeout=15000
    )
    assert await page.evaluate("window.__sameDocument === true")  # no reload happened
    assert stack.state() is TargetState.FAILED
    assert "restart limit" in (await page.text_content(f"{CARD} .badge") or "")
    timeline = await page.text_content("#timeline") or ""
    assert "crashed" in timeline and "restart-limit-reached" in timeline

    # The refresh button fetches /status?fresh=1 and re-renders (the timestamp moves on).
    before = await page.get_attribute("#generated", "datetime")
    async with page.expect_response(lambda r: "/status?fresh=1" in r.url) as answer:
        await page.click("#refresh")
    assert (await answer.value).status == 200
    await page.wait_for_function(
        f"document.getElementById('generated').dateTime !== {before!r}", timeout=2000
    )

    await page.click(f"{CARD} summary")
    await screenshot(page, "status-page.png")
    await page.close()


async def test_the_page_says_what_is_wrong_with_erpwatch_itself(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    """``erpwatch.problem`` (what /health answers 503 for) appears above the cards once the
    page refreshes, and goes away with the problem."""
    problem: list[str | None] = [None]
    server = StatusServer(
        load_settings(status_port=0, log_path=tmp_path / "logs"),
        source=stack.supervisor,
        store=stack.store,
        bus=stack.bus,
        health=lambda: problem[0],
    )
    await server.start()
    page = await browser.new_page(viewport={"width": 1100, "height": 800})
    try:
        await page.goto(f"http://127.0.0.1:{server.port}/")
        assert await page.is_hidden("#own-problem")
        problem[0] = "degraded: event store failing (database is locked)"
        await page.click("#refresh")
        await page.wait_for_function("!document.getElementById('own-problem').hidden", timeout=5000)
        text = await page.text_content("#own-problem") or ""
        assert text == "erpwatch itself: degraded: event store failing (database is locked)"
        problem[0] = None
        await page.click("#refresh")
        await page.wait_for_function("document.getElementById('own-problem').hidden", timeout=5000)
    finally:
        await page.close()
        await server.stop()


async def test_page_readable_without_javascript(stack: Stack, browser: Browser) -> None:
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(stack.url)
    assert "green" in await card_class(page)
    assert "Healthy" in (await page.text_content(f"{CARD} .badge") or "")
    assert await page.text_content("#conn") == "snapshot"  # no script ran: the server's view
    assert "started" in (await page.text_content("#timeline") or "")
    await context.close()


async def test_operate_buttons_need_the_entered_token_and_restart_the_target(
    tmp_path: Path, browser: Browser
) -> None:
    """With a token on the server: no buttons until the operator enters it in this tab;
    then Restart restarts the target (over the authenticated API)."""
    port = free_port()
    command = f"{sys.executable} -m watchdog.demo.backend --port {port}"
    settings = load_settings(
        command=command,
        health_url=f"http://127.0.0.1:{port}/health",
        target_name="erp-backend",
        check_interval=0.1,
        stop_timeout=2,
        log_path=tmp_path / "logs",
        status_port=0,
        status_token="page-token",
    )
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store)
    supervisor = Supervisor(
        settings.targets_resolved(), bus, log_dir=tmp_path / "logs", clock=RealClock()
    )

    async def control(request: Any, peer: Any) -> dict[str, Any]:
        results = await supervisor.operate(
            request["command"], request["targets"], reason=request["reason"], actor=peer.actor
        )
        return {"ok": all(r.ok for r in results), "results": [r.to_dict() for r in results]}

    server = StatusServer(settings, source=supervisor, store=store, bus=bus, control=control)
    await server.start()
    await supervisor.start()
    try:
        await await_until(
            lambda: supervisor.statuses()[0].state is TargetState.HEALTHY, 15, what="healthy"
        )
        first = supervisor.statuses()[0].pid
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{server.port}/?token=page-token")
        assert await page.is_hidden(f'{CARD} [data-field="actions"]')
        await page.click("#operate summary")
        await page.fill("#operator-token", "page-token")
        await page.click('#operate-form button[type="submit"]')
        await page.wait_for_selector(f'{CARD} [data-field="actions"]', state="visible")
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.click(f'{CARD} button[data-action="restart"]')
        await page.wait_for_function(
            f"document.querySelector('{CARD} [data-field=\"action-result\"]')"
            ".textContent.startsWith('restarted, pid')",
            timeout=15000,
        )
        assert supervisor.statuses()[0].pid != first
        await screenshot(page, "status-operate.png")
        # A tab without the token sees no buttons, even on the same server.
        other = await browser.new_page()
        await other.goto(f"http://127.0.0.1:{server.port}/?token=page-token")
        assert await other.is_hidden(f'{CARD} [data-field="actions"]')
    finally:
        await supervisor.stop()
        await server.stop()
        await bus.close()
        store.close()


async def test_no_operate_controls_without_a_server_token(stack: Stack, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(stack.url)
    assert await page.query_selector("#operate") is None
    assert await page.query_selector('[data-field="actions"]') is None
