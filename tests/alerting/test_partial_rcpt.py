"""A server that accepts a mail for some recipients and refuses others at RCPT TO.

aiosmtplib then returns normally (only when every recipient is refused does it raise): the
accepted recipients are done and never mailed again, a recipient refused with a 4xx is
retried alone with the outbox's backoff, one refused with a 5xx is a dead letter with an
``alert-failed`` naming it. A real aiosmtpd server on loopback, a real SQLite store; time
moves on a `FakeClock` between `Delivery.drain` steps, no sleeps.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from alerting.delivery import Delivery
from alerting.outbox import EventBatch, OutboxRow
from alerting.render import Mail
from tests.alerting.conftest import PASSWORD, USER, Recorder, SmtpServer, make_settings
from tests.alerting.test_delivery_faults import SENDER, make_delivery
from tests.helpers import await_until
from watchdog.bus import EventBus
from watchdog.clock import FakeClock
from watchdog.events import Event, Kind, utcnow
from watchdog.store import EventStore

OPS, ONCALL, GONE = "ops@example.com", "oncall@example.com", "gone@example.com"
BUSY = "450 4.2.1 mailbox temporarily unavailable"
NO_SUCH_USER = "550 5.1.1 no such user here"


@dataclass
class Refusing(Recorder):
    """`Recorder` that answers RCPT TO with ``refuse[address]`` for the addresses listed."""

    refuse: dict[str, str] = field(default_factory=dict)
    rcpt_calls: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        self.rcpt_calls.append(address)
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def refusing() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.recorder = Refusing()
    server.start()
    yield server
    server.stop()


async def queue(delivery: Delivery, recipients: tuple[str, ...]) -> int:
    """One mail to ``recipients`` through the pipeline's own commit; returns its outbox id."""
    outbox, bus = delivery.outbox, delivery.bus
    await bus.run_in_writer(outbox.ensure_schema)
    cursor = await bus.run_in_writer(outbox.cursor)
    to = ", ".join(recipients)
    mail = Mail(
        purpose="alert",
        target="backend",
        incident_id="inc-1",
        recipients=recipients,
        subject="[erpwatch] DOWN backend",
        message_id="<mail-1@erpwatch.test>",
        data=(
            f"From: {SENDER}\r\nTo: {to}\r\nSubject: [erpwatch] DOWN backend\r\n"
            "Message-ID: <mail-1@erpwatch.test>\r\n\r\nbackend is down\r\n"
        ).encode(),
    )
    batch = EventBatch(events=[], start=cursor, end=cursor, read=0)
    (mail_id,) = await bus.run_in_writer(outbox.commit_step, batch, {}, [mail], [], utcnow())
    return int(mail_id)


def rows(tmp_path: Path) -> dict[int, tuple[str, list[str], int, str | None]]:
    """id -> (status, recipients, attempts, last_error), as another connection sees them."""
    with sqlite3.connect(tmp_path / "erpwatch.db") as conn:
        found = conn.execute(
            "SELECT id, status, recipients, attempts, last_error FROM alert_outbox"
        ).fetchall()
    conn.close()
    return {int(i): (str(s), json.loads(r), int(a), e) for i, s, r, a, e in found}


def everything_written(tmp_path: Path, store: EventStore) -> str:
    with sqlite3.connect(tmp_path / "erpwatch.db") as conn:
        log = conn.execute("SELECT message, details FROM alert_log").fetchall()
        errors = conn.execute("SELECT last_error FROM alert_outbox").fetchall()
    conn.close()
    events = [f"{e.message} {e.details_json()}" for e in store.query(limit=None)]
    return repr(log) + repr(errors) + "".join(events)


def events(store: EventStore, kind: Kind) -> list[Event]:
    return store.query(kinds=[kind], limit=None, newest_first=False)


def envelopes(server: SmtpServer) -> list[list[str]]:
    return [to for _sender, to in server.recorder.envelopes]


def refusing_lane(
    tmp_path: Path, refusing: SmtpServer, store: EventStore, bus: EventBus, refuse: dict[str, str]
) -> tuple[Delivery, Refusing, FakeClock]:
    """A mail lane on a fake clock to the refusing server, which answers RCPT TO ``refuse``."""
    recorder = refusing.recorder
    assert isinstance(recorder, Refusing)
    recorder.refuse.update(refuse)
    clock = FakeClock()
    return make_delivery(tmp_path, store, bus, refusing.port, clock), recorder, clock


def next_try_in(delivery: Delivery, outbox_id: int) -> float:
    return delivery.retry_at[outbox_id] - delivery.clock.now()


