"""The status page in each state of a real supervised ERP app, in a real headless Chromium.

The demo ERP app runs under the real `Supervisor` (no automatic restarts, a slow retry after
the restart limit) and is switched by its fault file: healthy, degraded by a failing
"database" check, down (it crashes: restart limit reached), stopped by an operator. For each
state the page, live and without a reload, must show what a status page is for: the state,
its cause, since when, the next retry, availability, a latency sparkline, incidents, a dated
timeline with alert decisions kept apart, a title and favicon of the worst state; the same
must be readable without JavaScript, nothing may load from elsewhere, and at 390 px no text
may run into its neighbour. Each test saves a screenshot (see `tests.e2e.browser`).

No sleeps: every wait is a playwright wait or a poll with a deadline. Times are asserted by
their form ("4s ago", "in 9m 58s", "2025-01-02 14:03:12"), never by their value.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from alerting import silences
from tests.e2e.browser import (
    CHROMIUM,
    MARKS,
    Requests,
    assert_fits,
    assert_self_contained,
    favicon_fill,
    overlapping,
    screenshot,
)
from tests.e2e.conftest import ERP, ErpStack
from watchdog.events import Event, Kind
from watchdog.favicon import GREEN, GREY, RED, YELLOW
from watchdog.states import TargetState

pytestmark = MARKS

if CHROMIUM.exists():
    from playwright.async_api import Browser, Page

CARD = f'.card[data-target="{ERP}"]'
DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
AGO = re.compile(r"^(\d+d \d+h|\d+h \d\dm|\d+m \d\ds|\d+s) ago$")
IN = re.compile(r"^in (\d+d \d+h|\d+h \d\dm|\d+m \d\ds|\d+s)$")
PERCENT = re.compile(r"^(100|\d{1,2}\.\d\d) %$")


async def text(page: Page, selector: str) -> str:
    return " ".join((await page.text_content(selector) or "").split())


async def shown_text(page: Page, selector: str) -> str:
    """What a reader sees (block elements apart), whitespace folded."""
    return " ".join((await page.inner_text(selector)).split())


async def field(page: Page, name: str) -> str:
    return await text(page, f'{CARD} [data-field="{name}"]')


async def row_shown(page: Page, name: str) -> bool:
    return await page.is_visible(f'{CARD} [data-row="{name}"]')


async def open_live(browser: Browser, erp: ErpStack, **options: object) -> tuple[Page, Requests]:
    page = await browser.new_page(**options)  # type: ignore[arg-type]
    requests = Requests(page)
    await page.goto(erp.url)
    await page.wait_for_function(
        "document.getElementById('conn').textContent === 'live'", timeout=5000
    )
    await page.evaluate("window.__sameDocument = true")
    return page, requests


async def wait_state(page: Page, state: str) -> None:
    await page.wait_for_function(
        f"document.querySelector('{CARD}').dataset.state === '{state}'", timeout=15000
    )


async def assert_title_and_favicon(page: Page, title: str, colour: str) -> None:
    await page.wait_for_function(f"document.title === {title!r}", timeout=5000)
    assert favicon_fill(await page.get_attribute("#favicon", "href")) == colour


async def dated_times(page: Page, selector: str) -> list[str]:
    return list(
        await page.eval_on_selector_all(selector, "els => els.map(e => e.textContent.trim())")
    )


async def publish_alert_decisions(erp: ErpStack) -> None:
    """What the alerting pipeline records when it mails about the outage and holds one
    repeat (the same event kinds and details as `alerting.delivery` / `alerting.service`)."""
    await erp.bus.publish(
        Event.of(
            ERP,
            Kind.ALERT_SENT,
            "mail sent to ops@example.com: [erpwatch] CRITICAL erp-backend down: restart "
            "limit reached; last: exit code 3: FATAL: simulated crash (demo fault)",
            to=["ops@example.com"],
            incident=1,
            purpose="alert",
            receiver="email",
            transport="smtp 127.0.0.1:2525",
        )
    )
    await erp.bus.publish(
        Event.of(
            ERP,
            Kind.ALERT_HELD,
            "held: a mail about this incident went out 0s ago (group interval 300s)",
            incident=1,
            reason="group-interval",
        )
    )


def add_silence(erp: ErpStack, reason: str) -> None:
    """``erpwatch silence erp-backend --for 30m``: a row in alerting's table of the store."""
    now = datetime.now(UTC)
    with sqlite3.connect(erp.store.path) as conn:
        silences.add(conn, silences.Silence(ERP, now + timedelta(minutes=30), reason), now)
    conn.close()


