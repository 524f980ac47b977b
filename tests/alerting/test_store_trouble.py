"""A hostile world for the event store: the database is full (``PRAGMA max_page_count``,
real SQLite behaviour: SQLITE_FULL) or the disk is (a tiny tmpfs, when we may mount one).

Supervision goes on: publish never raises, events wait in memory and are written in order
when the store works again; ``store_problem()`` says degraded meanwhile; alerting mails the
trouble once per episode *directly* (a real SMTP server on loopback), since its outbox lives
in the failing database.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from alerting.outbox import Outbox
from alerting.service import AlertService
from tests.alerting.conftest import SmtpServer, make_settings
from tests.helpers import await_until, tmpfs
from watchdog.bus import EventBus
from watchdog.events import Event, Kind
from watchdog.settings import Settings
from watchdog.store import EventStore


@asynccontextmanager
async def running(
    settings: Settings, db: Path, *, buffer_limit: int = 10_000
) -> AsyncIterator[tuple[AlertService, EventBus, EventStore]]:
    """Store, a bus that retries a failing store every 10-50 ms, and the alert service."""
    store = EventStore(db)
    bus = EventBus(store, retry_initial=0.01, retry_max=0.05, buffer_limit=buffer_limit)
    service = AlertService(
        settings, store, bus, hostname="testhost", retry_initial=0.05, retry_max=0.2, poll=0.05
    )
    await service.start()
    try:
        yield service, bus, store
    finally:
        await service.stop()
        await bus.close()
        store.close()


def fill_up(store: EventStore) -> None:
    """No page beyond the current count: growing the file fails with SQLITE_FULL."""
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def free_up(store: EventStore) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def big(target: str, kind: Kind, n: int) -> Event:
    """An event that needs new pages (its details overflow a page)."""
    return Event.of(target, kind, f"{kind} {n}", n=n, pad="p" * 5000)


def outbox_rows(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT purpose, status FROM alert_outbox ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(str(a), str(b)) for a, b in rows]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def store_mails(smtp: SmtpServer) -> list[EmailMessage]:
    return [m for m in smtp.messages if "STORE FAILING" in str(m["Subject"])]


async def test_full_store_mails_once_directly_and_every_event_is_written_in_order(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    settings = make_settings(tmp_path, smtp)
    db = tmp_path / "erpwatch.db"
    async with running(settings, db) as (service, bus, store):
        await bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
        await bus.run_in_writer(fill_up, store)
        held = [await bus.publish(big("backend", Kind.CRASHED, n)) for n in range(20)]
        assert all(e.id is None for e in held)  # waiting in memory, publish did not raise
        problem = bus.store_problem()  # what /health reports: degraded
        assert problem is not None and "SQLITE_FULL" in problem

        await await_until(lambda: store_mails(smtp), timeout=10, what="the direct mail")
        (mail,) = smtp.messages
        subject = str(mail["Subject"])
        assert subject.startswith("[erpwatch] STORE FAILING on testhost: event store failing")
        text = text_of(mail)
        for fact in ("database or disk is full", "SQLITE_FULL", str(db), "sent directly",
                     "Supervision goes on", "kept in memory"):  # fmt: skip
            assert fact in text, fact
        await await_until(lambda: service.direct_sent == 1, timeout=10, what="its QUIT")

        # The trouble goes on: alerting events pile up, no second mail, nothing queued.
        for n in range(20, 40):
            await bus.publish(big("backend", Kind.CRASH_LOOP if n % 2 else Kind.DOWN, n))
        assert len(smtp.messages) == 1 and outbox_rows(db) == []
        assert bus.buffered >= 40

        await bus.run_in_writer(free_up, store)
        await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
        stored = store.query(limit=None, newest_first=False)
        kinds = [e.kind for e in stored]
        assert kinds[:2] == ["healthy", Kind.STORE_FAILING]
        recovered = kinds.index(Kind.STORE_RECOVERED)
        numbered = [e.details["n"] for e in stored[:recovered] if "n" in e.details]
        assert numbered == list(range(40))  # every buffered event, in publish order
        assert stored[recovered].details["written"] >= 40
        ids = [e.id or 0 for e in stored]
        assert ids == sorted(ids)
        (direct,) = [e for e in stored if e.kind == Kind.ALERT_SENT]
        assert direct.details["direct"] is True and direct.details["purpose"] == "store-failing"

        # Alerting resumes and mails the incident the buffered events describe (outbox).
        await await_until(lambda: len(smtp.messages) == 2, timeout=10, what="incident mail")
        assert str(smtp.messages[1]["Subject"]).startswith("[erpwatch] DOWN backend@testhost")
        await await_until(lambda: outbox_rows(db) == [("firing", "sent")], what="sent")
        assert store.query(kinds=[Kind.WATCHDOG_FAULT]) == []  # not an alerting fault
    assert len(store_mails(smtp)) == 1


async def test_each_trouble_episode_is_mailed_once(tmp_path: Path, smtp: SmtpServer) -> None:
    settings = make_settings(tmp_path, smtp)
    async with running(settings, tmp_path / "erpwatch.db") as (service, bus, store):
        for episode in (1, 2):
            await bus.run_in_writer(fill_up, store)
            for n in range(5):
                await bus.publish(big("backend", Kind.HEALTHY, n))
            assert bus.store_problem() is not None

            def mailed(n: int = episode) -> bool:
                return service.direct_sent == n

            await await_until(mailed, timeout=10, what="the direct mail")
            await bus.run_in_writer(free_up, store)
            await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")
        assert len(store_mails(smtp)) == 2
        ids = {str(m["Message-ID"]) for m in store_mails(smtp)}
        assert len(ids) == 2
        assert len(store.query(kinds=[Kind.STORE_RECOVERED], limit=None)) == 2


async def test_smtp_down_during_the_trouble_the_direct_mail_is_retried_until_it_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = SmtpServer()  # not started yet: connection refused
    settings = make_settings(tmp_path, server)
    caplog.set_level(logging.WARNING, logger="alerting.service")
    async with running(settings, tmp_path / "erpwatch.db") as (service, bus, store):
        await bus.run_in_writer(fill_up, store)
        await bus.publish(big("backend", Kind.DOWN, 1))
        await await_until(lambda: service.direct_failures >= 2, timeout=10, what="retries")
        assert service.direct_sent == 0
        server.start()
        try:
            await await_until(lambda: server.messages, timeout=10, what="the mail")
            await await_until(lambda: service.direct_sent == 1, timeout=10, what="its QUIT")
        finally:
            server.stop()
        assert len(server.messages) == 1 and service.direct_sent == 1
        assert "store-failing mail via" in caplog.text  # each failed try is logged
        await bus.run_in_writer(free_up, store)
        await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")


async def test_without_smtp_the_direct_mail_is_an_eml_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    mail_dir = tmp_path / "logs" / "mail"
    async with running(settings, tmp_path / "erpwatch.db") as (_service, bus, store):
        await bus.run_in_writer(fill_up, store)
        await bus.publish(big("backend", Kind.DOWN, 1))
        files = await await_until(lambda: list(mail_dir.glob("*.eml")), what="the .eml file")
        assert b"STORE FAILING on testhost" in files[0].read_bytes()
        await bus.run_in_writer(free_up, store)
        await await_until(lambda: bus.store_problem() is None, timeout=10, what="recovery")


async def test_outbox_hands_out_nothing_while_the_store_cannot_record_a_delivery(
    tmp_path: Path,
) -> None:
    with EventStore(tmp_path / "erpwatch.db") as store:
        outbox = Outbox(store)
        outbox.ensure_schema()
        with store.transaction() as conn:
            conn.execute(
                "INSERT INTO alert_outbox (created, purpose, target, recipients, subject, "
                "message_id, data, trigger_kinds) VALUES ('t', 'firing', 'backend', "
                "'[\"ops@example.com\"]', 's', '<m@h>', x'00', '[]')"
            )
        outbox.paused = "database or disk is full (SQLITE_FULL)"
        assert outbox.due(10) == []  # a mail sent now could not be marked sent
        outbox.paused = None
        assert [row.mail.message_id for row in outbox.due(10)] == ["<m@h>"]


# --- a real full disk -------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    with tmpfs(tmp_path / "tiny", "4m") as mount:
        yield mount


def fill_disk(directory: Path) -> Path:
    """Write a filler file until the file system says ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


