"""End to end: event store (by alerting's cursor) → pipeline → SQLite outbox → a real SMTP
server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from alerting.service import AlertService
from tests.alerting.conftest import (
    PASSWORD,
    USER,
    SmtpServer,
    kill_alerting,
    make_settings,
    spawn_alerting,
)
from tests.helpers import await_until, wait_until
from watchdog.bus import EventBus
from watchdog.clock import FakeClock, RealClock
from watchdog.events import SYSTEM_TARGET, Event, Kind, Severity
from watchdog.settings import Settings
from watchdog.store import EventStore
from watchdog.tasks import TaskSupervisor

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def running(
    settings: Settings, store: EventStore, bus: EventBus
) -> AsyncIterator[AlertService]:
    service = AlertService(
        settings, store, bus, hostname="testhost", retry_initial=0.05, retry_max=0.2, poll=0.05
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def outbox_rows(path: Path) -> list[tuple[int, str, int, str | None]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT id, status, attempts, last_error FROM alert_outbox ORDER BY id"
        ).fetchall()
    conn.close()
    return [(int(a), str(b), int(c), d) for a, b, c, d in rows]


def cursor_of(path: Path) -> int:
    """Alerting's durable cursor, read by another connection (what a restart would see)."""
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute("SELECT last_event_id FROM alert_cursor").fetchone()
    conn.close()
    return int(value)


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return {str(name) for (name,) in rows}


def subjects(smtp: SmtpServer, target: str | None = None) -> list[str]:
    found = [str(m["Subject"]) for m in smtp.messages]
    return [s for s in found if f" {target}@" in s] if target is not None else found


def kinds(store: EventStore, kind: Kind) -> list[Event]:
    return store.query(kinds=[kind], limit=None, newest_first=False)


def text_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return str(part.get_content())


async def test_plain_smtp_mail_carries_the_incident_facts(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(
        tmp_path, smtp, alert_stderr_lines=2, status_page_url="http://127.0.0.1:8765/"
    )
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
        tail = ["line 1", "line 2", "Traceback: KeyError 'x'"]
        await bus.publish(
            Event.of("backend", Kind.CRASHED, "exited with 3", exit_code=3, stderr_tail=tail)
        )
        await bus.publish(Event.of("backend", Kind.RESTARTED, "restart 1", reason="crashed"))
        await bus.publish(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "5 restarts in 600s"))
        await await_until(lambda: smtp.messages, what="the alert mail")
        await await_until(lambda: kinds(store, Kind.ALERT_SENT), what="alert-sent event")
    (mail,) = smtp.messages
    assert mail["Subject"] == "[erpwatch] DOWN backend@testhost: restart limit reached"
    text = text_of(mail, "plain")
    for fact in ("backend", "testhost", "restart-limit-reached", "Exit code:     3",
                 "Restarts:      1", "restart reason: crashed", "Traceback: KeyError 'x'",
                 "line 2", "http://127.0.0.1:8765/", "UTC", "RAM"):  # fmt: skip
        assert fact in text, fact
    assert "line 1" not in text  # ERPWATCH_ALERT_STDERR_LINES=2
    assert "Traceback" in text_of(mail, "html")
    (sent,) = kinds(store, Kind.ALERT_SENT)
    assert sent.target == "backend"
    assert sent.details["to"] == ["ops@example.com"]
    assert sent.message.startswith("firing mail sent to ops@example.com: [erpwatch] DOWN")
    assert sent.details["incident"].startswith("backend-")