async def test_recipient_refused_with_450_is_retried_alone_and_the_accepted_one_mailed_once(
    tmp_path: Path, refusing: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    delivery, recorder, clock = refusing_lane(tmp_path, refusing, store, bus, {ONCALL: BUSY})
    mail_id = await queue(delivery, (OPS, ONCALL))

    assert await delivery.drain() == 1
    assert envelopes(refusing) == [[OPS]]
    state = rows(tmp_path)
    assert state[mail_id][:3] == ("sent", [OPS], 1)
    ((retry_id, (status, to, attempts, error)),) = [
        (i, r) for i, r in state.items() if i != mail_id
    ]
    assert (status, to, attempts) == ("pending", [ONCALL], 1)
    assert error is not None and "450" in error and ONCALL in error
    (sent,) = events(store, Kind.ALERT_SENT)
    assert sent.details["to"] == [OPS] and ONCALL not in sent.message
    assert events(store, Kind.ALERT_FAILED) == []
    assert next_try_in(delivery, retry_id) == delivery.retry_initial

    assert await delivery.drain() == 0  # not due yet: nobody is mailed
    assert envelopes(refusing) == [[OPS]]

    del recorder.refuse[ONCALL]  # the mailbox is back
    clock.advance(next_try_in(delivery, retry_id))
    assert await delivery.drain() == 1
    assert await delivery.drain() == 0
    assert envelopes(refusing) == [[OPS], [ONCALL]]  # each exactly once
    assert [m["Message-ID"] for m in refusing.messages] == ["<mail-1@erpwatch.test>"] * 2
    state = rows(tmp_path)
    assert state[mail_id][:3] == ("sent", [OPS], 1)
    assert state[retry_id][:3] == ("sent", [ONCALL], 2)
    assert [e.details["to"] for e in events(store, Kind.ALERT_SENT)] == [[OPS], [ONCALL]]
    assert events(store, Kind.ALERT_FAILED) == []
    assert delivery.sent == 2 and delivery.dead == 0


async def test_recipient_refused_with_550_is_a_dead_letter_named_in_alert_failed(
    tmp_path: Path, refusing: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    delivery, recorder, clock = refusing_lane(tmp_path, refusing, store, bus, {GONE: NO_SUCH_USER})
    mail_id = await queue(delivery, (OPS, GONE))

    assert await delivery.drain() == 1
    state = rows(tmp_path)
    assert state[mail_id][:3] == ("sent", [OPS], 1)
    ((dead_id, (status, to, attempts, error)),) = [(i, r) for i, r in state.items() if i != mail_id]
    assert (status, to, attempts) == ("dead", [GONE], 1)
    assert error is not None and "550" in error
    (failed,) = events(store, Kind.ALERT_FAILED)
    assert failed.details["to"] == [GONE] and failed.details["outbox_ids"] == [dead_id]
    assert "550" in failed.details["reason"] and "no such user" in failed.details["reason"]
    assert GONE in failed.details["reason"]
    (sent,) = events(store, Kind.ALERT_SENT)
    assert sent.details["to"] == [OPS] and GONE not in sent.message
    assert delivery.dead == 1 and dead_id not in delivery.retry_at

    clock.advance(delivery.retry_max)
    assert await delivery.drain() == 0  # a dead letter is never retried
    assert envelopes(refusing) == [[OPS]] and recorder.rcpt_calls == [OPS, GONE]


async def test_mixed_refusals_over_auth_split_three_ways_and_never_show_the_password(
    tmp_path: Path,
    store: EventStore,
    bus: EventBus,
    cert: tuple[Path, Path],
    server_tls: ssl.SSLContext,
) -> None:
    clock = FakeClock()
    server = SmtpServer()
    recorder = Refusing(refuse={ONCALL: BUSY, GONE: f"550 5.7.1 relay denied for {PASSWORD}"})
    server.recorder = recorder
    server.start(tls=server_tls, auth=True)
    try:
        delivery = make_delivery(
            tmp_path,
            store,
            bus,
            server.port,
            clock,
            smtp_security="starttls",
            smtp_ca_file=cert[0],
            smtp_username=USER,
            smtp_password=PASSWORD,
        )
        mail_id = await queue(delivery, (OPS, ONCALL, GONE))
        assert await delivery.drain() == 1
        del recorder.refuse[ONCALL]
        clock.advance(delivery.retry_max)
        assert await delivery.drain() == 1
        assert await delivery.drain() == 0
    finally:
        server.stop()
    assert envelopes(server) == [[OPS], [ONCALL]]
    state = rows(tmp_path)
    assert state[mail_id][:2] == ("sent", [OPS])
    assert sorted(r[:2] for i, r in state.items() if i != mail_id) == [
        ("dead", [GONE]),
        ("sent", [ONCALL]),
    ]
    (failed,) = events(store, Kind.ALERT_FAILED)
    assert failed.details["to"] == [GONE] and "relay denied for ***" in failed.details["reason"]
    assert [e.details["to"] for e in events(store, Kind.ALERT_SENT)] == [[OPS], [ONCALL]]
    assert PASSWORD not in everything_written(tmp_path, store)


@pytest.mark.parametrize(("reply", "status"), [(BUSY, "pending"), (NO_SUCH_USER, "dead")])
async def test_every_recipient_refused_keeps_the_whole_mail_classified_as_before(
    reply: str,
    status: str,
    tmp_path: Path,
    refusing: SmtpServer,
    store: EventStore,
    bus: EventBus,
) -> None:
    delivery, _, _ = refusing_lane(tmp_path, refusing, store, bus, {OPS: reply, ONCALL: reply})
    mail_id = await queue(delivery, (OPS, ONCALL))
    assert await delivery.drain() == 0
    ((only_id, (got, to, attempts, error)),) = rows(tmp_path).items()
    assert (only_id, got, to, attempts) == (mail_id, status, [OPS, ONCALL], 1)
    assert error is not None and "SMTPRecipientsRefused" in error
    assert refusing.messages == [] and events(store, Kind.ALERT_SENT) == []
    assert len(events(store, Kind.ALERT_FAILED)) == (status == "dead")


async def test_partial_acceptance_whose_commit_fails_is_recorded_later_and_not_resent(
    tmp_path: Path, refusing: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    delivery, _, _ = refusing_lane(tmp_path, refusing, store, bus, {ONCALL: BUSY})
    mail_id = await queue(delivery, (OPS, ONCALL))
    real = delivery.outbox.mark_partly_sent
    calls = 0

    def failing_once(
        row: OutboxRow, refused: list[tuple[str, ...]], wall: datetime, transport: str
    ) -> tuple[OutboxRow, list[OutboxRow]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(row, refused, wall, transport)

    delivery.outbox.mark_partly_sent = failing_once  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):  # a database fault, not a mail failure
        await delivery.drain()
    assert rows(tmp_path)[mail_id][:3] == ("pending", [OPS, ONCALL], 0)
    assert envelopes(refusing) == [[OPS]]
    assert await delivery.drain() == 0  # only the commit is retried, not the mail
    assert envelopes(refusing) == [[OPS]]
    state = rows(tmp_path)
    assert state[mail_id][:3] == ("sent", [OPS], 1)
    assert [r[:3] for i, r in state.items() if i != mail_id] == [("pending", [ONCALL], 1)]
    assert [e.details["to"] for e in events(store, Kind.ALERT_SENT)] == [[OPS]]


async def test_the_direct_store_failing_mail_splits_a_partial_refusal_too(
    tmp_path: Path, refusing: SmtpServer
) -> None:
    """The mail sent directly while the store fails (no outbox row to split): the accepted
    recipient is mailed once, the 4xx one retried alone until it goes, the 5xx one failed."""
    from tests.alerting.test_store_trouble import fill_up, running, store_mails

    recorder = refusing.recorder
    assert isinstance(recorder, Refusing)
    recorder.refuse.update({ONCALL: BUSY, GONE: NO_SUCH_USER})
    settings = make_settings(tmp_path, refusing, alert_to=[OPS, ONCALL, GONE])
    async with running(settings, tmp_path / "erpwatch.db") as (service, bus, store):
        await bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
        await bus.run_in_writer(fill_up, store)
        await bus.publish(Event.of("backend", Kind.CRASHED, "crashed", pad="p" * 5000))
        await await_until(lambda: store_mails(refusing), what="the direct mail")
        assert envelopes(refusing) == [[OPS]]
        await await_until(lambda: recorder.rcpt_calls.count(ONCALL) >= 2, what="a retry")
        del recorder.refuse[ONCALL]  # its mailbox is back
        await await_until(lambda: len(envelopes(refusing)) == 2, what="the retry accepted")
        assert envelopes(refusing) == [[OPS], [ONCALL]]  # GONE never again, OPS once
        assert recorder.rcpt_calls.count(GONE) == 1
        await await_until(lambda: service.direct_sent == 2, what="the retry's QUIT")
