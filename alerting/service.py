"""AlertService: wires the pipeline to the event store, the durable outbox and the transport.

    events table ──id > cursor──▶ step(): events → stages → outbox + state + cursor
    bus subscription ──wake──▶┘           (one transaction of alerting's own)
                                          └─▶ alert-held events (the notification log)
    Delivery worker ──▶ SMTP / .eml ──▶ alert-sent / alert-failed events

The store is the source of truth and the subscription only a wake-up: a dropped queue entry,
a failed step or a crash loses nothing, and nothing alerting does can roll back or stop the
producer's commit. A failed step is retried every ``poll`` seconds from the state and cursor
last committed; the first failure of an episode is logged with its traceback and recorded as
one ``watchdog-fault`` event (mailed once the pipeline works again).

Store trouble (``EventBus.on_store_trouble``): the outbox lives in the failing database, so
the service sends one mail per trouble episode *directly* through its transport (SMTP or
``.eml``), retried with backoff on transient errors, and records it as ``alert-sent`` (or
``alert-failed``) through the bus, which writes it once the store works. Meanwhile pipeline
steps and outbox delivery wait (a mail sent then could not be marked sent); both resume when
the episode ends. A step that failed because of the store trouble is not a
``watchdog-fault``: the store trouble is reported by itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from alerting.delivery import Delivery, raise_if_cancelling, wait_event
from alerting.incidents import IncidentBook, TargetTrack, TimeBase
from alerting.lanes import Lanes
from alerting.outbox import EventBatch, Outbox
from alerting.payloads import PayloadRenderer, note_severity
from alerting.receivers import EMAIL, receivers_from
from alerting.render import Mail, Renderer
from alerting.stages import Ctx, Pipeline, Policy, RateLimiter, next_deadline
from alerting.transport import DELIVERY_ERRORS, PartlyAccepted, Transport, classify
from watchdog.bus import EventBus, StoreTrouble, Subscription
from watchdog.clock import Clock, RealClock
from watchdog.events import SYSTEM_TARGET, Event, Kind, utcnow
from watchdog.leftovers import ChildLedger, HookLedger
from watchdog.resources import host_snapshot
from watchdog.settings import Settings
from watchdog.store import EventStore, store_trouble_reason
from watchdog.tasks import TaskSupervisor

log = logging.getLogger(__name__)

INBOX_BATCH = 500  # events read per pipeline step
FAULT_TEXT_MAX = 500  # characters of an exception kept in a watchdog-fault event
WORKERS = ("alerting-listen", "alerting-pipeline")  # and a delivery lane per receiver
# The wall time of the last step's commit, in ``alert_state``: the saved instants are mapped
# back through the wall clock (`TimeBase`), and a clock stepped back since then would put
# them (a group wait's end, the rate limiter's sends) hours ahead.
SAVED_AT = "saved_at"


class AlertService:
    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        bus: EventBus,
        *,
        clock: Clock | None = None,
        hostname: str | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        poll: float = 1.0,
        wall: Callable[[], datetime] = utcnow,
        snapshot: Callable[[], Mapping[str, Any]] | None = None,
        tasks: TaskSupervisor | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.clock: Clock = clock or RealClock()
        self.wall = wall
        self.poll = poll
        self.policy = Policy.from_settings(settings)
        self.outbox = Outbox(store)
        disk_paths = [settings.log_path]
        self._hostname = hostname or socket.gethostname()
        self._snapshot = snapshot or (lambda: host_snapshot(disk_paths))
        self.renderer = self._renderer(settings)
        self.payloads = self._payloads(settings)
        self.receivers = receivers_from(settings)
        self.tasks = tasks or TaskSupervisor(clock=self.clock)
        self.lanes = Lanes(
            self.outbox,
            bus,
            self.clock,
            self.tasks,
            retry_initial=retry_initial,
            retry_max=retry_max,
            wall=wall,
            hook_ledger=HookLedger(ChildLedger(store), bus.run_in_writer),
        )
        self.lanes.build(self.receivers, settings)
        self.book = IncidentBook()
        self.limiter = RateLimiter(self.policy.rate_limit, self.policy.rate_window)
        self.pipeline = Pipeline()
        self._last_sent: str | None = None
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None
        self._refresh_at: float | None = None  # next Alertmanager re-send of firing alerts
        self._silences_active = 0
        self._deadline: float | None = None
        self._cursor = 0  # id of the last event taken into account (as committed)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._store_trouble: StoreTrouble | None = None  # while the store cannot be written
        self._store_mailed: datetime | None = None  # start of the episode last mailed
        self._store_mail: asyncio.Task[None] | None = None
        self._unhook: Callable[[], None] | None = None
        self.direct_sent = 0  # store-trouble mails sent directly
        self.direct_failures = 0  # failed tries to send one (each retried or given up)

    def _renderer(self, settings: Settings) -> Renderer:
        return Renderer(
            hostname=self._hostname,
            sender=settings.alert_from,
            stderr_lines=settings.alert_stderr_lines,
            status_url=str(settings.status_page_url) if settings.status_page_url else None,
            template_dir=settings.alert_template_dir,
            snapshot=self._snapshot,
        )

    def _payloads(self, settings: Settings) -> PayloadRenderer:
        return PayloadRenderer(
            hostname=self.renderer.hostname,
            status_url=str(settings.status_page_url) if settings.status_page_url else None,
            template_dir=settings.alert_template_dir,
            hook_on=settings.hook_on,
        )

    @property
    def delivery(self) -> Delivery:
        """The mail lane."""
        return self.lanes.by_name[EMAIL]

    @property
    def transport(self) -> Transport:
        return self.delivery.transport

    async def apply_settings(self, settings: Settings) -> None:
        """A configuration reload: recipients, ALERT_ON, grouping, rate limits, SMTP,
        receivers and templates apply from the next step on; open incidents, the rate
        limiter's history and queued notifications are kept (they go out through the new
        transports; those of a receiver no longer configured become dead letters)."""
        self.settings = settings
        self.policy = Policy.from_settings(settings)
        self.renderer = self._renderer(settings)
        self.payloads = self._payloads(settings)
        self.receivers = receivers_from(settings)
        await self.lanes.apply(self.receivers, settings)
        self.limiter.limit = self.policy.rate_limit
        self.limiter.window = self.policy.rate_window
        self._refresh_at = None
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        start = await self.bus.run_in_writer(self.outbox.ensure_schema)
        if start.adopted:
            log.info(
                "alerting now reads the event store by cursor; %d event(s) queued by the "
                "previous version are processed first",
                start.adopted,
            )
        elif start.initialised:
            log.info(
                "alerting starts after event %d (earlier history is not mailed)",
                start.last_event_id,
            )
        self._sub = self.bus.subscribe("alerting")
        await self._restore()
        await self._refresh_counts()
        where = self.transport.describe()
        log.info(
            "alert mail to %s via %s (alerting on %s)",
            ", ".join(self.policy.recipients),
            where,
            ", ".join(sorted(self.policy.alert_on)),
        )
        others = [r.name for r in self.receivers if r.kind != "email"]
        if others:
            log.info("alerts also go to %s", ", ".join(others))
        if not self.settings.alert_to:
            log.warning("ERPWATCH_ALERT_TO is empty: alert mail goes to ERPWATCH_ALERT_FROM")
        for name, counts in self.lanes.base.items():
            if counts["pending"]:
                log.info(
                    "%d notification(s) for %s still queued from before; sending",
                    counts["pending"],
                    name,
                )
        await self.lanes.retire()
        sub = self._sub
        # Under the task supervisor: a worker that raises is recorded (watchdog-fault) and
        # restarted with backoff; its state is in SQLite, so a restart loses nothing.
        self.tasks.spawn("alerting-listen", lambda: self._listen(sub))
        self.tasks.spawn("alerting-pipeline", self._pipeline)
        self.lanes.start()
        self._unhook = self.bus.on_store_trouble(self._on_store_trouble)

    async def stop(self) -> None:
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        if self._store_mail is not None and not self._store_mail.done():
            self._store_mail.cancel()
            try:
                await self._store_mail
            except asyncio.CancelledError:
                raise_if_cancelling()  # our own cancel ends here; one of stop()'s propagates
        for name in WORKERS:
            await self.tasks.cancel(name)
        await self.lanes.stop()
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def stats(self) -> dict[str, Any]:
        """Totals over every receiver, and ``receivers``: the same per receiver."""
        lanes = self.lanes.stats()
        return {
            "pending": sum(lane["pending"] for lane in lanes.values()),
            "dead": sum(lane["dead"] for lane in lanes.values()),
            "sent": sum(lane["sent"] for lane in lanes.values()),
            "last_delivery": self.delivery.last_delivery or self._last_sent,
            "failures": sum(lane["failures"] for lane in lanes.values()),
            "transport": self.transport.describe(),
            "receivers": lanes,
            "silences_active": self._silences_active,
        }

    # --- workers ------------------------------------------------------------------------

    async def _listen(self, sub: Subscription) -> None:
        async for event in sub:
            if event.kind not in (Kind.ALERT_HELD, Kind.ALERT_SENT):
                self._wake.set()

    async def _pipeline(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            if self._store_trouble is not None:
                # Nothing can be committed now; the end of the episode wakes us.
                await wait_event(self._wake, self.poll)
                continue
            try:
                if failures:
                    await self._restore()  # memory may hold half a step: back to the commit
                read = await self.step()
            except Exception as exc:  # retried from what is committed (all of it or none)
                raise_if_cancelling()
                failures += 1
                store_cause = store_trouble_reason(exc)
                if store_cause is not None and self.bus.store_problem() is not None:
                    if failures == 1:
                        log.warning(
                            "alert pipeline step failed: the event store fails (%s); alerting "
                            "resumes when it works again",
                            store_cause,
                        )
                elif failures == 1:
                    log.exception(
                        "alert pipeline step failed; its events stay in the store and the "
                        "step is retried every %gs",
                        self.poll,
                    )
                    await self._record_fault(exc)
                else:
                    log.debug("alert pipeline step failed (%d in a row)", failures, exc_info=True)
                await asyncio.sleep(self.poll)
                continue
            if failures:
                log.info("alert pipeline works again after %d failed step(s)", failures)
                failures = 0
            if read >= INBOX_BATCH:
                continue
            timeout = self.poll
            if self._deadline is not None:
                timeout = min(timeout, self._deadline - self.clock.now())
            if timeout <= 0:
                continue
            await wait_event(self._wake, timeout)

    async def step(self) -> int:
        """One pipeline round: up to a batch of events after the cursor, and due timers.

        Everything the round decides (cursor, state, mails, log) is committed in one
        transaction; returns how many events it read (alerting's own decisions included).
        """
        batch: EventBatch = await self.bus.run_in_writer(
            self.outbox.fetch_events, self._cursor, INBOX_BATCH
        )
        events = batch.events
        silences = await self.bus.run_in_writer(self.outbox.silences)
        now, wall = self.clock.now(), self.wall()
        self._silences_active = sum(1 for s in silences if s.until > wall)
        ctx = Ctx(now, wall, self.policy, self.book, self.limiter, silences)
        ctx, notes = self.pipeline.notify(ctx, events)
        email = self.receivers[0]
        ctx, rated = self.pipeline.rate.exec(
            ctx, [n for n in notes if email.accepts(note_severity(n))]
        )
        ctx, mails = self.renderer.exec(ctx, rated)
        mails += self.payloads.exec(self.receivers, notes, events, wall)
        base = TimeBase(now, wall)
        state: dict[str, Any] = {
            f"target:{name}": self.book.track(name).to_json(base) for name in ctx.touched
        }
        state["limiter"] = self.limiter.to_json(base)
        state[SAVED_AT] = wall.isoformat()
        await self.bus.run_in_writer(
            self.outbox.commit_step, batch, state, mails, ctx.decisions, wall
        )
        self._cursor = batch.end
        for mail in mails:
            self.lanes.queued_rows(mail.receiver, 1)
        await self._refresh_firing(now, wall)
        self._deadline = min(
            (t for t in (next_deadline(ctx), self._refresh_at) if t is not None), default=None
        )
        for decision in ctx.decisions:
            await self.bus.publish(
                Event.of(
                    decision.target,
                    Kind.ALERT_HELD,
                    decision.message,
                    incident=decision.incident_id,
                    **dict(decision.details),
                )
            )
        return batch.read

    async def _refresh_firing(self, now: float, wall: datetime) -> None:
        """Re-send every firing alert to Alertmanager each ALERTMANAGER_RESEND_INTERVAL
        (it resolves an alert on its own once the alert's ``endsAt`` has passed)."""
        if not any(r.kind == "alertmanager" for r in self.receivers):
            return
        if self._refresh_at is not None and now < self._refresh_at:
            return
        self._refresh_at = now + self.settings.alertmanager_resend_interval
        rows = self.payloads.refresh(self.receivers, self.book.open_incidents(), wall)
        if rows:
            queued = await self.bus.run_in_writer(self.outbox.queue_refresh, rows, wall)
            for mail in queued:
                self.lanes.queued_rows(mail.receiver, 1)

    # --- store trouble: one direct mail per episode -------------------------------------

    def _on_store_trouble(self, trouble: StoreTrouble) -> None:
        """`EventBus.on_store_trouble` callback (on the loop)."""
        if not trouble.failing:
            self._store_trouble = None
            self.outbox.paused = None
            self._wake.set()
            self.lanes.wake()  # every receiver's lane, not only mail's
            return
        self._store_trouble = trouble
        self.outbox.paused = trouble.reason
        if self._store_mailed == trouble.since:
            return  # this episode was mailed already
        self._store_mailed = trouble.since
        if self._store_mail is not None and not self._store_mail.done():
            log.warning("the previous store-trouble mail is still being sent; no second one")
            return
        self._store_mail = asyncio.get_running_loop().create_task(
            self._mail_store_trouble(trouble), name="alerting-store-mail"
        )

    async def _mail_store_trouble(self, trouble: StoreTrouble) -> None:
        try:
            mail = self.renderer.render_store_trouble(
                trouble,
                self.policy.recipients,
                self.wall(),
                path=self.store.path,
                buffer_limit=self.bus.buffer_limit,
            )
            await self._send_direct(mail)
        except Exception:  # a bug: logged here, since nobody awaits this task
            raise_if_cancelling()
            log.exception("the store-trouble mail could not be sent")

    async def _send_direct(self, mail: Mail) -> None:
        """Send ``mail`` now, bypassing the outbox; transient failures retry with backoff.
        Recipients the server refused while it took the mail for others are retried alone
        (4xx) or given up with ``alert-failed`` (5xx); ``alert-sent`` names the accepted."""
        where = self.transport.describe()
        delay = self._retry_initial
        while True:
            try:
                async with self.transport.session() as session:
                    response = await session.send(
                        mail.data, self.settings.alert_from, mail.recipients
                    )
            except DELIVERY_ERRORS as exc:
                self.direct_failures += 1
                error = classify(exc, self.transport.secrets())
                if error.permanent:
                    await self._direct_failed(mail, error.reason)
                    return
                log.warning(
                    "store-failing mail via %s failed (%s); retrying in %.1fs",
                    where,
                    error.reason,
                    delay,
                )
            else:
                refused = response.refused if isinstance(response, PartlyAccepted) else ()
                gone = {r for group in refused for r in group.recipients}
                accepted = replace(
                    mail, recipients=tuple(r for r in mail.recipients if r not in gone)
                )
                await self._direct_sent(accepted, response)
                retry: tuple[str, ...] = ()
                for group in refused:
                    if group.error.permanent:
                        await self._direct_failed(
                            replace(mail, recipients=group.recipients), group.error.reason
                        )
                    else:
                        retry += group.recipients
                if not retry:
                    return
                self.direct_failures += 1
                mail = replace(mail, recipients=retry)
                log.warning(
                    "store-failing mail refused for %s; retrying them in %.1fs",
                    ", ".join(retry),
                    delay,
                )
            await self.clock.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _direct_sent(self, mail: Mail, response: str) -> None:
        self.direct_sent += 1
        where = self.transport.describe()
        log.warning(
            "store-failing mail sent directly (not through the outbox) via %s to %s: %s",
            where,
            ", ".join(mail.recipients),
            response,
        )
        await self._publish_direct(
            Kind.ALERT_SENT,
            f"{self.transport.sent_text(mail, response)} (directly, not through the outbox)",
            mail,
        )

    async def _direct_failed(self, mail: Mail, reason: str) -> None:
        where = self.transport.describe()
        log.error("the store-failing mail could not be sent via %s (%s); giving up", where, reason)
        await self._publish_direct(
            Kind.ALERT_FAILED,
            f"store-failing mail could not be sent directly via {where}: {reason}",
            mail,
            reason=reason,
        )

    async def _publish_direct(self, kind: Kind, message: str, mail: Mail, **details: Any) -> None:
        """Record a direct mail; the bus keeps it until the store works again."""
        try:
            await self.bus.publish(
                Event.of(
                    SYSTEM_TARGET,
                    kind,
                    message,
                    purpose=mail.purpose,
                    direct=True,
                    to=list(mail.recipients),
                    message_id=mail.message_id,
                    transport=self.transport.describe(),
                    **details,
                )
            )
        except Exception:
            raise_if_cancelling()
            log.exception("could not record the direct store-trouble mail as an event")

    async def _record_fault(self, exc: Exception) -> None:
        """One ``watchdog-fault`` event per failure episode (the store may be the fault)."""
        error = f"{type(exc).__name__}: {exc}"[:FAULT_TEXT_MAX]
        fault = Event.of(
            SYSTEM_TARGET,
            Kind.WATCHDOG_FAULT,
            f"alert pipeline step failed ({error}); retrying",
            task="alerting-pipeline",
            error=error,
        )
        try:
            await self.bus.publish(fault)
        except Exception:
            raise_if_cancelling()
            log.exception("could not record the alert pipeline fault as an event")

    # --- state --------------------------------------------------------------------------

    async def _restore(self) -> None:
        state = await self.bus.run_in_writer(self.outbox.load_state)
        self._cursor = await self.bus.run_in_writer(self.outbox.cursor)
        wall = self.wall()
        if SAVED_AT in state:  # saved "later" than now: the clock went back, no time passed
            wall = max(wall, datetime.fromisoformat(state[SAVED_AT]))
        base = TimeBase(self.clock.now(), wall)
        self.book = IncidentBook()
        self.limiter = RateLimiter(self.policy.rate_limit, self.policy.rate_window)
        for key, value in state.items():
            if key.startswith("target:"):
                track = TargetTrack.from_json(value, base)
                self.book.targets[track.name] = track
            elif key == "limiter":
                self.limiter.restore(value, base)

    async def _refresh_counts(self) -> None:
        self.lanes.base = await self.bus.run_in_writer(self.outbox.counts)
        self._last_sent = await self.bus.run_in_writer(self.outbox.last_sent)
