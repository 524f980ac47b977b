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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from watchdog.events import Event
from watchdog.store import EventStore

log = logging.getLogger(__name__)

T = TypeVar("T")


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


class EventBus:
    """Durable-first fan-out: each event is committed before anyone sees it.

    Appends run on one dedicated writer thread, so publish order is commit order and the
    event loop never waits on SQLite; fan-out to subscribers happens on the loop, in
    commit order, and never blocks.
    """

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._subscriptions: list[Subscription] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erpwatch-store")
        self._closed = False

    @property
    def store(self) -> EventStore:
        return self._store

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

        If the append fails, nothing is committed, no subscriber sees the event, and the
        error propagates here.
        """
        if self._closed:
            raise RuntimeError("the event bus is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._write, event, loop)

    def _write(self, event: Event, loop: asyncio.AbstractEventLoop) -> Event:
        committed = self._store.append(event)
        # Scheduled from the writer thread in commit order (call_soon_threadsafe is FIFO)
        # and before the publisher's future resolves: order holds across publishers.
        loop.call_soon_threadsafe(self._fan_out, committed)
        return committed

    def _fan_out(self, event: Event) -> None:
        for subscription in tuple(self._subscriptions):
            subscription._offer(event)

    async def run_in_writer(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the writer thread, after every event published so far.

        For other work on the store's connection (e.g. alerting's pipeline step, marking an
        outbox row sent). An exception raised by ``fn`` reaches only this caller: events
        published before or after are committed and fanned out as usual.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        """Finish pending publishes, end every subscription, stop the writer thread.

        The store stays open (its owner closes it). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # A barrier: resolves after every earlier append and after their fan-outs.
        await loop.run_in_executor(self._executor, _noop)
        self._executor.shutdown(wait=False)
        for subscription in tuple(self._subscriptions):
            subscription.close()


def _noop() -> None:
    return None