# --- healthy -----------------------------------------------------------------------------


async def test_healthy_card_availability_sparkline_and_readable_details(
    erp: ErpStack, browser: Browser
) -> None:
    page, requests = await open_live(browser, erp, viewport={"width": 1200, "height": 900})
    assert await page.get_attribute(CARD, "data-state") == "healthy"
    assert await page.get_attribute(CARD, "data-tone") == "ok"
    assert await text(page, f"{CARD} .badge") == "Healthy"
    await assert_title_and_favicon(page, "\u2714 all healthy \u00b7 erpwatch", GREEN)
    assert await text(page, "#summary") == "\u2714 all healthy"

    # No trouble: no cause, no down-since, no retry; uptime, availability, response times.
    assert await page.is_hidden(f'{CARD} [data-field="cause"]')
    assert not await row_shown(page, "down-since") and not await row_shown(page, "next-retry")
    assert not await row_shown(page, "silence")
    assert AGO.match((await field(page, "uptime")) + " ago")
    windows = await page.eval_on_selector_all(
        f"{CARD} .av", "els => els.map(e => [e.dataset.window, e.textContent.trim()])"
    )
    assert [w for w, _ in windows] == ["24h", "7d", "30d"]
    for window, shown in windows:
        label, _, value = shown.partition(" ")[2].partition(" ")
        assert f"{shown.split()[0]}{label}" == window and PERCENT.match(value), shown
    assert re.fullmatch(r"\d+ ms \(HTTP 200\)", await field(page, "probe"))
    spark = f"{CARD} svg.spark"
    assert await page.is_visible(spark)
    points = await page.get_attribute(f"{spark} polyline", "points") or ""
    assert len(points.split()) >= 1  # answered probes are drawn as a line

    # Details on demand: a definition list in words, not a key dump.
    await page.click(f"{CARD} details > summary")
    terms = await page.eval_on_selector_all(
        f'{CARD} [data-field="details"] dt', "els => els.map(e => e.textContent)"
    )
    assert {"Health URL", "Last probe", "Probe said", "Check database", "PID"} <= set(terms)
    details = await shown_text(page, f'{CARD} [data-field="details"]')
    assert "{" not in details and "_" not in details.replace(erp.origin, "")
    assert "connected" not in details  # a check's return value is not its status
    assert "Check database ok" in details

    await assert_self_contained(page, requests, erp.origin)
    await assert_fits(page)
    await screenshot(page, "state-healthy.png")


# --- degraded ----------------------------------------------------------------------------


async def test_degraded_card_names_the_failing_check_and_opens_an_incident(
    erp: ErpStack, browser: Browser
) -> None:
    page, requests = await open_live(browser, erp, viewport={"width": 1200, "height": 900})
    erp.fault("degrade")
    await erp.reach(TargetState.DEGRADED)
    await wait_state(page, "degraded")
    assert await page.evaluate("window.__sameDocument === true")  # live, no reload

    assert await page.get_attribute(CARD, "data-tone") == "warn"
    assert await text(page, f"{CARD} .badge") == "Degraded"
    cause = await field(page, "cause")
    assert "database failed" in cause and "replica lagging" in cause
    assert not await row_shown(page, "down-since")  # degraded still counts as up
    await assert_title_and_favicon(page, f"\u25b2 {ERP} degraded \u00b7 erpwatch", YELLOW)

    # An ongoing incident, its cause and a running duration.
    await page.wait_for_selector("#incidents .incident.open", timeout=10000)
    incident = await text(page, "#incidents .incident.open")
    assert ERP in incident and "ongoing" in incident and "database failed" in incident
    assert re.search(r"for \d+s", incident)

    # The timeline is dated and the degraded event is in it.
    await page.wait_for_selector('#timeline li[data-kind="degraded"]', timeout=5000)
    stamps = await dated_times(page, "#timeline li.ev time")
    assert stamps and all(DATE_TIME.match(s) for s in stamps), stamps

    await page.click(f"{CARD} details > summary")
    details = await shown_text(page, f'{CARD} [data-field="details"]')
    assert "Check database failed" in details and "replica lagging" in details

    await assert_self_contained(page, requests, erp.origin)
    await assert_fits(page)
    await screenshot(page, "state-degraded.png")


