"""Webhooks through the durable outbox, against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerting.delivery import Delivery
from alerting.http import HttpTransport
from alerting.outbox import Outbox
from alerting.receivers import Receiver, url_name
from alerting.render import Mail
from tests.alerting.conftest import SmtpServer, kill_alerting, make_settings, spawn_alerting
from tests.alerting.http_receiver import HttpReceiver, Reply
from tests.alerting.test_service import REPO, running
from tests.helpers import await_until, wait_until
from watchdog.bus import EventBus
from watchdog.clock import FakeClock
from watchdog.events import Event, Kind, Severity
from watchdog.store import EventStore

SECRET = "hmac-key-never-shown"
TOKEN = "t0ken-in-the-path"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


def all_text(store: EventStore) -> str:
    """Every stored event's message and details, as one string (to look for secrets)."""
    return "\n".join(
        f"{e.kind} {e.message} {json.dumps(dict(e.details))}" for e in store.query(limit=None)
    )


async def test_firing_and_resolved_are_posted_signed_with_the_versioned_body(
    tmp_path: Path,
    smtp: SmtpServer,
    store: EventStore,
    bus: EventBus,
    receiver: HttpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="alerting")
    caplog.set_level(logging.DEBUG, logger="erpwatch")
    settings = make_settings(
        tmp_path,
        smtp,
        webhook_urls=[receiver.url],
        webhook_secret=SECRET,
        webhook_headers='{"X-Token": "header-secret-value"}',
        status_page_url="http://127.0.0.1:8765/",
    )
    name = url_name("webhook", receiver.url)
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "backend down for 60s"))
        await await_until(lambda: len(receiver.requests) >= 1, what="the firing POST")
        await bus.publish(Event.of("backend", Kind.HEALTHY, "healthy again"))
        await await_until(lambda: len(receiver.requests) >= 2, what="the resolved POST")
        await await_until(
            lambda: len(store.query(kinds=[Kind.ALERT_SENT], limit=None)) >= 4,
            what="alert-sent for both mails and both posts",
        )
    firing, resolved = receiver.requests
    body = firing.json()
    assert body["version"] == "1"
    assert body["status"] == "firing" and body["notification"] == "firing"
    assert (body["target"], body["host"], body["kind"]) == ("backend", "testhost", "down")
    assert body["severity"] == "critical" and body["kinds"] == ["down"]
    assert body["summary"] == "backend@testhost down: down"
    assert body["started_at"].endswith("Z") and body["ended_at"] is None
    assert body["status_url"] == "http://127.0.0.1:8765/"
    assert [e["kind"] for e in body["events"]] == ["down"]
    done = resolved.json()
    assert done["status"] == "resolved" and done["incident"] == body["incident"]
    assert done["ended_at"] is not None and done["started_at"] == body["started_at"]
    for request in (firing, resolved):
        assert request.path == f"/hook/{TOKEN}"
        assert request.headers["x-token"] == "header-secret-value"
        assert request.headers["content-type"] == "application/json"
        stamp = request.headers["x-erpwatch-timestamp"]
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + request.body, hashlib.sha256)
        assert request.headers["x-erpwatch-signature"] == "sha256=" + mac.hexdigest()
    sent = store.query(kinds=[Kind.ALERT_SENT], limit=None)
    posted = [e for e in sent if e.details.get("receiver") == name]
    assert sorted(e.details["purpose"] for e in posted) == ["firing", "resolved"]
    assert all(name in e.message and "posted to" in e.message for e in posted)
    assert len(smtp.messages) == 2  # the mail lane goes on beside it
    own_logs = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("alerting", "erpwatch"))
    )
    for secret in (TOKEN, SECRET, "header-secret-value"):
        assert secret not in all_text(store) + own_logs