async def test_disk_full_on_a_tiny_filesystem_then_freed(tiny_fs: Path, smtp: SmtpServer) -> None:
    settings = make_settings(tiny_fs, smtp, log_path=tiny_fs / "logs")
    async with running(settings, tiny_fs / "erpwatch.db") as (service, bus, store):
        await bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
        filler = fill_disk(tiny_fs)
        published = 0
        while bus.store_problem() is None:  # the WAL may reuse its space for a while
            await bus.publish(big("backend", Kind.CRASHED, published))
            published += 1
            assert published < 5000, "the full disk never failed a write"
        problem = bus.store_problem()
        assert problem is not None and ("full" in problem or "I/O" in problem), problem
        for n in range(published, published + 10):
            await bus.publish(big("backend", Kind.CRASHED, n))
        await await_until(lambda: store_mails(smtp), timeout=10, what="the direct mail")
        assert "disk" in text_of(store_mails(smtp)[0])

        filler.unlink()
        await await_until(lambda: bus.store_problem() is None, timeout=20, what="recovery")
        numbered = [
            e.details["n"]
            for e in store.query(kinds=[Kind.CRASHED], limit=None, newest_first=False)
        ]
        assert numbered == list(range(published + 10))
        assert store.query(kinds=[Kind.STORE_RECOVERED], limit=1)
        await await_until(lambda: service.direct_sent == 1, timeout=10, what="its QUIT")
