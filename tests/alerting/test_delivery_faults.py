"""SMTP faults during delivery are transient failures of the mail, never of the worker.

Real servers on loopback: aiosmtpd (`SmtpServer`) for well-formed replies, and `RawSmtp`, an
asyncio TCP server speaking just enough SMTP to misbehave (drop the connection mid-DATA,
answer garbage, never greet). Backoff is read on a `FakeClock` by stepping `Delivery.drain`;
no wall-clock asserts, no sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from email import message_from_bytes, policy
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from alerting.delivery import Delivery
from alerting.outbox import EventBatch, Outbox, OutboxRow
from alerting.render import Mail
from alerting.transport import SmtpTransport
from tests.alerting.conftest import SmtpServer
from tests.helpers import await_until, free_port
from watchdog.bus import EventBus
from watchdog.clock import Clock, FakeClock, RealClock
from watchdog.config import load_settings
from watchdog.events import Event, Kind, utcnow
from watchdog.store import EventStore

SENDER = "erpwatch@example.com"
DROP = "drop"  # RawSmtp: close the connection in the middle of DATA
ACCEPT = "250 2.0.0 queued"
ACCEPT_AND_CLOSE = "accept-and-close"  # RawSmtp: 250, then hang up (one mail per connection)
USER, PASSWORD = "alerts", "s3cr3t-Pa55word-never-shown"

DataPolicy = Callable[[int, int], Awaitable[str]]  # (connection, mail in it) -> reply | DROP


async def accept_all(connection: int, mail: int) -> str:
    return ACCEPT


class RawSmtp:
    """A loopback SMTP server of a few lines: per connection and mail, ``on_data`` decides
    the answer after DATA (a reply line, or `DROP` after the first line of the message)."""

    def __init__(
        self,
        *,
        on_data: DataPolicy = accept_all,
        ehlo: bytes | None = b"250 raw.example\r\n",
        greet: bool = True,
        auth_echo: bool = False,
    ) -> None:
        self.on_data = on_data
        self.ehlo = ehlo  # None: hang up instead of answering EHLO
        self.greet = greet
        self.auth_echo = auth_echo  # answer AUTH with garbage that repeats the client's line
        self.connections = 0
        self.accepted: list[bytes] = []  # messages answered with 2xx, in order
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RawSmtp:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def message_ids(self) -> list[str]:
        return [
            str(message_from_bytes(m, policy=policy.default)["Message-ID"]) for m in self.accepted
        ]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        connection, mails = self.connections, 0
        try:
            if not self.greet:
                await reader.read()  # silent until the client gives up
                return
            writer.write(b"220 raw.example ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    if self.ehlo is None:
                        return
                    writer.write(self.ehlo)
                elif verb == b"AUTH" and self.auth_echo:
                    writer.write(b"what is " + line)
                elif verb == b"DATA":
                    mails += 1
                    writer.write(b"354 end with <CRLF>.<CRLF>\r\n")
                    await writer.drain()
                    reply = await self.on_data(connection, mails)
                    if reply == DROP:
                        await reader.readline()  # the first line of the message arrived...
                        return  # ...and the connection is gone, mid-DATA
                    body = await self._body(reader)
                    if reply == ACCEPT_AND_CLOSE:
                        self.accepted.append(body)
                        writer.write(ACCEPT.encode() + b"\r\n")
                        return
                    if reply.startswith("2"):
                        self.accepted.append(body)
                    writer.write(reply.encode() + b"\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:  # MAIL, RCPT, RSET, NOOP
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    @staticmethod
    async def _body(reader: asyncio.StreamReader) -> bytes:
        lines: list[bytes] = []
        while (line := await reader.readline()) not in (b".\r\n", b""):
            lines.append(line[1:] if line.startswith(b"..") else line)
        return b"".join(lines)


# --- helpers ------------------------------------------------------------------------------


def make_delivery(
    tmp_path: Path,
    store: EventStore,
    bus: EventBus,
    port: int,
    clock: Clock,
    **settings: Any,
) -> Delivery:
    values: dict[str, Any] = {
        "log_path": tmp_path / "logs",
        "db_path": tmp_path / "erpwatch.db",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "smtp_timeout": 5.0,
    }
    values.update(settings)
    transport = SmtpTransport(load_settings(**values))
    return Delivery(Outbox(store), bus, transport, SENDER, clock, retry_initial=1.0, retry_max=4.0)


async def queue(delivery: Delivery, count: int) -> list[int]:
    """Put ``count`` mails into the outbox through the pipeline's own commit (no events)."""
    outbox, bus = delivery.outbox, delivery.bus
    await bus.run_in_writer(outbox.ensure_schema)
    cursor = await bus.run_in_writer(outbox.cursor)
    mails = [
        Mail(
            purpose="alert",
            target="backend",
            incident_id=f"inc-{n}",
            recipients=("ops@example.com",),
            subject=f"[erpwatch] DOWN backend #{n}",
            message_id=f"<mail-{n}@erpwatch.test>",
            data=(
                f"From: {SENDER}\r\nTo: ops@example.com\r\nSubject: [erpwatch] DOWN backend #{n}"
                f"\r\nMessage-ID: <mail-{n}@erpwatch.test>\r\n\r\nbackend is down ({n})\r\n"
            ).encode(),
        )
        for n in range(count)
    ]
    batch = EventBatch(events=[], start=cursor, end=cursor, read=0)
    ids: list[int] = await bus.run_in_writer(outbox.commit_step, batch, {}, mails, [], utcnow())
    return ids