def test_debug_logging_redacts_the_webhook_url_httpx_would_log(tmp_path: Path) -> None:
    """With ERPWATCH_DEBUG httpx logs each request line: the URL's token is redacted."""
    import io

    from watchdog.logs import setup_logging

    url = f"https://hooks.example.com/services/{TOKEN}"
    settings = make_settings(
        tmp_path, None, debug=True, webhook_urls=[url], webhook_secret=SECRET,
        webhook_headers='{"Authorization": "Bearer header-secret-value"}',
    )  # fmt: skip
    stream = io.StringIO()
    handlers = setup_logging(settings, stream=stream)
    try:
        logging.getLogger("httpx").info('HTTP Request: POST %s "HTTP/1.1 200 OK"', url)
        logging.getLogger("httpx").debug("headers %s %s", "Bearer header-secret-value", SECRET)
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
    text = stream.getvalue()
    assert "HTTP Request: POST ***" in text
    for secret in (TOKEN, SECRET, "header-secret-value"):
        assert secret not in text


async def test_min_severity_keeps_warnings_off_the_webhook_but_not_the_mail(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus, receiver: HttpReceiver
) -> None:
    settings = make_settings(
        tmp_path,
        smtp,
        alert_on=["crashed", "down"],
        webhook_urls=[receiver.url],
        webhook_min_severity="critical",
    )
    async with running(settings, store, bus):
        await bus.publish(Event.of("worker", Kind.CRASHED, "exit code 1"))  # a warning
        await await_until(lambda: smtp.messages, what="the mail about the crash")
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))  # critical
        await await_until(lambda: receiver.requests, what="the POST about backend")
    assert [r.json()["target"] for r in receiver.requests] == ["backend"]


# --- one lane driven step by step on a fake clock ------------------------------------------


def queue(store: EventStore, outbox: Outbox, receiver: str, *purposes: str) -> None:
    rows = [
        Mail(
            p,
            "backend",
            "inc-1",
            (),
            f"backend {p}",
            f"k-{p}",
            json.dumps({"n": p}).encode(),
            ("down",),
            receiver,
        )
        for p in purposes
    ]
    with store.transaction() as conn:
        Outbox._insert(conn, rows, datetime.now(UTC))


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_lane(
    store: EventStore, bus: EventBus, answer: Answer, *purposes: str, wait: float = 0.5
) -> tuple[Delivery, asyncio.Server]:
    """A webhook lane on a fake clock to a raw loopback server that answers as ``answer``
    writes (for answers no HTTP library would send), with one row queued per purpose;
    ``wait``: the receiver's timeout."""
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    outbox = Outbox(store)
    await bus.run_in_writer(outbox.ensure_schema)
    url = f"http://127.0.0.1:{port}/hook"
    target = Receiver(url_name("webhook", url), "webhook", Severity.INFO, url)
    transport = HttpTransport(target, timeout=wait)
    delivery = Delivery(outbox, bus, transport, "x", FakeClock(), ordered=True)
    queue(store, outbox, target.name, *purposes)
    return delivery, server


@pytest.fixture
async def lane(
    store: EventStore, bus: EventBus, receiver: HttpReceiver
) -> tuple[Delivery, Outbox, FakeClock]:
    outbox = Outbox(store)
    await bus.run_in_writer(outbox.ensure_schema)
    clock = FakeClock()
    target = Receiver(url_name("webhook", receiver.url), "webhook", Severity.INFO, receiver.url)
    transport = HttpTransport(target, timeout=5.0)
    delivery = Delivery(
        outbox, bus, transport, "erpwatch@x", clock, retry_initial=1.0, retry_max=60.0,
        ordered=True,
    )  # fmt: skip
    return delivery, outbox, clock


def statuses(store: EventStore) -> list[tuple[str, str, int]]:
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute(
            "SELECT purpose, status, attempts FROM alert_outbox ORDER BY id"
        ).fetchall()
    conn.close()
    return [(str(a), str(b), int(c)) for a, b, c in rows]