# --- down: restart limit reached ---------------------------------------------------------


@pytest.fixture
async def down(erp: ErpStack) -> AsyncIterator[ErpStack]:
    """The app crashes on its next health check; no restart is allowed: restart limit,
    slow retry scheduled. Alerting mailed about it once and held a repeat."""
    erp.fault("crash")
    await erp.reach(TargetState.FAILED)
    await publish_alert_decisions(erp)
    yield erp


async def assert_down_card(page: Page) -> None:
    assert await page.get_attribute(CARD, "data-tone") == "bad"
    assert await text(page, f"{CARD} .badge") == "Down: restart limit reached"
    cause = await field(page, "cause")
    assert "exit code 3" in cause and "FATAL: simulated crash (demo fault)" in cause
    down_since = f'{CARD} [data-field="down-since"] time'
    assert AGO.match(await text(page, down_since))
    assert DATE_TIME.match((await page.get_attribute(down_since, "title") or "")[:-4])
    retry = f'{CARD} [data-field="next-retry"] time'
    assert IN.match(await text(page, retry)) and "m" in await text(page, retry)
    assert DATE_TIME.match((await page.get_attribute(retry, "title") or "")[:-4])
    # A refused connection has no latency: it must not read as "3 ms".
    probe = await field(page, "probe")
    assert not re.match(r"^\d+ ms", probe), probe
    assert probe == "no probe yet" or probe.startswith("no answer: ")


async def test_down_card_cause_since_retry_incident_and_alert_decisions_apart(
    down: ErpStack, browser: Browser
) -> None:
    erp = down
    page, requests = await open_live(browser, erp, viewport={"width": 1200, "height": 1000})
    await wait_state(page, "failed")
    await assert_down_card(page)
    await assert_title_and_favicon(page, f"\u2716 {ERP} down \u00b7 erpwatch", RED)
    assert await text(page, "#summary") == f"\u2716 {ERP} down"

    # Alert decisions have their own list; the timeline keeps the target's own events.
    alert_kinds = await dated_times(page, "#alerts li.ev .ev-kind")
    assert alert_kinds == ["alert-held", "alert-sent"]
    timeline_kinds = set(await dated_times(page, "#timeline li.ev .ev-kind"))
    assert {"crashed", "restart-limit-reached"} <= timeline_kinds
    assert not timeline_kinds & {"alert-sent", "alert-held", "alert-failed"}
    assert all(DATE_TIME.match(s) for s in await dated_times(page, "#alerts li.ev time"))

    incident = await text(page, "#incidents .incident.open")
    assert "ongoing" in incident and "1 notification" in incident

    # A silence set from the CLI shows on the card after the next refresh.
    add_silence(erp, "planned DB migration")
    await page.click("#refresh")
    await page.wait_for_selector(f'{CARD} [data-row="silence"]:not([hidden])', timeout=5000)
    silence = await field(page, "silence")
    assert re.fullmatch(r"alerts held, ends in 29m \d\ds: planned DB migration", silence)

    # A new alert decision arrives live, into its own list.
    await erp.bus.publish(Event.of(ERP, Kind.ALERT_FAILED, "webhook failed: HTTP 502"))
    await page.wait_for_selector('#alerts li[data-kind="alert-failed"]', timeout=5000)
    assert await page.query_selector('#timeline li[data-kind="alert-failed"]') is None

    await page.click(f"{CARD} details > summary")
    details = await shown_text(page, f'{CARD} [data-field="details"]')
    assert "Exit code 3" in details and "Last stderr line FATAL: simulated crash" in details
    assert "PID not running" in details

    await assert_self_contained(page, requests, erp.origin)
    await assert_fits(page)
    await screenshot(page, "state-down.png")


