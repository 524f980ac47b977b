"""Delivery lanes: one `Delivery` worker per receiver over its rows of the outbox.

Each lane runs under the task supervisor as ``alerting-delivery`` (mail) or
``alerting-delivery:<receiver>``, so a webhook that hangs or a hook that times out delays its
own lane only. Lanes other than mail are *ordered*: a row waiting for its retry holds back
the rows queued after it (a "resolved" never overtakes its "firing").

A reload (`Lanes.apply`) keeps the lanes whose receiver is still configured (with the new
transport), starts new ones and ends removed ones; rows still pending for a receiver that is
no longer configured become dead letters saying so (`retire`), so nothing waits forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from alerting.delivery import Delivery
from alerting.hooks import HookTransport
from alerting.http import HttpTransport
from alerting.outbox import DEAD, PENDING, SENT, Outbox
from alerting.receivers import EMAIL, Receiver
from alerting.transport import Transport, transport_for
from watchdog.bus import EventBus
from watchdog.clock import Clock
from watchdog.events import Event, Kind
from watchdog.leftovers import HookLedger
from watchdog.settings import Settings, parse_headers
from watchdog.tasks import TaskSupervisor

log = logging.getLogger(__name__)

RETIRE_BATCH = 500


def transport_of(
    receiver: Receiver,
    settings: Settings,
    wall: Callable[[], datetime],
    hook_ledger: HookLedger | None = None,
) -> Transport:
    if receiver.kind == "email":
        return transport_for(settings)
    if receiver.kind == "hook":
        return HookTransport(
            receiver,
            timeout=settings.hook_timeout,
            workdir=Path(settings.log_path),
            ledger=hook_ledger,
        )
    if receiver.kind == "webhook":
        headers = settings.webhook_headers
        secret = settings.webhook_secret
        return HttpTransport(
            receiver,
            timeout=settings.webhook_timeout,
            headers=parse_headers(headers.get_secret_value()) if headers else None,
            secret=secret.get_secret_value() if secret else None,
            wall=wall,
        )
    return HttpTransport(
        receiver,
        timeout=settings.alertmanager_timeout,
        resend_interval=settings.alertmanager_resend_interval,
        wall=wall,
    )


def worker_name(receiver: str) -> str:
    return "alerting-delivery" if receiver == EMAIL else f"alerting-delivery:{receiver}"


class Lanes:
    def __init__(
        self,
        outbox: Outbox,
        bus: EventBus,
        clock: Clock,
        tasks: TaskSupervisor,
        *,
        retry_initial: float,
        retry_max: float,
        wall: Callable[[], datetime],
        hook_ledger: HookLedger | None = None,
    ) -> None:
        self.outbox = outbox
        self.hook_ledger = hook_ledger
        self.bus = bus
        self.clock = clock
        self.tasks = tasks
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.wall = wall
        self.by_name: dict[str, Delivery] = {}
        self.base: dict[str, dict[str, int]] = {}  # stored counts at start
        self.queued: dict[str, int] = {}  # rows this process queued, per receiver
        self.retired: dict[str, int] = {}  # rows dead-lettered as their receiver is gone

    def build(self, receivers: Iterable[Receiver], settings: Settings) -> None:
        """Create the deliveries (not started): the mail lane always exists."""
        for receiver in receivers:
            self.by_name[receiver.name] = self._delivery(receiver, settings)

    def _delivery(self, receiver: Receiver, settings: Settings) -> Delivery:
        return Delivery(
            self.outbox,
            self.bus,
            transport_of(receiver, settings, self.wall, self.hook_ledger),
            settings.alert_from,
            self.clock,
            retry_initial=self.retry_initial,
            retry_max=self.retry_max,
            wall=self.wall,
            ordered=receiver.kind != "email",
        )

    def start(self) -> None:
        for name, delivery in self.by_name.items():
            self.tasks.spawn(worker_name(name), delivery.run)

    async def stop(self) -> None:
        for name in list(self.by_name):
            await self.tasks.cancel(worker_name(name))

    async def apply(self, receivers: Iterable[Receiver], settings: Settings) -> None:
        wanted = {r.name: r for r in receivers}
        for name in [n for n in self.by_name if n not in wanted]:
            await self.tasks.cancel(worker_name(name))
            del self.by_name[name]
            log.info("receiver %s removed by the reload", name)
        for name, receiver in wanted.items():
            delivery = self.by_name.get(name)
            if delivery is None:
                self.by_name[name] = self._delivery(receiver, settings)
                self.tasks.spawn(worker_name(name), self.by_name[name].run)
                log.info("receiver %s added by the reload", name)
            else:
                delivery.transport = transport_of(receiver, settings, self.wall, self.hook_ledger)
                delivery.sender = settings.alert_from
                delivery.wake()
        await self.retire()

    async def retire(self) -> int:
        """Dead-letter the pending rows of receivers that are no longer configured."""
        gone = [
            name
            for name in await self.bus.run_in_writer(self.outbox.receivers_pending)
            if name not in self.by_name
        ]
        total = 0
        for name in gone:
            while rows := await self.bus.run_in_writer(self.outbox.due, RETIRE_BATCH, (), name):
                reason = f"receiver {name} is no longer configured"
                await self.bus.run_in_writer(self.outbox.mark_dead, rows, reason, self.wall())
                total += len(rows)
                self.retired[name] = self.retired.get(name, 0) + len(rows)
                await self.bus.publish(
                    Event.of(
                        rows[0].mail.target,
                        Kind.ALERT_FAILED,
                        f"{len(rows)} notification(s) for {name} dropped to the dead "
                        f"letters: {reason}",
                        receiver=name,
                        reason=reason,
                        outbox_ids=[r.id for r in rows],
                        recursive=True,
                    )
                )
        return total

    def wake(self) -> None:
        for delivery in self.by_name.values():
            delivery.wake()

    def queued_rows(self, receiver: str, count: int) -> None:
        if count:
            self.queued[receiver] = self.queued.get(receiver, 0) + count
            delivery = self.by_name.get(receiver)
            if delivery is not None:
                delivery.wake()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per receiver: pending, sent, dead (stored at start + this process's work)."""
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(set(self.by_name) | set(self.base)):
            base = self.base.get(name, {PENDING: 0, SENT: 0, DEAD: 0})
            delivery = self.by_name.get(name)
            sent = delivery.sent if delivery else 0
            dead = (delivery.dead if delivery else 0) + self.retired.get(name, 0)
            pending = base[PENDING] + self.queued.get(name, 0) - sent - dead
            out[name] = {
                "pending": max(pending, 0),
                "sent": base[SENT] + sent,
                "dead": base[DEAD] + dead,
                "failures": delivery.failures if delivery else 0,
                "last_delivery": delivery.last_delivery if delivery else None,
                "transport": delivery.transport.describe() if delivery else None,
            }
        return out
