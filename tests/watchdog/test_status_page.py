"""The server-rendered status page (no browser): every field escaped, the dated timeline
apart from the alert decisions, and an older /status document still rendering.

The browser tests (``tests/e2e/test_status_page*.py``) check what a reader sees; these check
the HTML itself over real HTTP, the page fed by a fake `StatusSource` of realistic
`TargetStatus` objects and a real event store."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerting import silences
from tests.watchdog.test_api import Env, close_env, make_env, status
from watchdog.events import Event, Kind
from watchdog.probe import ProbeResult, ProbeStatus
from watchdog.states import TargetState
from watchdog.status_cmd import format_duration, format_latency
from watchdog.templating import environment

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make_env(tmp_path)
    yield e
    await close_env(e)


def down_status(name: str = "backend") -> Any:
    refused = ProbeResult(ProbeStatus.FAILED, 0.003, None, f"connection refused {EVIL}", 0.0)
    return status(
        name=name,
        state=TargetState.FAILED,
        pid=None,
        uptime=None,
        last_probe=refused,
        down_for=42.0,
        next_retry_in=600.0,
        cause={
            "summary": f"exit code 1: {EVIL}",
            "kind": "crash",
            "exit_code": 1,
            "signal": None,
            "stderr_line": EVIL,
            "checks": [],
        },
        latencies=((3.0, 4.5, "ok"), (2.0, 30.0, "degraded"), (1.0, None, "failed")),
    )


def row(html: str, name: str) -> str:
    match = re.search(rf'<div class="row" data-row="{name}"[^>]*>.*?</div>', html, re.S)
    assert match, name
    return match.group(0)


async def test_every_field_is_escaped_and_the_down_card_says_why_since_and_next(
    env: Env,
) -> None:
    env.source.items = [down_status(), status(name=f"web{EVIL}")]
    now = datetime.now(UTC)
    with sqlite3.connect(env.store.path) as conn:
        silences.add(conn, silences.Silence("backend", now + timedelta(hours=1), EVIL), now)
    conn.close()
    await env.bus.publish(Event.of("backend", Kind.CRASHED, EVIL, state="restarting"))
    await env.bus.publish(Event.of("backend", Kind.ALERT_SENT, f"mail sent {EVIL}"))

    html = (await env.client.get("/")).text
    assert EVIL not in html and html.count(ESCAPED) >= 6
    assert "web&lt;script&gt;" in html
    assert "<title>\u2716 backend down \u00b7 erpwatch</title>" in html

    assert "hidden" not in row(html, "down-since").split(">", 1)[0]
    assert re.search(r"data-rel>42s ago</time>", row(html, "down-since"))
    assert re.search(r"data-rel>in (9m 59s|10m 00s)</time>", row(html, "next-retry"))
    assert "alerts held, ends" in row(html, "silence") and ESCAPED in row(html, "silence")
    latency = row(html, "latency")
    assert "no answer: connection refused" in latency and "3 ms" not in latency
    assert latency.count('class="miss"') == 1 and 'class="slow"' in latency

    # Alert decisions are listed apart from the timeline; rows carry dates.
    alerts = html.split('id="alerts"', 1)[1].split("</ol>", 1)[0]
    timeline = html.split('id="timeline"', 1)[1].split("</ol>", 1)[0]
    assert 'data-kind="alert-sent"' in alerts and 'data-kind="alert-sent"' not in timeline
    assert 'data-kind="crashed"' in timeline
    assert re.search(r"<time [^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</time>", timeline)

    # The incident the crash opened, its cause escaped.
    incidents = html.split('id="incidents"', 1)[1].split("</ol>", 1)[0]
    assert "ongoing" in incidents and ESCAPED in incidents


def render(document: dict[str, Any]) -> str:
    """status.html over ``document`` with the context `_App.page` gives it, nothing more."""
    templates = environment()
    templates.filters["duration"] = format_duration
    templates.filters["latency"] = format_latency
    return templates.get_template("status.html").render(
        status=document,
        events=[],
        alerts=[],
        incidents=[],
        now=datetime.fromisoformat(document["generated_at"]),
        when=datetime.fromisoformat,
        title="t",
        headline="h",
        worst="",
        favicon="data:,",
        view={"tones": {}, "kinds": []},
        control_enabled=False,
    )


def test_a_status_without_the_newer_fields_still_renders() -> None:
    """A /status from before issue 13 (no cause, down_since, availability, latencies...)."""
    old_target: dict[str, Any] = {
        "name": "backend",
        "state": "failed",
        "colour": "red",
        "label": "Down: restart limit reached",
        "pid": None,
        "uptime": None,
        "restarts_in_window": 5,
        "restarts_total": 7,
        "health_url": "http://127.0.0.1:9/health",
        "last_probe": {"status": "failed", "latency": 0.003, "status_code": None,
                       "reason": "connection refused"},
        "last_event": None,
        "resources": None,
        "held": None,
    }  # fmt: skip
    document: dict[str, Any] = {
        "generated_at": "2025-01-02T03:04:05.000Z",
        "erpwatch": {"version": "0", "pid": 1, "uptime": 1.0, "sse_clients": 0},
        "targets": [old_target],
        "host": {"cpu_percent": None, "ram_percent": 1.0, "disks": {}},
        "store": {"path": "x.db", "size_bytes": 0, "events": 0},
        "alerting": None,
    }
    html = render(document)
    assert "Down: restart limit reached" in html
    assert '<p id="own-problem" role="alert" hidden>' in html  # no problem field: none shown
    assert 'data-row="down-since" hidden' in html and 'data-row="silence" hidden' in html
    assert "24 h</span> \u2013" in html  # availability unknown, not 0 %
    assert "5 in window, 7 total" in html


def test_the_page_says_what_is_wrong_with_erpwatch_itself() -> None:
    """``erpwatch.problem`` (what /health answers 503 for) above the cards, escaped."""
    document: dict[str, Any] = {
        "generated_at": "2025-01-02T03:04:05.000Z",
        "erpwatch": {"version": "0", "pid": 1, "uptime": 1.0, "sse_clients": 0},
        "targets": [],
        "host": {"cpu_percent": None, "ram_percent": 1.0, "disks": {}},
        "store": {"path": "x.db", "size_bytes": 0, "events": 0},
        "alerting": None,
    }
    assert '<p id="own-problem" role="alert" hidden>' in render(document)
    document["erpwatch"]["problem"] = f"stalled: backend {EVIL}"
    html = render(document)
    assert (
        f'<p id="own-problem" role="alert">erpwatch itself: <span>stalled: backend {ESCAPED}'
        in html
    )
