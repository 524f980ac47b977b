"""Delivery: drains the outbox over one connection per batch, with retry and dead letters.

Exactly-once is not possible over SMTP; we get "at most one duplicate": a mail is marked
``sent`` in its own commit right after the server accepted it. If erpwatch dies in the
window between the server's ``250`` and that commit (a few milliseconds), the mail is sent
again after the restart. Every other crash point leaves it ``pending`` and sends it once.

Transient failures (connection refused, timeouts, 4xx) retry with exponential backoff
(``retry_initial`` doubling up to ``retry_max``); permanent ones (auth refused, 5xx) move the
mail to ``dead`` with the reason, log an error and publish an ``alert-failed`` event. An
``alert-failed`` about a mail that was itself caused by an ``alert-failed`` is marked
``recursive`` and never alerts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import aiosmtplib

from alerting.outbox import Outbox, OutboxRow
from alerting.transport import DeliveryError, EmlTransport, SmtpTransport, classify
from watchdog.bus import EventBus
from watchdog.clock import Clock
from watchdog.events import Event, Kind, utcnow

log = logging.getLogger(__name__)

# What a send can raise besides bugs: SMTP replies, network/TLS/timeouts, a bad address.
_DELIVERY_ERRORS = (aiosmtplib.SMTPException, OSError, ValueError)


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event``, at most ``seconds``. A cancel always propagates, even one
    that races the timeout or that a library turned into an ordinary exception (seen on 3.11
    with both ``asyncio.wait_for`` and ``asyncio.timeout``). A cancel that was swallowed
    before the call (the task is already cancelling) ends it at once, not after ``seconds``."""
    raise_if_cancelling()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    raise_if_cancelling()


def raise_if_cancelling() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Delivery:
    def __init__(
        self,
        outbox: Outbox,
        bus: EventBus,
        transport: SmtpTransport | EmlTransport,
        sender: str,
        clock: Clock,
        *,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        batch: int = 1000,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.outbox = outbox
        self.bus = bus
        self.transport = transport
        self.sender = sender
        self.clock = clock
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.batch = batch
        self.wall = wall
        self.retry_at: dict[int, float] = {}  # outbox id -> monotonic time of the next try
        self.sent = 0
        self.dead = 0
        self.failures = 0
        self.last_delivery: str | None = None
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, poll: float = 5.0) -> None:
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except Exception:  # a bug, not a mail failure: log it, keep the worker alive
                raise_if_cancelling()
                log.exception("alert delivery worker failed; retrying in %.1fs", poll)
            timeout = poll
            if self.retry_at:
                timeout = min(timeout, max(min(self.retry_at.values()) - self.clock.now(), 0))
            await wait_event(self._wake, max(timeout, 0.001))

    async def drain(self) -> int:
        """Send every due pending mail; returns how many were accepted."""
        accepted = 0
        while True:
            now = self.clock.now()
            waiting = [i for i, at in self.retry_at.items() if at > now]
            rows = await self.bus.run_in_writer(self.outbox.due, self.batch, waiting)
            if not rows:
                return accepted
            sent_now = await self._send_batch(rows)
            accepted += sent_now
            if sent_now < len(rows):
                return accepted  # something failed; its retry is scheduled

    async def _send_batch(self, rows: Sequence[OutboxRow]) -> int:
        remaining = list(rows)
        sent = 0
        try:
            async with self.transport.session() as session:
                while remaining:
                    row = remaining[0]
                    try:
                        await session.send(row.mail.data, self.sender, row.mail.recipients)
                    except _DELIVERY_ERRORS as exc:
                        error = classify(exc, self.transport.secrets())
                        if error.whole_batch:
                            raise error from None
                        remaining.pop(0)
                        await self._failed([row], error)
                        continue
                    remaining.pop(0)
                    await self._accepted(row)
                    sent += 1
        except _DELIVERY_ERRORS as exc:
            if remaining:
                await self._failed(remaining, classify(exc, self.transport.secrets()))
            else:
                log.warning(
                    "closing the mail session failed after delivery: %s",
                    classify(exc, self.transport.secrets()),
                )
        return sent

    async def _accepted(self, row: OutboxRow) -> None:
        wall, mail = self.wall(), row.mail
        await self.bus.run_in_writer(self.outbox.mark_sent, row, wall, self.transport.describe())
        self.retry_at.pop(row.id, None)
        self.sent += 1
        self.last_delivery = wall.isoformat()
        await self.bus.publish(
            Event.of(
                mail.target,
                Kind.ALERT_SENT,
                f"{mail.purpose} mail sent to {', '.join(mail.recipients)}: {mail.subject}",
                to=list(mail.recipients),
                incident=mail.incident_id,
                purpose=mail.purpose,
                message_id=mail.message_id,
                outbox_id=row.id,
                transport=self.transport.describe(),
            )
        )

    async def _failed(self, rows: Sequence[OutboxRow], error: DeliveryError) -> None:
        self.failures += 1
        wall = self.wall()
        if not error.permanent:
            await self.bus.run_in_writer(self.outbox.mark_retry, rows, error.reason, wall)
            now = self.clock.now()
            for row in rows:
                delay = min(self.retry_initial * 2 ** min(row.attempts, 30), self.retry_max)
                self.retry_at[row.id] = now + delay
            log.warning(
                "alert mail delivery via %s failed (%s); %d mail(s) stay queued and are retried",
                self.transport.describe(),
                error.reason,
                len(rows),
            )
            return
        await self.bus.run_in_writer(self.outbox.mark_dead, rows, error.reason, wall)
        for row in rows:
            self.retry_at.pop(row.id, None)
        self.dead += len(rows)
        log.error(
            "alert mail delivery via %s failed permanently (%s); %d mail(s) moved to the "
            "dead letters",
            self.transport.describe(),
            error.reason,
            len(rows),
        )
        by_target: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_target.setdefault(row.mail.target, []).append(row)
        for target, group in by_target.items():
            await self.bus.publish(self._failure_event(target, group, error))

    def _failure_event(self, target: str, rows: list[OutboxRow], error: DeliveryError) -> Event:
        details: dict[str, Any] = {
            "reason": error.reason,
            "to": sorted({r for row in rows for r in row.mail.recipients}),
            "outbox_ids": [row.id for row in rows],
            "incident": rows[0].mail.incident_id,
            "transport": self.transport.describe(),
        }
        mails = [row.mail for row in rows]
        if any(Kind.ALERT_FAILED in m.trigger_kinds or m.purpose == "test" for m in mails):
            details["recursive"] = True
        return Event.of(
            target,
            Kind.ALERT_FAILED,
            f"{len(rows)} alert mail(s) could not be delivered: {error.reason}",
            **details,
        )