async def test_incident_mails_form_one_thread_and_recovery_tells_the_outage(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(tmp_path, smtp, alert_group_interval=0)  # the update at once
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "down for 60s"))
        await await_until(lambda: len(smtp.messages) == 1)
        await bus.publish(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up"))
        await await_until(lambda: len(smtp.messages) == 2)
        await bus.publish(Event.of("backend", Kind.RESTARTED, "manual", reason="limit retry"))
        await bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
        await await_until(lambda: len(smtp.messages) == 3, what="recovery mail")
    first, update, recovered = smtp.messages
    assert first["Subject"] == "[erpwatch] DOWN backend@testhost: down"
    assert update["Subject"] == "[erpwatch] UPDATE backend@testhost: restart limit reached"
    assert recovered["Subject"] == "[erpwatch] RECOVERED backend@testhost"
    root = first["Message-ID"]
    assert root and "In-Reply-To" not in first
    assert update["In-Reply-To"] == root and update["References"] == root
    assert recovered["In-Reply-To"] == update["Message-ID"]
    assert recovered["References"].split() == [root, update["Message-ID"]]
    body = text_of(recovered, "plain")
    assert "the outage lasted" in body and "restart reason: limit retry" in body


async def test_crash_loop_limit_and_down_within_57s_give_one_down_mail_and_one_update(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    """The issue's incident (crash loop, restart limit, down within 57 s) through the real
    pipeline, outbox and SMTP server, on fake time: one DOWN mail after the group wait, the
    escalations folded into one update once the group interval has passed, then the
    recovery. The mails name the commands to run and when erpwatch retries."""
    clock = FakeClock()
    origin = clock.now()
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def wall() -> datetime:
        return t0 + timedelta(seconds=clock.now() - origin)

    def iso(seconds: float) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    settings = make_settings(
        tmp_path, smtp, alert_group_wait=10, alert_group_interval=300, alert_recovery_after=60
    )
    db = tmp_path / "erpwatch.db"
    service = AlertService(
        settings, store, bus, clock=clock, wall=wall, hostname="testhost", poll=0.05,
        retry_initial=0.05, retry_max=0.2,
    )  # fmt: skip
    last_id = 0

    async def at(seconds: float, *events: Event) -> None:
        """Move fake time to ``seconds`` after the start; publish ``events`` then, and wait
        until alerting has taken them in (its committed cursor)."""
        nonlocal last_id
        clock.advance(origin + seconds - clock.now())
        for event in events:
            published = await bus.publish(dataclasses.replace(event, ts=wall()))
            assert published.id is not None
            last_id = published.id
        await await_until(lambda: cursor_of(db) >= last_id, what="alerting read the events")

    def holds() -> list[Event]:
        held = kinds(store, Kind.ALERT_HELD)
        return [e for e in held if e.details.get("reason") == "group-interval"]

    crash = Event.of(
        "backend", Kind.CRASHED, "exited with code 1", exit_code=1,
        stderr_tail=["Traceback (most recent call last):", "ConnectionError: no postgres"],
        cause="exit code 1: ConnectionError: no postgres",
    )  # fmt: skip
    restarted = Event.of("backend", Kind.RESTARTED, "restarted (crashed)", reason="crashed")
    await service.start()
    try:
        await at(0, Event.of("backend", Kind.HEALTHY, "healthy"), crash, restarted, crash)
        await at(3, restarted, crash, Event.of(
            "backend", Kind.CRASH_LOOP, "crash loop: 3 crashes within 600s",
            next_retry_at=iso(19), next_retry_in_s=16.0,
        ))  # fmt: skip
        await at(13)  # the group wait since the crash loop
        await await_until(lambda: len(smtp.messages) == 1, what="the DOWN mail")
        limit = Event.of(
            "backend", Kind.RESTART_LIMIT_REACHED, "restart limit reached, not restarting",
            next_retry_at=iso(920), next_retry_in_s=900.0,
        )  # fmt: skip
        await at(20, restarted, crash, limit)
        await at(57, Event.of("backend", Kind.DOWN, "down for 57s (failed)",
                              next_retry_at=iso(920), next_retry_in_s=863.0))  # fmt: skip
        (held,) = await await_until(holds, what="the update held by the interval")
        assert held.details["kinds"] == ["down", "restart-limit-reached"]
        assert len(smtp.messages) == 1 and len(outbox_rows(db)) == 1  # nothing queued
        await at(313)  # the group interval since the DOWN mail (t = 13 s)
        await await_until(lambda: len(smtp.messages) == 2, what="the one update")
        await at(400, Event.of("backend", Kind.STARTED, "started by ops", actor="ops"),
                 Event.of("backend", Kind.HEALTHY, "healthy"))  # fmt: skip
        await at(460)
        await await_until(lambda: len(smtp.messages) == 3, what="the recovery mail")
        await await_until(lambda: len(kinds(store, Kind.ALERT_SENT)) == 3)
    finally:
        await service.stop()
    assert subjects(smtp) == [
        "[erpwatch] DOWN backend@testhost: crash loop",
        "[erpwatch] UPDATE backend@testhost: restart limit reached, down",
        "[erpwatch] RECOVERED backend@testhost",
    ]
    down, update, recovered = (text_of(m, "plain").replace("\r\n", "\n") for m in smtp.messages)
    assert "Cause:         exit code 1: ConnectionError: no postgres" in down
    assert "erpwatch retries by itself at 2026-01-01 12:00:19 UTC (in 6s)" in down
    for command in ("erpwatch logs backend", "erpwatch restart backend",
                    "erpwatch history --target backend"):  # fmt: skip
        assert command in down, command
    assert "erpwatch retries by itself at 2026-01-01 12:15:20 UTC (in 10m 07s)" in update
    for command in ("erpwatch logs backend", "erpwatch start backend",
                    "erpwatch history --target backend"):  # fmt: skip
        assert command in update, command
    assert "the outage lasted 6m 40s" in recovered
    assert "Brought back:  started by ops at 2026-01-01 12:06:40 UTC" in recovered
    assert "Traceback" not in recovered and "Exit code" not in recovered
    assert "Last crash during the outage (not current): exit code 1" in recovered
    html = text_of(smtp.messages[0], "html")
    assert 'style="white-space: pre-wrap; word-break: break-all;' in html


async def test_starttls_and_auth(
    tmp_path: Path, store: EventStore, bus: EventBus, server_tls: ssl.SSLContext,
    cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    server = SmtpServer().start(tls=server_tls, auth=True)
    try:
        settings = make_settings(
            tmp_path, server, smtp_security="starttls", smtp_ca_file=cert[0],
            smtp_username=USER, smtp_password=PASSWORD,
        )  # fmt: skip
        async with running(settings, store, bus) as service:
            await bus.publish(Event.of("backend", Kind.CRASH_LOOP, "3 crashes in 30s"))
            await await_until(lambda: server.messages, what="mail over STARTTLS")
            await await_until(lambda: service.stats()["sent"] == 1)
            stats = service.stats()
    finally:
        server.stop()
    assert stats["transport"] == f"smtp 127.0.0.1:{server.port}" and stats["dead"] == 0
    assert PASSWORD not in caplog.text and PASSWORD not in repr(stats)


async def test_wrong_password_goes_to_dead_letter_with_reason_and_never_leaks(
    tmp_path: Path, store: EventStore, bus: EventBus, server_tls: ssl.SSLContext,
    cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + PASSWORD
    server = SmtpServer().start(tls=server_tls, auth=True)
    try:
        settings = make_settings(
            tmp_path, server, smtp_security="starttls", smtp_ca_file=cert[0],
            smtp_username=USER, smtp_password=wrong,
        )  # fmt: skip
        async with running(settings, store, bus) as service:
            await bus.publish(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up"))
            # the alert-failed alerts once; that mail fails too and is marked recursive
            failed = await await_until(
                lambda: [e for e in kinds(store, Kind.ALERT_FAILED) if e.details.get("recursive")],
                what="the recursive alert-failed",
            )
            await await_until(lambda: service.stats()["pending"] == 0)
            assert service.stats()["dead"] == 2
    finally:
        server.stop()
    rows = outbox_rows(tmp_path / "erpwatch.db")
    assert [r[1] for r in rows] == ["dead", "dead"]
    assert all("authentication refused" in (r[3] or "") for r in rows)
    assert len(kinds(store, Kind.ALERT_FAILED)) == 2 and failed[0].target == "backend"
    assert server.messages == []
    everything = "\n".join(e.message + e.details_json() for e in store.query(limit=None))
    assert wrong not in everything and wrong not in caplog.text
    assert "authentication refused" in caplog.text


async def test_server_down_queues_then_delivers_once_when_it_returns(
    tmp_path: Path, store: EventStore, bus: EventBus
) -> None:
    server = SmtpServer()  # not started yet: connection refused
    settings = make_settings(tmp_path, server)
    db = tmp_path / "erpwatch.db"
    async with running(settings, store, bus) as service:
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        await await_until(lambda: any(r[2] >= 2 for r in outbox_rows(db)), what="retries")
        assert outbox_rows(db)[0][1] == "pending" and service.stats()["failures"] >= 2
        server.start()
        try:
            await await_until(lambda: server.messages, what="delivery after the server is back")
            await await_until(lambda: service.stats()["pending"] == 0)
            await await_until(lambda: kinds(store, Kind.ALERT_SENT))
        finally:
            server.stop()
    assert len(server.messages) == 1
    assert [r[1] for r in outbox_rows(db)] == ["sent"]


async def test_500_event_burst_gives_a_bounded_number_of_mails(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(tmp_path, smtp, alert_group_wait=0.2)
    cycle = [Kind.CRASHED, Kind.RESTARTED, Kind.CRASH_LOOP, Kind.DOWN, Kind.RESTART_LIMIT_REACHED]
    async with running(settings, store, bus) as service:
        for i in range(500):
            await bus.publish(Event.of("backend", cycle[i % 5], f"event {i}"))
        await await_until(lambda: smtp.messages, what="the grouped mail")
        await await_until(lambda: service.stats()["pending"] == 0)
        held = await await_until(lambda: kinds(store, Kind.ALERT_HELD))
    assert 1 <= len(smtp.messages) <= 3
    assert len(store.query(kinds=[str(k) for k in cycle], limit=None)) == 500
    assert any(e.details.get("reason") == "dedup" for e in held)


async def test_hostile_target_and_stderr_are_escaped_and_cannot_inject_headers(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(tmp_path, smtp)
    target = "evil\r\nBcc: victim@example.net\r\n<script>x</script>"
    async with running(settings, store, bus):
        await bus.publish(
            Event.of(target, Kind.CRASHED, "<b>bold</b>", stderr_tail=["<script>alert(1)</script>"])
        )
        await bus.publish(Event.of(target, Kind.CRASH_LOOP, "loop\r\nX-Injected: yes"))
        await await_until(lambda: smtp.messages)
    (mail,) = smtp.messages
    assert smtp.recorder.envelopes == [("erpwatch@example.com", ["ops@example.com"])]
    assert mail["Bcc"] is None and mail["X-Injected"] is None
    assert "\n" not in mail["Subject"] and "\r" not in mail["Subject"]
    html = text_of(mail, "html")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html


async def test_without_smtp_host_mail_is_written_as_eml_files(
    tmp_path: Path, store: EventStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, None)
    mail_dir = tmp_path / "logs" / "mail"
    async with running(settings, store, bus) as service:
        assert f"eml {mail_dir}" in caplog.text
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        files = await await_until(lambda: list(mail_dir.glob("*.eml")))
        assert service.stats()["transport"] == f"eml {mail_dir}"
        (sent,) = await await_until(lambda: kinds(store, Kind.ALERT_SENT), what="alert-sent")
    assert b"[erpwatch] DOWN backend@testhost" in files[0].read_bytes()
    # The event tells the truth: the mail was written to a file, not sent.
    assert f"written to {files[0]}" in sent.message and "not sent" in sent.message
    assert "sent to" not in sent.message
    assert sent.details["transport"] == f"eml {mail_dir}"


async def test_event_committed_while_alerting_was_down_is_alerted_after_restart(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    """The cursor is durable: what was committed after it is read on the next start."""
    settings = make_settings(tmp_path, smtp)
    async with running(settings, store, bus):
        pass  # the first start sets the cursor and persists it
    store.append(Event.of("backend", Kind.DOWN, "down while alerting was not running"))
    async with running(settings, store, bus):
        await await_until(lambda: smtp.messages)
    assert subjects(smtp) == ["[erpwatch] DOWN backend@testhost: down"]


async def test_first_start_begins_at_the_newest_event_and_persists_the_cursor(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    ancient = store.append(Event.of("ancient", Kind.DOWN, "down long before alerting existed"))
    db = tmp_path / "erpwatch.db"
    async with running(make_settings(tmp_path, smtp), store, bus) as service:
        assert cursor_of(db) == ancient.id  # committed by start(), before any event of the run
        now = await bus.publish(Event.of("backend", Kind.DOWN, "down now"))
        await await_until(lambda: smtp.messages, what="the mail about the new event")
        await await_until(lambda: service.stats()["pending"] == 0)
        await await_until(lambda: cursor_of(db) >= (now.id or 0))
    assert subjects(smtp) == ["[erpwatch] DOWN backend@testhost: down"]


LEGACY_INBOX = """CREATE TABLE alert_inbox (
    event_id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL, target TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
    message TEXT NOT NULL, details TEXT NOT NULL
)"""


async def test_events_queued_in_a_legacy_inbox_are_mailed_then_the_table_is_dropped(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    """Upgrade from the commit-hook version: what it had queued is not lost."""
    store.append(Event.of("old", Kind.DOWN, "already mailed by the previous version"))
    queued = store.append(Event.of("backend", Kind.DOWN, "still queued in alert_inbox"))
    with store.transaction() as conn:
        conn.execute(LEGACY_INBOX)
        conn.execute(
            "INSERT INTO alert_inbox VALUES (?, ?, ?, ?, ?, ?, ?)",
            (queued.id, "2024-05-01T12:00:00.000Z", "backend", "down", "critical", "x", "{}"),
        )
    db = tmp_path / "erpwatch.db"
    async with running(make_settings(tmp_path, smtp), store, bus) as service:
        assert "alert_inbox" not in tables(db)
        await await_until(lambda: smtp.messages, what="the mail for the queued event")
        await await_until(lambda: service.stats()["pending"] == 0)
    assert subjects(smtp) == ["[erpwatch] DOWN backend@testhost: down"]
    assert cursor_of(db) >= (queued.id or 0)


def _rename(store: EventStore, old: str, new: str) -> None:
    with store.transaction() as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


async def test_broken_alerting_table_never_stops_or_rolls_back_an_audit_event(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Every step fails while alert_state is gone; publishing does not, and once the table is
    back the pending events are processed: one mail each, none lost, none twice."""
    caplog.set_level(logging.DEBUG, logger="alerting.service")
    db = tmp_path / "erpwatch.db"
    async with running(make_settings(tmp_path, smtp), store, bus) as service:
        before = cursor_of(db)
        await bus.run_in_writer(_rename, store, "alert_state", "alert_state_away")
        down = await bus.publish(Event.of("backend", Kind.DOWN, "down while alerting is broken"))
        assert down.id is not None and store.get(down.id) == down
        (fault,) = await await_until(
            lambda: kinds(store, Kind.WATCHDOG_FAULT), what="the alerting fault, recorded"
        )
        await await_until(
            lambda: sum("failed (" in r.getMessage() for r in caplog.records) >= 2,
            what="the step to fail again",
        )
        limit = await bus.publish(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up"))
        assert store.get(limit.id or 0) == limit  # still committed, still queryable
        assert cursor_of(db) == before and smtp.messages == [] and outbox_rows(db) == []
        await bus.run_in_writer(_rename, store, "alert_state_away", "alert_state")
        await await_until(lambda: len(smtp.messages) >= 2, what="the mails once it works")
        await await_until(lambda: service.stats()["pending"] == 0)
        await await_until(lambda: cursor_of(db) >= (limit.id or 0))
    assert subjects(smtp, "backend") == [
        "[erpwatch] DOWN backend@testhost: down, restart limit reached"
    ]
    assert "[erpwatch] FAULT erpwatch@testhost: internal fault" in subjects(smtp)
    assert fault.target == SYSTEM_TARGET and "no such table: alert_state" in fault.message
    assert len(kinds(store, Kind.WATCHDOG_FAULT)) == 1  # one per failure episode
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "alert pipeline step failed" in errors[0].getMessage()
    assert "works again" in caplog.text


async def test_step_that_raises_commits_nothing_and_its_events_are_processed_later(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The stages ran (in memory) before the raise: the retry starts from the commit."""
    broken = True
    async with running(make_settings(tmp_path, smtp), store, bus) as service:
        render = service.renderer.exec

        def flaky(ctx: Any, notes: Any) -> Any:
            if broken:
                raise RuntimeError("template exploded")
            return render(ctx, notes)

        monkeypatch.setattr(service.renderer, "exec", flaky)
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        await await_until(lambda: kinds(store, Kind.WATCHDOG_FAULT), what="the fault event")
        assert smtp.messages == []
        broken = False
        await await_until(lambda: subjects(smtp, "backend"), what="the mail after the fix")
        await await_until(lambda: service.stats()["pending"] == 0)
    assert subjects(smtp, "backend") == ["[erpwatch] DOWN backend@testhost: down"]
    held = kinds(store, Kind.ALERT_HELD)
    assert not [e for e in held if e.target == "backend" and e.details.get("reason") == "dedup"]


async def test_watchdog_fault_is_mailed_then_recovers_and_a_later_fault_mails_again(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(tmp_path, smtp)
    assert "watchdog-fault" in settings.alert_on  # the default ERPWATCH_ALERT_ON
    fault = Event.of(
        SYSTEM_TARGET,
        Kind.WATCHDOG_FAULT,
        "task resources raised RuntimeError: psutil broke; restarted in 1s",
        task="resources",
    )
    assert fault.severity is Severity.CRITICAL
    async with running(settings, store, bus):
        await bus.publish(fault)
        await await_until(lambda: len(smtp.messages) >= 2, what="fault mail and its recovery")
        await bus.publish(Event.of(SYSTEM_TARGET, Kind.WATCHDOG_FAULT, "task sse raised"))
        await await_until(lambda: len(smtp.messages) >= 3, what="the mail of the next fault")
    first, recovered, again = smtp.messages[:3]
    assert first["Subject"] == "[erpwatch] FAULT erpwatch@testhost: internal fault"
    body = text_of(first, "plain")
    assert "task resources raised RuntimeError: psutil broke" in body
    assert "watchdog-fault" in body and "psutil broke" in text_of(first, "html")
    assert recovered["Subject"] == "[erpwatch] RECOVERED erpwatch@testhost"
    assert recovered["In-Reply-To"] == first["Message-ID"]
    assert again["Subject"] == first["Subject"] and "In-Reply-To" not in again  # new incident
    assert "task sse raised" in text_of(again, "plain")


async def test_silence_holds_and_unsilence_releases(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from watchdog.cli import main

    monkeypatch.setenv("ERPWATCH_DB_PATH", str(tmp_path / "erpwatch.db"))
    assert main(["silence", "backend", "--for", "30m", "--reason", "upgrade"]) == 0
    assert main(["silence", "--list"]) == 0
    assert "backend silenced until" in capsys.readouterr().out
    async with running(make_settings(tmp_path, smtp), store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        held = await await_until(lambda: kinds(store, Kind.ALERT_HELD))
        assert "upgrade" in held[0].message and smtp.messages == []
        assert main(["unsilence", "backend"]) == 0
        await await_until(lambda: smtp.messages, what="the mail once the silence ended")


def test_test_email_command_reports_and_never_prints_the_password(
    tmp_path: Path, server_tls: ssl.SSLContext, cert: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from watchdog.cli import main

    server = SmtpServer().start(tls=server_tls, auth=True)
    env = {
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(server.port), "SMTP_SECURITY": "starttls",
        "SMTP_CA_FILE": str(cert[0]), "SMTP_USERNAME": USER, "SMTP_PASSWORD": PASSWORD,
        "ALERT_TO": "ops@example.com", "LOG_PATH": str(tmp_path / "logs"),
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(f"ERPWATCH_{key}", value)
    try:
        assert main(["test-email"]) == 0
        good = capsys.readouterr().out
        monkeypatch.setenv("ERPWATCH_SMTP_PASSWORD", "nope-" + PASSWORD)
        assert main(["test-email"]) == 1
        bad = capsys.readouterr().out
    finally:
        server.stop()
    assert "password:   set" in good and "sent:" in good
    assert "FAILED (permanent): authentication refused" in bad
    assert PASSWORD not in good + bad
    assert len(server.messages) == 1 and "TEST" in server.messages[0]["Subject"]
    assert PASSWORD.encode() not in server.messages[0].as_bytes()


def _env(tmp_path: Path, server: SmtpServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    env.update(
        PYTHONPATH=str(REPO),
        ERPWATCH_DB_PATH=str(tmp_path / "erpwatch.db"),
        ERPWATCH_LOG_PATH=str(tmp_path / "logs"),
        ERPWATCH_SMTP_HOST="127.0.0.1",
        ERPWATCH_SMTP_PORT=str(server.port),
        ERPWATCH_SMTP_SECURITY="none",
        ERPWATCH_ALERT_TO="ops@example.com",
        ERPWATCH_ALERT_GROUP_WAIT="0.05",
    )
    return env


def test_event_committed_just_before_sigkill_is_mailed_once_after_restart(
    tmp_path: Path,
) -> None:
    """SIGKILL between the event's commit and the pipeline step that would take it."""
    server = SmtpServer().start()
    db = tmp_path / "erpwatch.db"
    env = _env(tmp_path, server)
    try:
        dying = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "alerting" / "alert_process.py"),
             "--publish-and-die", "backend"],
            env=env,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert dying.wait(timeout=30) == -signal.SIGKILL
        with EventStore.open_readonly(db) as events:
            (committed,) = events.query(kinds=[Kind.RESTART_LIMIT_REACHED], limit=None)
        assert committed.id is not None and cursor_of(db) < committed.id  # not yet processed
        assert outbox_rows(db) == []
        second = spawn_alerting(env)
        try:
            wait_until(lambda: [r[1] for r in outbox_rows(db)] == ["sent"], what="delivery")
            wait_until(lambda: cursor_of(db) >= (committed.id or 0))
        finally:
            kill_alerting(second)
        third = spawn_alerting(env)  # nothing left to do: no mail is made or sent again
        try:
            wait_until(lambda: len(server.messages) >= 1)
        finally:
            kill_alerting(third)
        assert [r[1] for r in outbox_rows(db)] == ["sent"]
    finally:
        server.stop()
    assert [m["Subject"] for m in server.messages] == [
        "[erpwatch] DOWN backend@killhost: restart limit reached"
    ]


def test_pending_mail_survives_sigkill_and_is_sent_once(tmp_path: Path) -> None:
    server = SmtpServer()  # down while the first process runs
    db = tmp_path / "erpwatch.db"
    env = _env(tmp_path, server)
    first = spawn_alerting(env, "--publish", "backend")
    try:
        wait_until(lambda: any(r[2] >= 1 for r in outbox_rows(db)), what="a failed attempt")
    finally:
        kill_alerting(first)
    assert [r[1] for r in outbox_rows(db)] == ["pending"]
    server.start()
    try:
        second = spawn_alerting(env)
        try:
            wait_until(lambda: [r[1] for r in outbox_rows(db)] == ["sent"], what="delivery")
        finally:
            kill_alerting(second)
        # A third start sends only its own new mail: the first one is not sent again.
        third = spawn_alerting(env, "--publish", "other")
        try:
            wait_until(lambda: [r[1] for r in outbox_rows(db)] == ["sent", "sent"])
        finally:
            kill_alerting(third)
    finally:
        server.stop()
    subjects = [m["Subject"] for m in server.messages]
    assert subjects == [
        "[erpwatch] DOWN backend@killhost: restart limit reached",
        "[erpwatch] DOWN other@killhost: restart limit reached",
    ]


async def test_a_delivery_worker_that_raises_is_restarted_and_the_mail_still_goes(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    faults: list[str] = []

    async def on_fault(name: str, exc: BaseException) -> None:
        faults.append(name)

    tasks = TaskSupervisor(clock=RealClock(), on_fault=on_fault, backoff=0.01)
    service = AlertService(
        make_settings(tmp_path, smtp),
        store,
        bus,
        hostname="testhost",
        retry_initial=0.05,
        poll=0.05,
        tasks=tasks,
    )
    real_run = service.delivery.run
    calls = 0

    async def run_that_breaks_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("delivery bug")
        await real_run(*args)

    service.delivery.run = run_that_breaks_once  # type: ignore[method-assign,assignment]
    await service.start()
    try:
        await bus.publish(Event.of("backend", Kind.DOWN, "down for 60s"))
        await await_until(lambda: smtp.messages, what="the mail, after the restart")
        assert faults == ["alerting-delivery"]
        assert tasks.dead() == []
    finally:
        await service.stop()
        await tasks.stop()


async def test_apply_settings_sends_the_next_mail_to_the_new_recipients(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    async with running(make_settings(tmp_path, smtp), store, bus) as service:
        await service.apply_settings(
            make_settings(tmp_path, smtp, alert_to=["new-oncall@example.com"])
        )
        await bus.publish(Event.of("backend", Kind.DOWN, "down for 60s"))
        await await_until(lambda: smtp.messages, what="the mail")
    assert smtp.messages[0]["To"] == "new-oncall@example.com"
