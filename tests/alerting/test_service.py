"""End to end: bus → pipeline → SQLite outbox → a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from alerting.outbox import Outbox, inbox_hook
from alerting.service import AlertService
from tests.alerting.conftest import PASSWORD, USER, SmtpServer
from tests.helpers import await_until, wait_until
from watchdog.bus import EventBus
from watchdog.config import Settings, load_settings
from watchdog.events import Event, Kind
from watchdog.store import EventStore

REPO = Path(__file__).resolve().parents[2]


def make_settings(tmp_path: Path, smtp: SmtpServer | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "log_path": tmp_path / "logs",
        "db_path": tmp_path / "erpwatch.db",
        "alert_to": ["ops@example.com"],
        "alert_from": "erpwatch@example.com",
        "alert_group_wait": 0.05,
        "alert_recovery_after": 0.2,
    }
    if smtp is not None:
        values.update(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none")
    values.update(overrides)
    return load_settings(**values)


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
    assert sent.details["incident"].startswith("backend-")


async def test_incident_mails_form_one_thread_and_recovery_tells_the_outage(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(tmp_path, smtp)
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
    assert update["Subject"] == "[erpwatch] DOWN backend@testhost: restart limit reached"
    assert recovered["Subject"] == "[erpwatch] RECOVERED backend@testhost"
    root = first["Message-ID"]
    assert root and "In-Reply-To" not in first
    assert update["In-Reply-To"] == root and update["References"] == root
    assert recovered["In-Reply-To"] == update["Message-ID"]
    assert recovered["References"].split() == [root, update["Message-ID"]]
    body = text_of(recovered, "plain")
    assert "The outage lasted" in body and "restart reason: limit retry" in body


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
    assert b"[erpwatch] DOWN backend@testhost" in files[0].read_bytes()


async def test_event_committed_before_a_crash_is_alerted_after_restart(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    """The inbox row is written in the event's transaction: nothing else is needed."""
    outbox = Outbox(store)
    await bus.run_in_writer(outbox.ensure_schema)
    store.append(Event.of("backend", Kind.DOWN, "down before the crash"), [inbox_hook])
    async with running(make_settings(tmp_path, smtp), store, bus):
        await await_until(lambda: smtp.messages)
    assert "down" in smtp.messages[0]["Subject"]


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


def _spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "alerting" / "alert_process.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_pending_mail_survives_sigkill_and_is_sent_once(tmp_path: Path) -> None:
    server = SmtpServer()  # down while the first process runs
    db = tmp_path / "erpwatch.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    env.update(
        PYTHONPATH=str(REPO),
        ERPWATCH_DB_PATH=str(db),
        ERPWATCH_LOG_PATH=str(tmp_path / "logs"),
        ERPWATCH_SMTP_HOST="127.0.0.1",
        ERPWATCH_SMTP_PORT=str(server.port),
        ERPWATCH_SMTP_SECURITY="none",
        ERPWATCH_ALERT_TO="ops@example.com",
        ERPWATCH_ALERT_GROUP_WAIT="0.05",
    )
    first = _spawn(env, "--publish", "backend")
    try:
        wait_until(lambda: any(r[2] >= 1 for r in outbox_rows(db)), what="a failed attempt")
    finally:
        _kill(first)
    assert [r[1] for r in outbox_rows(db)] == ["pending"]
    server.start()
    try:
        second = _spawn(env)
        try:
            wait_until(lambda: [r[1] for r in outbox_rows(db)] == ["sent"], what="delivery")
        finally:
            _kill(second)
        # A third start sends only its own new mail: the first one is not sent again.
        third = _spawn(env, "--publish", "other")
        try:
            wait_until(lambda: [r[1] for r in outbox_rows(db)] == ["sent", "sent"])
        finally:
            _kill(third)
    finally:
        server.stop()
    subjects = [m["Subject"] for m in server.messages]
    assert subjects == [
        "[erpwatch] DOWN backend@killhost: restart limit reached",
        "[erpwatch] DOWN other@killhost: restart limit reached",
    ]
