"""A server slow to answer the end of DATA has the whole mail: waiting only SMTP_TIMEOUT
there, then retrying, mailed it again on every retry for as long as the server stayed slow
(a content scanner, a busy relay). The reply is waited for as RFC 5321 asks (10 minutes);
every other command keeps SMTP_TIMEOUT. A real aiosmtpd server on loopback, a real store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.alerting.conftest import Recorder, SmtpServer
from tests.alerting.test_delivery_faults import make_delivery, queue, rows
from watchdog.bus import EventBus
from watchdog.clock import FakeClock
from watchdog.store import EventStore

SMTP_TIMEOUT = 0.3


@dataclass
class SlowToAccept(Recorder):
    """Takes the whole mail, then answers the final dot after ``delay`` seconds."""

    delay: float = 4 * SMTP_TIMEOUT

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)  # the server's own slowness, in its own thread
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def slow() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.recorder = SlowToAccept()
    server.start()
    yield server
    server.stop()


async def test_a_slow_reply_to_data_is_waited_for_and_the_mail_sent_once(
    tmp_path: Path, slow: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    clock = FakeClock()
    delivery = make_delivery(tmp_path, store, bus, slow.port, clock, smtp_timeout=SMTP_TIMEOUT)
    ids = await queue(delivery, 2)

    assert await delivery.drain() == 2
    assert {rows(tmp_path)[i][:2] for i in ids} == {("sent", 1)}
    assert len(slow.messages) == 2
    clock.advance(60.0)
    assert await delivery.drain() == 0  # nothing left to send again
    assert len(slow.messages) == 2


@dataclass
class SlowAtRcpt(Recorder):
    """Answers RCPT TO after ``delay`` seconds: no mail is taken yet, nothing to wait for."""

    delay: float = 20 * SMTP_TIMEOUT

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        await asyncio.sleep(self.delay)
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_every_other_command_still_gives_up_after_smtp_timeout(
    tmp_path: Path, store: EventStore, bus: EventBus
) -> None:
    server = SmtpServer()
    server.recorder = SlowAtRcpt()
    server.start()
    try:
        clock = FakeClock()
        delivery = make_delivery(
            tmp_path, store, bus, server.port, clock, smtp_timeout=SMTP_TIMEOUT
        )
        (mail_id,) = await queue(delivery, 1)
        assert await delivery.drain() == 0
        status, attempts, error = rows(tmp_path)[mail_id]
        assert (status, attempts) == ("pending", 1)
        assert error is not None and "timed out" in error.lower()
        assert server.messages == []
    finally:
        server.stop()