async def test_429_retry_after_is_honoured_before_the_next_try(
    store: EventStore, receiver: HttpReceiver, lane: tuple[Delivery, Outbox, FakeClock]
) -> None:
    delivery, outbox, clock = lane
    queue(store, outbox, delivery.transport.receiver, "firing")
    receiver.script = [Reply(429, {"Retry-After": "30"})]
    assert await delivery.drain() == 0
    assert statuses(store) == [("firing", "pending", 1)]
    (when,) = delivery.retry_at.values()
    assert when == clock.now() + 30  # not the 1 s backoff
    clock.advance(29)
    assert await delivery.drain() == 0 and len(receiver.requests) == 1
    clock.advance(1)
    assert await delivery.drain() == 1
    assert len(receiver.requests) == 2 and statuses(store) == [("firing", "sent", 2)]


async def test_5xx_is_retried_and_a_4xx_is_a_dead_letter_with_an_alert_failed_event(
    store: EventStore,
    bus: EventBus,
    receiver: HttpReceiver,
    lane: tuple[Delivery, Outbox, FakeClock],
) -> None:
    delivery, outbox, clock = lane
    queue(store, outbox, delivery.transport.receiver, "firing")
    receiver.script = [Reply(502, body=b"bad gateway"), Reply(404, body=b"no such hook")]
    failures = bus.subscribe("test")
    await delivery.drain()
    assert statuses(store) == [("firing", "pending", 1)]
    clock.advance(1)
    await delivery.drain()
    assert statuses(store) == [("firing", "dead", 2)]
    with sqlite3.connect(store.path) as conn:
        (reason,) = conn.execute("SELECT last_error FROM alert_outbox").fetchone()
    conn.close()
    assert reason == "HTTP 404: no such hook"
    event = await failures.get()
    assert event.kind == Kind.ALERT_FAILED
    assert event.details["receiver"] == delivery.transport.receiver
    assert "HTTP 404" in event.message and TOKEN not in event.message
    failures.close()


@pytest.mark.parametrize(
    "reply",
    [
        Reply(404, body=b"<pre>Cannot POST /hook/" + TOKEN.encode() + b"</pre>"),  # Express
        Reply(302, headers={"location": "/hook/" + TOKEN + "-moved"}),
        Reply(301, headers={"location": "https://elsewhere.example/hook/" + TOKEN}),
    ],
    ids=["path-echoed", "relative-redirect", "absolute-redirect"],
)
async def test_a_refusal_echoing_the_url_path_never_shows_the_token(
    store: EventStore,
    bus: EventBus,
    receiver: HttpReceiver,
    lane: tuple[Delivery, Outbox, FakeClock],
    reply: Reply,
) -> None:
    delivery, outbox, _ = lane
    queue(store, outbox, delivery.transport.receiver, "firing")
    receiver.script = [reply]
    await delivery.drain()
    assert statuses(store) == [("firing", "dead", 1)]
    with sqlite3.connect(store.path) as conn:
        (reason,) = conn.execute("SELECT last_error FROM alert_outbox").fetchone()
    conn.close()
    assert reason.startswith(f"HTTP {reply.status}") and TOKEN not in reason
    assert TOKEN not in all_text(store)  # the alert-failed event


def test_a_key_in_the_query_stays_out_of_the_receiver_name() -> None:
    name = url_name("webhook", "http://127.0.0.1:5000?apikey=k3yS3cretValue")
    assert name.startswith("webhook-127.0.0.1-5000-") and "k3y" not in name


async def test_resolved_never_overtakes_a_firing_that_waits_for_its_retry(
    store: EventStore, receiver: HttpReceiver, lane: tuple[Delivery, Outbox, FakeClock]
) -> None:
    delivery, outbox, clock = lane
    queue(store, outbox, delivery.transport.receiver, "firing", "resolved")
    receiver.script = [Reply(503)]
    await delivery.drain()
    assert len(receiver.requests) == 1
    assert statuses(store) == [("firing", "pending", 1), ("resolved", "pending", 0)]
    clock.advance(1)
    assert await delivery.drain() == 2
    assert [b["n"] for b in receiver.bodies()] == ["firing", "firing", "resolved"]
    assert statuses(store) == [("firing", "sent", 2), ("resolved", "sent", 1)]