async def test_down_page_reads_the_same_without_javascript(
    down: ErpStack, browser: Browser
) -> None:
    context = await browser.new_context(
        java_script_enabled=False, viewport={"width": 1200, "height": 1000}
    )
    page = await context.new_page()
    requests = Requests(page)
    await page.goto(down.url)
    assert await text(page, "#conn") == "snapshot"  # no script ran: the server's rendering
    assert await page.get_attribute(CARD, "data-state") == "failed"
    await assert_down_card(page)
    assert await page.title() == f"\u2716 {ERP} down \u00b7 erpwatch"
    assert favicon_fill(await page.get_attribute("#favicon", "href")) == RED
    incident = await text(page, "#incidents .incident.open")
    assert "ongoing" in incident and "exit code 3" in incident
    assert await dated_times(page, "#alerts li.ev .ev-kind") == ["alert-held", "alert-sent"]
    assert all(DATE_TIME.match(s) for s in await dated_times(page, "#timeline li.ev time"))
    assert await page.is_visible(f"{CARD} svg.spark")
    await page.click(f"{CARD} details > summary")  # <details> needs no script
    assert "Last stderr line" in await shown_text(page, f'{CARD} [data-field="details"]')
    await assert_self_contained(page, requests, down.origin)
    await assert_fits(page)
    await screenshot(page, "state-down-nojs.png")
    await context.close()


async def test_narrow_390px_no_text_runs_into_its_neighbour(
    down: ErpStack, browser: Browser
) -> None:
    page, _ = await open_live(
        browser, down, viewport={"width": 390, "height": 844}, device_scale_factor=2
    )
    await wait_state(page, "failed")
    await page.click(f"{CARD} details > summary")
    await page.wait_for_selector('#alerts li[data-kind="alert-sent"]')
    rows = "#timeline li.ev, #alerts li.ev, .card li.ev"
    assert await page.eval_on_selector_all(rows, "els => els.length") >= 4
    assert await overlapping(page, rows) == []
    assert await overlapping(page, ".inc-head") == []
    assert await overlapping(page, ".card-head") == []
    assert await overlapping(page, "dl.facts .row") == []
    # The kind and the message of every row: one above the other, not side by side.
    for selector in ("#timeline li.ev", "#alerts li.ev"):
        pairs = await page.eval_on_selector_all(
            selector,
            """els => els.map(li => [li.querySelector('.ev-kind').getBoundingClientRect(),
                                      li.querySelector('.ev-msg').getBoundingClientRect()])
                        .map(([k, m]) => [k.bottom, m.top])""",
        )
        assert pairs and all(kind_bottom <= msg_top + 0.5 for kind_bottom, msg_top in pairs)
    # Nothing wider than the screen: no sideways scrolling.
    assert await page.evaluate("window.innerWidth") == 390
    await assert_fits(page)
    await screenshot(page, "state-down-390px.png")


# --- stopped by an operator -----------------------------------------------------------------


async def test_stopped_by_operator_is_grey_and_says_who_and_why(
    erp: ErpStack, browser: Browser
) -> None:
    page, requests = await open_live(browser, erp, viewport={"width": 1200, "height": 900})
    results = await erp.supervisor.operate(
        "stop", [ERP], reason="maintenance window", actor="alice"
    )
    assert all(result.ok for result in results)
    await wait_state(page, "stopped")
    assert await page.get_attribute(CARD, "data-tone") == "off"
    assert await text(page, f"{CARD} .badge") == "Stopped by alice: maintenance window"
    await assert_title_and_favicon(page, f"\u25a0 {ERP} stopped \u00b7 erpwatch", GREY)
    # Stopped on purpose: not down, nothing scheduled.
    assert not await row_shown(page, "down-since") and not await row_shown(page, "next-retry")
    assert not await row_shown(page, "uptime")
    assert await page.is_hidden(f'{CARD} [data-field="cause"]')  # the label says who and why
    probe = await field(page, "probe")  # what the last probe said, not a live latency
    assert probe.startswith(("last answer ", "no answer: ")), probe
    await page.wait_for_selector('#timeline li[data-kind="stopped"]', timeout=5000)
    await page.click(f"{CARD} details > summary")
    details = await shown_text(page, f'{CARD} [data-field="details"]')
    assert "Held by alice: maintenance window" in details and "PID not running" in details
    await assert_self_contained(page, requests, erp.origin)
    await assert_fits(page)
    await screenshot(page, "state-stopped.png")
