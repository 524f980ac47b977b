"""Delivery: drains the outbox over one connection per batch, with retry and dead letters.

**Exactly once, with one window.** A mail is marked ``sent`` in its own commit as soon as the
server answered ``250`` to its DATA, before the next mail of the batch goes out; it is never
marked before that and never sent again after it. The one duplicate window: the server
accepted the mail and erpwatch died (SIGKILL, power loss) before that commit, a few
milliseconds; the mail is still ``pending`` after the restart and is sent once more (same
Message-ID). If the commit itself fails (a database error) while erpwatch lives on, the mail
is remembered as accepted and only the commit is retried: this process never sends it again.
(SMTP itself adds RFC 1047's window, which no client can close: a connection lost after the
final ``.`` but before the reply looks like any loss during DATA, so the mail is retried.)

**Failures belong to a mail, never to the worker.** Whatever a transport raises
(`transport.DELIVERY_ERRORS`: refused, reset, EOF mid-DATA, timeout, TLS, a malformed or
unexpected reply, 4xx, 5xx) is classified (by `transport.classify`, or already by the SMTP
session, `alerting.smtp`) and recorded on the mail's outbox row (``attempts`` + 1,
``last_error`` without secrets); nothing of it leaves `drain`.

* Transient: the mail stays ``pending`` and is retried after ``retry_initial`` doubling per
  attempt up to ``retry_max`` (from the row's ``attempts``, so the backoff also continues
  across a restart; the due times themselves are kept in memory).
* Permanent (authentication refused, 5xx, an address that cannot be sent): the mail moves to
  ``dead`` with the reason, an error is logged and an ``alert-failed`` event is published. An
  ``alert-failed`` about a mail that was itself caused by an ``alert-failed`` is marked
  ``recursive`` and never alerts again.

**Some recipients refused.** A mail the server accepted while it refused some recipients at
RCPT TO (`transport.PartlyAccepted`) is sent to the accepted ones: its row keeps just them
and is marked ``sent``, and in the same commit each group of refused recipients gets a
pending copy of the row (`Outbox.mark_partly_sent`), which then fails like any mail: 4xx,
retried with backoff for those recipients alone; 5xx, a dead letter whose ``alert-failed``
names them and the server's reply. ``alert-sent`` names only the accepted recipients.

**A batch on one connection.** If connecting fails, every mail of the batch had its attempt
and fails with it. Once connected, a failure that leaves the connection usable (4xx/5xx to
one mail) fails only that mail and the batch goes on. A failure that breaks the connection
(lost, timeout, garbage, ``421``) fails only the mail being sent: the mails accepted before it
are already marked ``sent``, the ones after it were not tried, keep their attempt count and
are sent on a fresh connection in the same `drain` (as they are when the connection is seen
closed between two mails, which costs the next one nothing). Each mail is tried at most once per
`drain`, so a drain always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from alerting.outbox import Outbox, OutboxRow
from alerting.transport import (
    DELIVERY_ERRORS,
    DeliveryError,
    PartlyAccepted,
    SessionContext,
    Transport,
    classify,
)
from watchdog.bus import EventBus
from watchdog.clock import Clock
from watchdog.events import Event, Kind, utcnow

log = logging.getLogger(__name__)


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
        transport: Transport,
        sender: str,
        clock: Clock,
        *,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        batch: int = 1000,
        wall: Callable[[], datetime] = utcnow,
        ordered: bool = False,
    ) -> None:
        self.ordered = ordered
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
        # Accepted by the receiver, not yet marked sent: the row and the receiver's answer.
        self._unrecorded: dict[int, tuple[OutboxRow, str]] = {}
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
        """Send every due pending mail; returns how many were accepted. Delivery failures
        are recorded on their rows, never raised; what raises is a bug or the database."""
        await self._record_unrecorded()
        accepted = 0
        tried: set[int] = set()  # each mail at most once per drain, so a drain always ends
        while True:
            now = self.clock.now()
            self.retry_at = {i: at for i, at in self.retry_at.items() if at > now}
            held = tried | self.retry_at.keys()
            skip = set(self._unrecorded) | (set() if self.ordered else held)
            rows = await self.bus.run_in_writer(
                self.outbox.due, self.batch, skip, self.transport.receiver
            )
            if self.ordered:  # nothing overtakes a row that was tried or waits for its retry
                waiting = next((i for i, r in enumerate(rows) if r.id in held), None)
                rows = rows[:waiting]
            if not rows:
                return accepted
            accepted += await self._send_batch(rows, tried)

    async def _send_batch(self, rows: Sequence[OutboxRow], tried: set[int]) -> int:
        """Send ``rows`` in order over one connection until they are done or it breaks.

        Adds every mail that had an attempt to ``tried``; a mail after the one that broke
        the connection is left untouched (pending, attempts unchanged)."""
        secrets = self.transport.secrets()
        sent = 0
        async with contextlib.AsyncExitStack() as stack:
            try:
                context: SessionContext = self.transport.session()
                session = await stack.enter_async_context(context)
            except DELIVERY_ERRORS as exc:
                raise_if_cancelling()  # a cancel a library turned into an error still ends us
                tried.update(row.id for row in rows)
                await self._failed(rows, classify(exc, secrets))
                return 0
            for index, row in enumerate(rows):
                if index and not session.alive:
                    break  # closed after the last mail: the rest go on a fresh connection
                tried.add(row.id)
                try:
                    response = await session.send(row.mail.data, self.sender, row.mail.recipients)
                except DELIVERY_ERRORS as exc:
                    raise_if_cancelling()
                    error = classify(exc, secrets)
                    await self._failed([row], error)
                    if error.whole_batch or (self.ordered and not error.permanent):
                        break  # gone (the rest go on a fresh one), or the rest must wait
                    continue
                # Accepted (250 after DATA, 2xx, exit 0): recorded before the next one goes.
                await self._accepted(row, response)
                sent += 1
        return sent

    async def _accepted(self, row: OutboxRow, response: str) -> None:
        self._unrecorded[row.id] = (row, response)  # a failed commit is retried, not the send
        await self._record_sent(row, response)

    async def _record_unrecorded(self) -> None:
        for row, response in list(self._unrecorded.values()):
            await self._record_sent(row, response)

    async def _record_sent(self, row: OutboxRow, response: str) -> None:
        wall, mail = self.wall(), row.mail
        refused = response.refused if isinstance(response, PartlyAccepted) else ()
        copies: list[OutboxRow] = []
        if refused:  # the row keeps the accepted recipients, a copy each group refused
            groups = [group.recipients for group in refused]
            sent, copies = await self.bus.run_in_writer(
                self.outbox.mark_partly_sent, row, groups, wall, self.transport.describe()
            )
            mail = sent.mail
        else:
            await self.bus.run_in_writer(
                self.outbox.mark_sent, row, wall, self.transport.describe()
            )
        del self._unrecorded[row.id]
        self.retry_at.pop(row.id, None)
        self.sent += 1
        self.last_delivery = wall.isoformat()
        details: dict[str, Any] = {}
        if mail.receiver != "email":
            details["response"] = response[:500]
        await self.bus.publish(
            Event.of(
                mail.target,
                Kind.ALERT_SENT,
                self.transport.sent_text(mail, response),
                to=list(mail.recipients),
                incident=mail.incident_id,
                purpose=mail.purpose,
                message_id=mail.message_id,
                outbox_id=row.id,
                receiver=mail.receiver,
                transport=self.transport.describe(),
                **details,
            )
        )
        for copy, group in zip(copies, refused, strict=True):
            await self._failed([copy], group.error)  # retried (4xx) or a dead letter (5xx)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try of a mail that has failed ``attempts`` times (>= 1)."""
        return min(self.retry_initial * 2.0 ** min(max(attempts - 1, 0), 30), self.retry_max)

    async def _failed(self, rows: Sequence[OutboxRow], error: DeliveryError) -> None:
        self.failures += 1
        wall = self.wall()
        if not error.permanent:
            await self.bus.run_in_writer(self.outbox.mark_retry, rows, error.reason, wall)
            now = self.clock.now()
            asked = error.retry_after or 0.0  # a 429's Retry-After: never sooner than asked
            for row in rows:
                self.retry_at[row.id] = now + max(self.backoff(row.attempts + 1), asked)
            log.warning(
                "%s delivery via %s failed (%s); %d queued, next try in %.3gs",
                self.transport.noun,
                self.transport.describe(),
                error.reason,
                len(rows),
                min(self.retry_at[row.id] for row in rows) - now,
            )
            return
        await self.bus.run_in_writer(self.outbox.mark_dead, rows, error.reason, wall)
        for row in rows:
            self.retry_at.pop(row.id, None)
        self.dead += len(rows)
        log.error(
            "%s delivery via %s failed permanently (%s); %d moved to the dead letters",
            self.transport.noun,
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
            "receiver": self.transport.receiver,
            "transport": self.transport.describe(),
        }
        mails = [row.mail for row in rows]
        if any(Kind.ALERT_FAILED in m.trigger_kinds or m.purpose == "test" for m in mails):
            details["recursive"] = True
        return Event.of(
            target,
            Kind.ALERT_FAILED,
            f"{len(rows)} {self.transport.noun}(s) could not be delivered via "
            f"{self.transport.describe()}: {error.reason}",
            **details,
        )