def rows(tmp_path: Path) -> dict[int, tuple[str, int, str | None]]:
    """Outbox rows as another connection sees them: id -> (status, attempts, last_error)."""
    with sqlite3.connect(tmp_path / "erpwatch.db") as conn:
        found = conn.execute("SELECT id, status, attempts, last_error FROM alert_outbox").fetchall()
    conn.close()
    return {int(i): (str(s), int(a), e) for i, s, a, e in found}


def sent_decisions(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "erpwatch.db") as conn:
        (n,) = conn.execute("SELECT count(*) FROM alert_log WHERE decision = 'sent'").fetchone()
    conn.close()
    return int(n)


def events(store: EventStore, kind: Kind) -> list[Event]:
    return store.query(kinds=[kind], limit=None, newest_first=False)


def assert_no_worker_failure(caplog: pytest.LogCaptureFixture) -> None:
    assert "worker failed" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "Traceback" not in caplog.text


def next_try_in(delivery: Delivery, outbox_id: int) -> float:
    return delivery.retry_at[outbox_id] - delivery.clock.now()


# --- (1) EOF in the middle of DATA ----------------------------------------------------------


async def test_connection_closed_mid_data_is_retried_and_the_mail_delivered_exactly_once(
    tmp_path: Path, store: EventStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    second_try = asyncio.Event()
    release = asyncio.Event()

    async def drop_first_then_accept(connection: int, mail: int) -> str:
        if connection == 1:
            return DROP
        second_try.set()
        await release.wait()  # holds the 250 until the test has looked at the row
        return ACCEPT

    caplog.set_level(logging.INFO)
    async with RawSmtp(on_data=drop_first_then_accept) as server:
        delivery = make_delivery(tmp_path, store, bus, server.port, RealClock())
        delivery.retry_initial, delivery.retry_max = 0.05, 0.2
        (mail_id,) = await queue(delivery, 1)
        worker = asyncio.create_task(delivery.run(poll=0.05))
        try:
            await await_until(second_try.is_set, what="the second attempt reaching DATA")
            status, attempts, first_error = rows(tmp_path)[mail_id]
            assert (status, attempts) == ("pending", 1)
            assert first_error is not None and "SMTPServerDisconnected" in first_error
            assert server.accepted == []
            release.set()
            await await_until(lambda: rows(tmp_path)[mail_id][0] == "sent", what="sent")
            await await_until(lambda: events(store, Kind.ALERT_SENT), what="alert-sent")
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    assert rows(tmp_path)[mail_id][:2] == ("sent", 2)
    assert server.message_ids() == ["<mail-0@erpwatch.test>"]
    assert server.connections == 2
    assert sent_decisions(tmp_path) == 1 and len(events(store, Kind.ALERT_SENT)) == 1
    assert delivery.sent == 1 and delivery.dead == 0 and delivery.failures == 1
    assert events(store, Kind.ALERT_FAILED) == []
    assert first_error in caplog.text  # the transient failure is logged, as a warning
    assert_no_worker_failure(caplog)


# --- (2) garbage, growing backoff -----------------------------------------------------------


async def test_garbage_answer_to_ehlo_is_transient_counted_and_retried_with_growing_delay(
    tmp_path: Path, store: EventStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    async with RawSmtp(ehlo=b"hello, whoever you are\r\n") as server:
        delivery = make_delivery(tmp_path, store, bus, server.port, clock)
        (mail_id,) = await queue(delivery, 1)
        delays: list[float] = []
        for attempt in range(1, 5):
            assert await delivery.drain() == 0
            status, attempts, error = rows(tmp_path)[mail_id]
            assert (status, attempts, server.connections) == ("pending", attempt, attempt)
            assert error is not None and "Malformed SMTP response" in error
            delays.append(next_try_in(delivery, mail_id))
            clock.advance(delays[-1] - 0.01)
            assert await delivery.drain() == 0  # not due yet: no connection, nothing counted
            assert server.connections == attempt and rows(tmp_path)[mail_id][1] == attempt
            clock.advance(0.01)
    assert delays == [1.0, 2.0, 4.0, 4.0]  # retry_initial doubling, capped at retry_max
    assert delivery.dead == 0 and events(store, Kind.ALERT_FAILED) == []
    assert_no_worker_failure(caplog)


async def test_garbage_answer_to_auth_is_transient_and_never_shows_the_password(
    tmp_path: Path, store: EventStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    ehlo = b"250-raw.example\r\n250 AUTH PLAIN LOGIN\r\n"
    async with RawSmtp(ehlo=ehlo, auth_echo=True) as server:
        delivery = make_delivery(
            tmp_path,
            store,
            bus,
            server.port,
            FakeClock(),
            smtp_username=USER,
            smtp_password=PASSWORD,
        )
        (mail_id,) = await queue(delivery, 1)
        assert await delivery.drain() == 0
    status, attempts, error = rows(tmp_path)[mail_id]
    assert (status, attempts) == ("pending", 1)
    assert error is not None and "Malformed SMTP response" in error and "***" in error
    on_the_wire = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    everything = error + caplog.text + "".join(e.details_json() for e in store.query(limit=None))
    assert PASSWORD not in everything and on_the_wire not in everything
    assert_no_worker_failure(caplog)


@pytest.mark.parametrize("fault", ["refused", "closed-after-greeting", "silent", "tls-to-plain"])
async def test_connection_fault_is_a_transient_failure_of_the_mail(
    fault: str,
    tmp_path: Path,
    store: EventStore,
    bus: EventBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings: dict[str, Any] = {}
    if fault == "silent":
        settings["smtp_timeout"] = 0.2  # a server that never greets: the connect times out
    if fault == "tls-to-plain":
        settings["smtp_security"] = "tls"  # a TLS handshake against a plain-text server
    ehlo = None if fault == "closed-after-greeting" else b"250 raw.example\r\n"
    async with RawSmtp(greet=fault != "silent", ehlo=ehlo) as server:
        port = free_port() if fault == "refused" else server.port
        delivery = make_delivery(tmp_path, store, bus, port, FakeClock(), **settings)
        (mail_id,) = await queue(delivery, 1)
        assert await delivery.drain() == 0
    status, attempts, error = rows(tmp_path)[mail_id]
    assert (status, attempts) == ("pending", 1), error
    assert error and next_try_in(delivery, mail_id) == delivery.retry_initial
    assert server.accepted == [] and events(store, Kind.ALERT_FAILED) == []
    assert_no_worker_failure(caplog)


# --- (3) one connection per batch, lost in the middle ---------------------------------------


async def test_connection_lost_after_the_first_of_three_sends_each_exactly_once(
    tmp_path: Path, store: EventStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def accept_one_then_drop(connection: int, mail: int) -> str:
        return DROP if (connection, mail) == (1, 2) else ACCEPT

    clock = FakeClock()
    async with RawSmtp(on_data=accept_one_then_drop) as server:
        delivery = make_delivery(tmp_path, store, bus, server.port, clock)
        first, second, third = await queue(delivery, 3)
        # One drain: #1 accepted on connection 1, which dies during #2's DATA; #3 was not
        # tried there, keeps its attempt count and goes on a fresh connection at once.
        assert await delivery.drain() == 2
        state = rows(tmp_path)
        assert state[first][:2] == ("sent", 1)
        assert state[second][:2] == ("pending", 1)
        assert "SMTPServerDisconnected" in (state[second][2] or "")
        assert state[third][:2] == ("sent", 1)
        assert server.connections == 2
        clock.advance(next_try_in(delivery, second))
        assert await delivery.drain() == 1
        assert await delivery.drain() == 0  # nothing left: no further connection
    assert {i: r[:2] for i, r in rows(tmp_path).items()} == {
        first: ("sent", 1),
        second: ("sent", 2),
        third: ("sent", 1),
    }
    assert server.message_ids() == [
        "<mail-0@erpwatch.test>",
        "<mail-2@erpwatch.test>",
        "<mail-1@erpwatch.test>",
    ]
    assert server.connections == 3
    sent = events(store, Kind.ALERT_SENT)
    assert sorted(e.details["outbox_id"] for e in sent) == [first, second, third]
    assert sent_decisions(tmp_path) == 3
    assert delivery.sent == 3 and delivery.failures == 1
    assert_no_worker_failure(caplog)


async def test_server_hanging_up_after_each_accepted_mail_still_sends_each_exactly_once(
    tmp_path: Path, store: EventStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def one_per_connection(connection: int, mail: int) -> str:
        return ACCEPT_AND_CLOSE

    clock = FakeClock()
    async with RawSmtp(on_data=one_per_connection) as server:
        delivery = make_delivery(tmp_path, store, bus, server.port, clock)
        ids = await queue(delivery, 3)
        for _ in range(6):  # bounded: each drain sends or backs off at least one mail
            await delivery.drain()
            if all(r[0] == "sent" for r in rows(tmp_path).values()):
                break
            clock.advance(delivery.retry_max)
    state = rows(tmp_path)
    assert [state[i][0] for i in ids] == ["sent", "sent", "sent"]
    # A hang-up seen before the next mail costs it nothing; one seen only while sending it
    # is that mail's transient failure (at most one per mail here).
    assert all(state[i][1] <= 2 for i in ids)
    assert sorted(server.message_ids()) == [f"<mail-{n}@erpwatch.test>" for n in range(3)]
    assert sent_decisions(tmp_path) == 3 and delivery.sent == 3 and delivery.dead == 0
    assert_no_worker_failure(caplog)


async def test_a_4xx_to_one_mail_keeps_the_connection_for_the_rest_of_the_batch(
    tmp_path: Path, store: EventStore, bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    async def busy_once(connection: int, mail: int) -> str:
        return "451 4.3.0 try again later" if (connection, mail) == (1, 1) else ACCEPT

    clock = FakeClock()
    async with RawSmtp(on_data=busy_once) as server:
        delivery = make_delivery(tmp_path, store, bus, server.port, clock)
        first, second = await queue(delivery, 2)
        assert await delivery.drain() == 1
        assert server.connections == 1  # the 451 left the connection usable
        assert rows(tmp_path)[first][:2] == ("pending", 1)
        assert "451" in (rows(tmp_path)[first][2] or "")
        assert rows(tmp_path)[second][:2] == ("sent", 1)
        clock.advance(next_try_in(delivery, first))
        assert await delivery.drain() == 1
    assert rows(tmp_path)[first][:2] == ("sent", 2)
    assert sorted(server.message_ids()) == ["<mail-0@erpwatch.test>", "<mail-1@erpwatch.test>"]
    assert_no_worker_failure(caplog)


async def test_accepted_mail_whose_commit_fails_is_recorded_later_and_never_sent_again(
    tmp_path: Path, store: EventStore, bus: EventBus
) -> None:
    async with RawSmtp() as server:
        delivery = make_delivery(tmp_path, store, bus, server.port, FakeClock())
        (mail_id,) = await queue(delivery, 1)
        real_mark_sent = delivery.outbox.mark_sent
        calls = 0

        def mark_sent_failing_once(row: OutboxRow, wall: datetime, transport: str) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise sqlite3.OperationalError("disk I/O error")
            real_mark_sent(row, wall, transport)

        delivery.outbox.mark_sent = mark_sent_failing_once  # type: ignore[method-assign]
        with pytest.raises(sqlite3.OperationalError):  # a database fault, not a mail failure
            await delivery.drain()
        assert rows(tmp_path)[mail_id][:2] == ("pending", 0) and len(server.accepted) == 1
        assert await delivery.drain() == 0  # only the commit is retried, not the mail
    assert rows(tmp_path)[mail_id][:2] == ("sent", 1)
    assert server.connections == 1 and len(server.accepted) == 1
    assert len(events(store, Kind.ALERT_SENT)) == 1


# --- (4) 421 is transient, 550 a dead letter ------------------------------------------------


async def test_421_service_not_available_is_transient_then_delivered(
    tmp_path: Path,
    smtp: SmtpServer,
    store: EventStore,
    bus: EventBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    delivery = make_delivery(tmp_path, store, bus, smtp.port, clock)
    first, second = await queue(delivery, 2)
    smtp.recorder.reply = "421 4.3.2 Service not available, closing transmission channel"
    assert await delivery.drain() == 0
    state = rows(tmp_path)
    # 421 closes the channel: both had their try (#2 on the fresh connection of the same drain)
    assert state[first][:2] == ("pending", 1) and state[second][:2] == ("pending", 1)
    assert "421" in (state[first][2] or "")
    assert delivery.dead == 0 and events(store, Kind.ALERT_FAILED) == []
    smtp.recorder.reply = None
    clock.advance(delivery.retry_initial)
    assert await delivery.drain() == 2
    assert {i: r[:2] for i, r in rows(tmp_path).items()} == {
        first: ("sent", 2),
        second: ("sent", 2),
    }
    assert len(smtp.messages) == 2
    assert_no_worker_failure(caplog)


async def test_550_is_a_dead_letter_with_an_alert_failed_event(
    tmp_path: Path,
    smtp: SmtpServer,
    store: EventStore,
    bus: EventBus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    delivery = make_delivery(tmp_path, store, bus, smtp.port, clock)
    (mail_id,) = await queue(delivery, 1)
    smtp.recorder.reply = "550 5.7.1 Message rejected by policy"
    assert await delivery.drain() == 0
    status, attempts, error = rows(tmp_path)[mail_id]
    assert (status, attempts) == ("dead", 1)
    assert error is not None and "550" in error
    (failed,) = events(store, Kind.ALERT_FAILED)
    assert failed.target == "backend" and failed.details["outbox_ids"] == [mail_id]
    assert "550" in failed.details["reason"]
    assert delivery.dead == 1 and mail_id not in delivery.retry_at
    smtp.recorder.reply = None
    clock.advance(delivery.retry_max)
    assert await delivery.drain() == 0  # a dead letter is never retried
    assert rows(tmp_path)[mail_id][:2] == ("dead", 1) and smtp.messages == []
    assert "failed permanently" in caplog.text
    assert_no_worker_failure(caplog)
