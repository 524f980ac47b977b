"""The event bus: commit to the store first, then fan out to bounded subscriber queues.

CONTRACT:

    class Subscription:       # async iterator of committed events
        name: str
        dropped: int           # events lost to this subscriber because its queue was full
        async def get(self) -> Event
        def __aiter__ / __anext__
        def close(self) -> None

    class EventBus:
        def __init__(self, store: EventStore) -> None
        def subscribe(self, name: str, maxsize: int = 1000) -> Subscription
            # a full queue never blocks publish: the oldest queued event is dropped, counted,
            # and logged once per episode; the subscriber can catch up from the store by id.
        async def publish(self, event: Event) -> Event
            # appends via the store in a single writer thread (order kept, loop not blocked),
            # then puts the committed event (with id) into every subscriber's queue.
        async def close(self) -> None   # flushes; subscribers' iterators end

Additions: ``Subscription.last_id`` (id of the last event handed out; with ``dropped`` a
subscriber can re-read what it lost: ``store.query(after_id=sub.last_id,
newest_first=False, limit=None)``), ``Subscription.closed``, `SubscriptionClosed` (raised by
``get()`` after the end), ``EventBus.run_in_writer(fn, *args)`` (run other writes of the
store's connection on the writer thread), ``EventBus.store``.

No consumer writes inside an event's transaction: the commit holds the event alone, so a
consumer's fault can never roll an audit event back nor stop a publish. A consumer that must
not miss an event (alerting) keeps its own durable cursor over the store's ids, commits it
with its own work in its own transaction, and treats its subscription as a mere wake-up.

Subscribers are fed on the event loop that publishes; a bus is used from one loop.

Store trouble (disk full, read-only, I/O error, locked: `store_trouble_reason`): supervision
goes on. ``publish`` does not raise for it: the event waits, in publish order, in a bounded
in-memory buffer (``buffer_limit`` events, 10,000 by default, and ``buffer_max_bytes``,
32 MiB of messages and details; past either the oldest are dropped and counted) and
``publish`` returns it without an id. A small task retries from the writer thread with
backoff (``retry_initial`` doubling up to ``retry_max``); once the store works
it writes, in this order, a ``store-failing`` event (critical, stamped with the moment the
trouble began), an ``events-dropped`` event with the count if the buffer overflowed, every
buffered event in publish order (each gets its id then, and only then do subscribers see
it), and a ``store-recovered`` event; in chunks of `FLUSH_CHUNK` events, one transaction
(and one writer job) each, so publishes are not held up for long. ``store_problem()`` names
the trouble while it lasts (for ``/health``); callbacks registered with ``on_store_trouble``
are called on the loop once when an episode starts and once when it ends (alerting mails
the start directly: its outbox lives in the same database).

A chunk that fails for a reason that is not store trouble (an event the store rejects on
its own merits: `Event.of` makes text encodable, but an event built otherwise may not be)
must not wedge the buffer: the flush writes that chunk again event by event, one
transaction each, and drops only the events that fail so (``EventBus.rejected`` counts
them, each is logged once with its reason, and ``store-recovered`` counts them as dropped).

Retention: ``retention_worker(days, interval)`` prunes old rows in batches on the writer
thread (see `EventStore.prune`), so a publish waits for one batch at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import TypeVar

from watchdog.clock import Clock, RealClock
from watchdog.events import SYSTEM_TARGET, Event, Kind, utcnow
from watchdog.store import (
    PRUNE_BATCH,
    RECLAIM_PAGES,
    EventStore,
    StoreError,
    format_ts,
    store_trouble_reason,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

BUFFER_LIMIT = 10_000  # events kept in memory while the store cannot be written
BUFFER_MAX_BYTES = 32 * 1024 * 1024  # ... and their size (message + details, ~ as stored)
FLUSH_CHUNK = 500  # buffered events written per transaction (one writer job) on recovery
RETENTION_INTERVAL = 3600.0  # seconds between retention rounds


class SubscriptionClosed(Exception):
    """``get()`` on a subscription that has ended and has nothing left queued."""


class Subscription:
    """One subscriber's bounded queue of committed events, in commit order."""

    def __init__(
        self, name: str, maxsize: int, on_close: Callable[[Subscription], None] | None = None
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self.last_id: int | None = None
        # One slot more than maxsize keeps room for the end-of-stream sentinel.
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize + 1)
        self._closed = False
        self._overflowing = False
        self._on_close = on_close

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        return self._queue.qsize()

    def _offer(self, event: Event) -> None:
        """Queue ``event`` without ever blocking; when full, the oldest queued one goes."""
        if self._closed:
            return
        if self._queue.qsize() >= self.maxsize:
            self._queue.get_nowait()
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "subscriber %r is too slow: its queue of %d is full, dropping the oldest "
                    "events (it can re-read them from the store by id)",
                    self.name,
                    self.maxsize,
                )
        self._queue.put_nowait(event)

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)  # the spare slot: wakes a waiting get()

    async def get(self) -> Event:
        """The next committed event; `SubscriptionClosed` once closed and drained."""
        while True:
            if self._closed and self._queue.empty():
                raise SubscriptionClosed(self.name)
            event = await self._queue.get()
            if event is None:
                continue
            if self._queue.empty() and self._overflowing:
                self._overflowing = False
                log.info("subscriber %r caught up (%d dropped so far)", self.name, self.dropped)
            self.last_id = event.id
            return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Unsubscribe; queued events are still handed out, then iteration ends."""
        self._end()
        if self._on_close is not None:
            self._on_close(self)

    def __repr__(self) -> str:
        return (
            f"Subscription({self.name!r}, queued={self.qsize()}, dropped={self.dropped}, "
            f"closed={self._closed})"
        )


@dataclass(frozen=True, slots=True)
class StoreTrouble:
    """One episode in which the event store could not be written (what callbacks get)."""

    reason: str  # the latest error, e.g. "database or disk is full (SQLITE_FULL)"
    since: datetime  # wall time of the first failed write
    buffered: int  # events waiting in memory
    dropped: int  # events lost in this episode (the full buffer, rejected by the store)
    ended: datetime | None = None  # set in the notification that the episode is over
    written: int = 0  # events written from memory (at the end: all of them)

    @property
    def failing(self) -> bool:
        return self.ended is None

    def describe(self) -> str:
        if not self.failing:
            return (
                f"event store works again (failed from {format_ts(self.since)}: "
                f"{self.reason}); {self.written} buffered event(s) written, "
                f"{self.dropped} dropped"
            )
        text = (
            f"event store failing since {format_ts(self.since)}: {self.reason}; "
            f"{self.buffered} event(s) waiting in memory"
        )
        return text + (f", {self.dropped} dropped" if self.dropped else "")


@dataclass
class _Episode:
    """Writer-thread bookkeeping of a store trouble episode."""

    reason: str
    since: datetime
    failing_event: Event | None  # the store-failing event, until it is written
    drops: int = 0  # dropped and not yet told in an events-dropped event
    drop_kinds: Counter[str] = field(default_factory=Counter)
    first_dropped: datetime | None = None
    last_dropped: datetime | None = None
    dropped_total: int = 0
    written: int = 0


class _Flush(Enum):
    DONE = "done"  # nothing left: the episode is over
    MORE = "more"  # a chunk was written, more is waiting
    FAILED = "failed"  # the store still fails


@dataclass
class PruneReport:
    """What one retention round did."""

    older_than: datetime
    deleted: dict[str, int] = field(default_factory=dict)  # rows per table group
    batches: int = 0  # writer jobs used for deleting
    free_pages: int = 0  # free pages left in the file afterwards
    skipped: str | None = None  # why nothing was pruned (the store is failing)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


TroubleCallback = Callable[[StoreTrouble], None]


class EventBus:
    """Durable-first fan-out: each event is committed before anyone sees it.

    Appends run on one dedicated writer thread, so publish order is commit order and the
    event loop never waits on SQLite; fan-out to subscribers happens on the loop, in
    commit order, and never blocks. While the store cannot be written, events wait in a
    bounded buffer (see the module doc).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        buffer_limit: int = BUFFER_LIMIT,
        buffer_max_bytes: int = BUFFER_MAX_BYTES,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        if buffer_limit < 1 or buffer_max_bytes < 1:
            raise ValueError("buffer_limit and buffer_max_bytes must be >= 1")
        if retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError("need 0 < retry_initial <= retry_max")
        self._store = store
        self._subscriptions: list[Subscription] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erpwatch-store")
        self._closed = False
        self._clock: Clock = clock or RealClock()
        self._buffer_limit = buffer_limit
        self._buffer_max_bytes = buffer_max_bytes
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        # Written by the writer thread only; read under the lock by store_problem() & co.
        self._lock = threading.Lock()
        self._buffer: deque[Event] = deque()
        self._sizes: deque[int] = deque()  # the buffered events' sizes, in the same order
        self._buffer_bytes = 0
        self._episode: _Episode | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._trouble_callbacks: list[TroubleCallback] = []
        self._rejected = 0

    @property
    def store(self) -> EventStore:
        return self._store

    @property
    def rejected(self) -> int:
        """Buffered events dropped because the store rejected them with an error that is
        not store trouble (see the module doc); since the bus was made."""
        return self._rejected

    def subscribe(self, name: str, maxsize: int = 1000) -> Subscription:
        if self._closed:
            raise RuntimeError("the event bus is closed")
        subscription = Subscription(name, maxsize, on_close=self._unsubscribe)
        self._subscriptions.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    async def publish(self, event: Event) -> Event:
        """Commit ``event`` on the writer thread, then fan it out; returns it with its id.

        If the store cannot be written (`store_trouble_reason`), nothing is raised: the event
        waits in the buffer, behind any earlier one, and is returned without an id; it is
        committed and fanned out once the store works again. Any other failure of the
        append (a closed store, a bug) propagates here, and no subscriber sees the event.
        """
        if self._closed:
            raise RuntimeError("the event bus is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._write, event, loop)

    def _write(self, event: Event, loop: asyncio.AbstractEventLoop) -> Event:
        if self._episode is not None:
            self._hold(event)  # behind what waits already: order is kept
            return event
        try:
            committed = self._store.append(event)
        except Exception as exc:
            reason = store_trouble_reason(exc)
            if reason is None:
                raise
            self._begin_trouble(reason)
            self._hold(event)
            loop.call_soon_threadsafe(self._trouble_began, self.store_trouble())
            return event
        # Scheduled from the writer thread in commit order (call_soon_threadsafe is FIFO)
        # and before the publisher's future resolves: order holds across publishers.
        loop.call_soon_threadsafe(self._fan_out, committed)
        return committed

    def _fan_out(self, event: Event) -> None:
        for subscription in tuple(self._subscriptions):
            subscription._offer(event)

    def _fan_out_many(self, events: list[Event]) -> None:
        for event in events:
            self._fan_out(event)

    async def run_in_writer(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the writer thread, after every event published so far.

        For other work on the store's connection (e.g. alerting's pipeline step, marking an
        outbox row sent). An exception raised by ``fn`` reaches only this caller: events
        published before or after are committed and fanned out as usual.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # --- store trouble --------------------------------------------------------------------

    def store_problem(self) -> str | None:
        """None while the store takes every event; else what is wrong (for ``/health``)."""
        trouble = self.store_trouble()
        return trouble.describe() if trouble is not None else None

    def store_trouble(self) -> StoreTrouble | None:
        """The current trouble episode, if any (a snapshot)."""
        with self._lock:
            return self._snapshot()

    @property
    def buffer_limit(self) -> int:
        return self._buffer_limit

    @property
    def buffered(self) -> int:
        """Events waiting in memory for the store."""
        return len(self._buffer)

    def on_store_trouble(self, callback: TroubleCallback) -> Callable[[], None]:
        """Call ``callback(trouble)`` on the loop when an episode starts and when it ends
        (``trouble.failing`` tells which); registered during an episode, it is called soon
        with the current one. Returns a function that unregisters it. A callback that
        raises is logged; it never disturbs the bus."""
        self._trouble_callbacks.append(callback)
        current = self.store_trouble()
        if current is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to call on
                asyncio.get_running_loop().call_soon(self._call, callback, current)

        def unregister() -> None:
            if callback in self._trouble_callbacks:
                self._trouble_callbacks.remove(callback)

        return unregister

    def _snapshot(self, ended: datetime | None = None) -> StoreTrouble | None:
        episode = self._episode
        if episode is None:
            return None
        return StoreTrouble(
            reason=episode.reason,
            since=episode.since,
            buffered=len(self._buffer),
            dropped=episode.dropped_total,
            ended=ended,
            written=episode.written,
        )

    def _begin_trouble(self, reason: str) -> None:
        since = utcnow()
        failing = Event.of(
            SYSTEM_TARGET,
            Kind.STORE_FAILING,
            f"event store failing: {reason}; events wait in memory (up to "
            f"{self._buffer_limit:,}) until it works again",
            reason=reason,
            path=str(self._store.path),
            buffer_limit=self._buffer_limit,
        )
        with self._lock:
            self._episode = _Episode(reason, since, dataclasses.replace(failing, ts=since))
        log.error(
            "event store %s failing (%s): supervision goes on; events wait in memory (up to "
            "%d) and are written when it works again",
            self._store.path,
            reason,
            self._buffer_limit,
        )

    def _hold(self, event: Event) -> None:
        episode = self._episode
        assert episode is not None
        size = len(event.message) + len(event.details_json()) + 200
        with self._lock:
            while self._buffer and (
                len(self._buffer) >= self._buffer_limit
                or self._buffer_bytes + size > self._buffer_max_bytes
            ):
                lost = self._buffer.popleft()
                self._buffer_bytes -= self._sizes.popleft()
                if not episode.dropped_total:
                    log.error(
                        "the event buffer is full (%d events or %d MiB): dropping the oldest "
                        "until the store works again (counted in an events-dropped event)",
                        self._buffer_limit,
                        self._buffer_max_bytes // (1024 * 1024),
                    )
                episode.drops += 1
                episode.dropped_total += 1
                episode.drop_kinds[lost.kind] += 1
                episode.first_dropped = episode.first_dropped or lost.ts
                episode.last_dropped = lost.ts
            self._buffer.append(event)
            self._sizes.append(size)
            self._buffer_bytes += size

    def _trouble_began(self, trouble: StoreTrouble | None) -> None:
        if trouble is None:
            return
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(
                self._recover(), name="erpwatch-store-recovery"
            )
        self._notify(trouble)

    def _notify(self, trouble: StoreTrouble) -> None:
        for callback in tuple(self._trouble_callbacks):
            self._call(callback, trouble)

    @staticmethod
    def _call(callback: TroubleCallback, trouble: StoreTrouble) -> None:
        try:
            callback(trouble)
        except Exception:
            log.exception("a store-trouble callback failed")

    async def _recover(self) -> None:
        """Retry writing the buffer with backoff until it is all written."""
        loop = asyncio.get_running_loop()
        delay = self._retry_initial
        while True:
            await self._clock.sleep(delay)
            progressed = False
            try:
                while True:
                    state = await loop.run_in_executor(self._executor, self._flush_step, loop)
                    if state is _Flush.DONE:
                        return
                    if state is _Flush.FAILED:
                        break
                    progressed = True
            except Exception:
                if self._closed:  # the writer thread is gone: close() tried its last flush
                    return
                # A bug, not the store: never let the episode hang without its retry task.
                log.exception("retrying the event store failed; trying again")
            delay = self._retry_initial if progressed else min(delay * 2, self._retry_max)

    def _flush_step(self, loop: asyncio.AbstractEventLoop) -> _Flush:
        """On the writer thread: write the next chunk of what the episode owes the store.

        Order: store-failing and events-dropped (when some were lost) with the first chunk
        of buffered events, then further chunks, the last one with store-recovered (which
        ends the episode); each chunk is one transaction, all of it or nothing.
        """
        episode = self._episode
        if episode is None:
            return _Flush.DONE
        head: list[Event] = []
        if episode.failing_event is not None:
            head.append(episode.failing_event)
        if episode.drops:
            head.append(self._dropped_event(episode))
        chunk = list(itertools.islice(self._buffer, FLUSH_CHUNK))
        last = len(chunk) == len(self._buffer)
        tail = [self._recovered_event(episode, episode.written + len(chunk))] if last else []
        try:
            committed = self._store.append_many([*head, *chunk, *tail])
        except Exception as exc:
            if store_trouble_reason(exc) is None and not isinstance(exc, StoreError):
                # Not the store's fault: most likely one event it cannot take. Retrying the
                # same chunk would fail for ever; write it event by event instead.
                log.warning(
                    "writing %d buffered event(s) in one transaction failed (%s: %s): "
                    "writing them one by one",
                    len(head) + len(chunk) + len(tail),
                    type(exc).__name__,
                    exc,
                )
                return self._flush_singly(loop, episode, chunk, last)
            self._still_failing(episode, exc)
            return _Flush.FAILED
        ended = utcnow()
        with self._lock:
            self._head_written(episode)
            for _ in chunk:
                self._buffer.popleft()
                self._buffer_bytes -= self._sizes.popleft()
            episode.written += len(chunk)
            trouble = self._snapshot(ended=ended) if last else None
            if last:
                self._episode = None
        return self._flushed(loop, episode, committed, trouble)

    def _flush_singly(
        self, loop: asyncio.AbstractEventLoop, episode: _Episode, chunk: list[Event], last: bool
    ) -> _Flush:
        """`_flush_step`'s fallback: the same events in the same order, one transaction each.

        An event the store rejects with an error that is not store trouble is dropped
        (`_append_alone`); store trouble (or an unusable store) stops the step, keeping what
        is not written yet for the next try.
        """
        committed: list[Event] = []
        try:
            if episode.failing_event is not None:
                self._append_alone(episode.failing_event, committed)
                with self._lock:
                    episode.failing_event = None
            if episode.drops:
                self._append_alone(self._dropped_event(episode), committed)
                with self._lock:
                    self._head_written(episode)
            for event in chunk:
                written = self._append_alone(event, committed)
                with self._lock:
                    self._buffer.popleft()
                    self._buffer_bytes -= self._sizes.popleft()
                    if written:
                        episode.written += 1
                    else:
                        episode.dropped_total += 1
            if last:
                self._append_alone(self._recovered_event(episode, episode.written), committed)
        except Exception as exc:
            loop.call_soon_threadsafe(self._fan_out_many, committed)
            if store_trouble_reason(exc) is None and not isinstance(exc, StoreError):
                log.exception("writing the buffered events one by one failed; retrying")
            self._still_failing(episode, exc)
            return _Flush.FAILED
        trouble = None
        if last:
            ended = utcnow()
            with self._lock:
                trouble = self._snapshot(ended=ended)
                self._episode = None
        return self._flushed(loop, episode, committed, trouble)

    def _append_alone(self, event: Event, committed: list[Event]) -> bool:
        """Append ``event`` in a transaction of its own: True once written (added to
        ``committed``); False if the store rejected it with an error that is not store
        trouble (dropped: counted in `rejected` and logged once, with the reason). Store
        trouble and `StoreError` (an unusable store) are raised."""
        try:
            committed.append(self._store.append(event))
        except Exception as exc:
            if store_trouble_reason(exc) is not None or isinstance(exc, StoreError):
                raise
            self._rejected += 1
            log.error(
                "the event store rejected a buffered %s event of %r (%s: %s): dropped it, "
                "the events after it are written (%d rejected so far)",
                event.kind,
                event.target,
                type(exc).__name__,
                exc,
                self._rejected,
                exc_info=exc,
            )
            return False
        return True

    @staticmethod
    def _head_written(episode: _Episode) -> None:
        """The store-failing and events-dropped events are written (under the lock)."""
        episode.failing_event = None
        episode.drops = 0
        episode.drop_kinds.clear()
        episode.first_dropped = episode.last_dropped = None

    def _still_failing(self, episode: _Episode, exc: Exception) -> None:
        """A flush failed: keep the episode's reason current (store trouble only)."""
        reason = store_trouble_reason(exc)
        if reason is not None and reason != episode.reason:
            log.warning("event store still failing, now: %s", reason)
            with self._lock:
                episode.reason = reason

    def _flushed(
        self,
        loop: asyncio.AbstractEventLoop,
        episode: _Episode,
        committed: list[Event],
        trouble: StoreTrouble | None,
    ) -> _Flush:
        """Fan out what a flush step committed; with ``trouble`` (the episode's end), tell."""
        loop.call_soon_threadsafe(self._fan_out_many, committed)
        if trouble is None:
            return _Flush.MORE
        log.warning(
            "event store works again after %.1fs: %d buffered event(s) written, %d dropped",
            ((trouble.ended or utcnow()) - episode.since).total_seconds(),
            episode.written,
            episode.dropped_total,
        )
        loop.call_soon_threadsafe(self._notify, trouble)
        return _Flush.DONE

    def _dropped_event(self, episode: _Episode) -> Event:
        event = Event.of(
            SYSTEM_TARGET,
            Kind.EVENTS_DROPPED,
            f"{episode.drops} event(s) lost while the event store failed: the in-memory "
            f"buffer ({self._buffer_limit:,} events, "
            f"{self._buffer_max_bytes // (1024 * 1024)} MiB) was full, the oldest were dropped",
            count=episode.drops,
            kinds=dict(episode.drop_kinds.most_common(50)),
            first_ts=format_ts(episode.first_dropped) if episode.first_dropped else None,
            last_ts=format_ts(episode.last_dropped) if episode.last_dropped else None,
            buffer_limit=self._buffer_limit,
            buffer_max_bytes=self._buffer_max_bytes,
        )
        # Stamped at the newest lost event: the gap sits right before the events kept.
        return dataclasses.replace(event, ts=episode.last_dropped or event.ts)

    def _recovered_event(self, episode: _Episode, written: int) -> Event:
        seconds = (utcnow() - episode.since).total_seconds()
        return Event.of(
            SYSTEM_TARGET,
            Kind.STORE_RECOVERED,
            f"event store works again after {seconds:.1f}s; {written} buffered "
            f"event(s) written, {episode.dropped_total} dropped",
            reason=episode.reason,
            since=format_ts(episode.since),
            failed_for_s=round(seconds, 3),
            written=written,
            dropped=episode.dropped_total,
        )

    # --- retention ------------------------------------------------------------------------

    async def retention_worker(
        self,
        days: float,
        interval: float = RETENTION_INTERVAL,
        *,
        batch: int = PRUNE_BATCH,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        """Every ``interval`` seconds, prune what is older than ``days`` (`prune_once`).

        ``days <= 0`` keeps everything forever: returns at once. Meant to run under the
        task supervisor; a failing store pauses it (logged), anything else raises.
        """
        if days <= 0:
            log.info("retention is off (ERPWATCH_RETENTION_DAYS=0): events are kept forever")
            return
        if interval <= 0:
            raise ValueError("interval must be > 0")
        while True:
            await self.prune_once(wall() - timedelta(days=days), batch=batch)
            await self._clock.sleep(interval)

    async def prune_once(self, older_than: datetime, *, batch: int = PRUNE_BATCH) -> PruneReport:
        """Delete rows older than ``older_than`` (`EventStore.prune`), one batch per writer
        job until none is left, then return freed pages to the file system."""
        report = PruneReport(older_than)
        problem = self.store_problem()
        if problem is not None:
            report.skipped = problem
            log.info("retention round skipped: %s", problem)
            return report
        prune = functools.partial(self._store.prune, older_than, batch=batch)
        try:
            while True:
                deleted = await self.run_in_writer(prune)
                report.batches += 1
                for name, count in deleted.items():
                    report.deleted[name] = report.deleted.get(name, 0) + count
                if all(count < batch for count in deleted.values()):
                    break
            free = -1
            while True:
                left = await self.run_in_writer(self._store.reclaim, RECLAIM_PAGES)
                if left == 0 or left == free:
                    break
                free = left
            report.free_pages = left
        except Exception as exc:
            reason = store_trouble_reason(exc)
            if reason is None:
                raise
            report.skipped = reason
            log.warning("retention round stopped: the event store fails (%s)", reason)
            return report
        if report.total:
            log.info(
                "retention: deleted %s older than %s in %d batch(es)",
                ", ".join(f"{n} {name} row(s)" for name, n in sorted(report.deleted.items())),
                format_ts(older_than),
                report.batches,
            )
        return report

    # --- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish pending publishes, end every subscription, stop the writer thread.

        Events still waiting for a failing store get one last try; what cannot be written
        then is lost (logged). The store stays open (its owner closes it). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # A barrier: resolves after every earlier append and after their fan-outs.
        await loop.run_in_executor(self._executor, _noop)
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        while self._episode is not None:
            state = await loop.run_in_executor(self._executor, self._flush_step, loop)
            if state is not _Flush.MORE:
                break
        trouble = self.store_trouble()
        if trouble is not None:
            log.error(
                "closing with the event store still failing (%s): %d buffered event(s) are lost",
                trouble.reason,
                trouble.buffered,
            )
        await loop.run_in_executor(self._executor, _noop)  # the fan-outs of that flush
        self._executor.shutdown(wait=False)
        for subscription in tuple(self._subscriptions):
            subscription.close()


def _noop() -> None:
    return None