async def test_refused_connection_is_transient(
    store: EventStore, lane: tuple[Delivery, Outbox, FakeClock], receiver: HttpReceiver
) -> None:
    delivery, outbox, _clock = lane
    receiver.stop()
    queue(store, outbox, delivery.transport.receiver, "firing")
    await delivery.drain()
    assert statuses(store) == [("firing", "pending", 1)]


async def test_a_receiver_removed_by_a_reload_leaves_dead_letters_not_waiting_rows(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    down = HttpReceiver()  # never started: every try is refused
    settings = make_settings(tmp_path, smtp, webhook_urls=[down.url])
    name = url_name("webhook", down.url)
    async with running(settings, store, bus) as service:
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        await await_until(
            lambda: service.stats()["receivers"][name]["failures"] >= 1, what="a refused try"
        )
        await service.apply_settings(make_settings(tmp_path, smtp))
        assert name not in service.lanes.by_name
        failed = store.query(kinds=[Kind.ALERT_FAILED], limit=None)
    assert any(name in e.message and "no longer configured" in e.message for e in failed)
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute(
            "SELECT status FROM alert_outbox WHERE receiver = ?", (name,)
        ).fetchall()
    conn.close()
    assert rows == [("dead",)]


# --- SIGKILL between a failed and a successful delivery -----------------------------------


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    env.update(
        PYTHONPATH=str(REPO),
        ERPWATCH_DB_PATH=str(tmp_path / "erpwatch.db"),
        ERPWATCH_LOG_PATH=str(tmp_path / "logs"),
        ERPWATCH_ALERT_GROUP_WAIT="0.05",
        ERPWATCH_WEBHOOK_URLS=url,
    )
    return env


def webhook_rows(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT status, attempts FROM alert_outbox WHERE receiver LIKE 'webhook-%' ORDER BY id"
        ).fetchall()
    conn.close()
    return [(str(s), int(a)) for s, a in rows]


def test_webhook_down_then_up_across_a_sigkill_is_delivered_once(tmp_path: Path) -> None:
    receiver = HttpReceiver()  # down while the first process runs
    db = tmp_path / "erpwatch.db"
    env = _env(tmp_path, receiver.url)
    first = spawn_alerting(env, "--publish", "backend")
    try:
        wait_until(lambda: any(a >= 1 for _, a in webhook_rows(db)), what="a refused POST")
    finally:
        kill_alerting(first)
    assert [s for s, _ in webhook_rows(db)] == ["pending"]
    receiver.start()
    try:
        second = spawn_alerting(env)
        try:
            wait_until(lambda: [s for s, _ in webhook_rows(db)] == ["sent"], what="delivery")
        finally:
            kill_alerting(second)
        third = spawn_alerting(env, "--publish", "other")  # only its own new notification goes out
        try:
            wait_until(lambda: [s for s, _ in webhook_rows(db)] == ["sent", "sent"])
        finally:
            kill_alerting(third)
    finally:
        receiver.stop()
    assert [b["target"] for b in receiver.bodies()] == ["backend", "other"]


async def test_a_receiver_dripping_its_answer_is_cut_at_the_timeout(
    store: EventStore, bus: EventBus
) -> None:
    """httpx's timeouts are per read: one byte every 50 ms would never trip them. (The head
    drips: once a status line has come, it decides; see test_webhook_slow_body_after_2xx.)"""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
        try:
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            writer.close()

    delivery, server = await raw_lane(store, bus, drip, "firing")
    try:
        assert await delivery.drain() == 0
    finally:
        server.close()
    assert statuses(store) == [("firing", "pending", 1)]
    with sqlite3.connect(store.path) as conn:
        (reason,) = conn.execute("SELECT last_error FROM alert_outbox").fetchone()
    conn.close()
    assert reason == "no complete answer within 0.5s"
