"""Live event fan-out to Server-Sent Events streams.

Every bus event is formatted and encoded once and handed to each open stream's bounded
queue; a stream that falls behind is emptied and told to re-read what it missed from the store
by id, so a stalled browser costs bounded memory, loses nothing and never blocks the publisher.

Those re-reads (catch-ups) run through one `ReplayGate`: at most ``limit`` of them read and
format the store at once, in worker threads; the others wait their turn.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from watchdog.events import Event

P = ParamSpec("P")
T = TypeVar("T")

STREAM_QUEUE = 256  # events buffered per SSE client before it re-reads from the store


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


STOP = _Signal("stop")  # the stream ends (server shutting down)
RESYNC = _Signal("resync")  # the stream lost events: re-read them from the store


@dataclass(frozen=True, slots=True)
class Frame:
    """One event, formatted and encoded once for every stream (no per-client copy)."""

    id: int
    data: bytes


StreamItem = Frame | _Signal


@dataclass(eq=False)
class EventStream:
    """One SSE client's queue."""

    queue: asyncio.Queue[StreamItem]
    start_id: int  # the newest event id known when the stream opened


@dataclass(eq=False)
class EventHub:
    """Hands every event to every open SSE stream without ever blocking the publisher.

    A stream whose queue is full is emptied and told to re-read from the store (by id), so a
    stalled browser costs a bounded amount of memory and loses nothing.
    """

    maxsize: int = STREAM_QUEUE
    last_id: int = 0
    _streams: set[EventStream] = field(default_factory=set)
    _stopped: bool = False

    @property
    def count(self) -> int:
        return len(self._streams)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def open(self) -> EventStream:
        stream = EventStream(asyncio.Queue(self.maxsize + 1), self.last_id)
        if self._stopped:
            stream.queue.put_nowait(STOP)
        else:
            self._streams.add(stream)
        return stream

    def close(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    def publish(self, event: Event) -> None:
        if event.id is None:
            raise ValueError("only committed events (with an id) are streamed")
        self.last_id = max(self.last_id, event.id)
        if not self._streams:
            return
        frame = Frame(event.id, format_sse(event).encode())
        for stream in self._streams:
            if stream.queue.qsize() >= self.maxsize:
                self._resync(stream)
            else:
                stream.queue.put_nowait(frame)

    def resync_all(self) -> None:
        for stream in self._streams:
            self._resync(stream)

    def stop_all(self) -> None:
        """Push the stop sentinel into every stream; streams opened later end at once."""
        self._stopped = True
        for stream in self._streams:
            _drain(stream.queue)
            stream.queue.put_nowait(STOP)
        self._streams.clear()

    @staticmethod
    def _resync(stream: EventStream) -> None:
        _drain(stream.queue)
        stream.queue.put_nowait(RESYNC)


class ReplayGate:
    """At most ``limit`` catch-up steps (one store page read and formatted) at once, each in
    a worker thread; the others wait, counted in `waiting`.

    A slot is held for one step, never while its frames are sent: a client that stops
    reading cannot keep one. A step whose caller is cancelled (the client hung up) keeps its
    slot until its thread has finished, so `running` is never more than ``limit``.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a replay gate needs at least one slot")
        self.limit = limit
        self.running = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(limit)

    async def run(self, step: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(None, functools.partial(step, *args, **kwargs))
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.shield(future)

    def _release(self, _: object) -> None:
        self.running -= 1
        self._slots.release()


def _drain(queue: asyncio.Queue[StreamItem]) -> None:
    while not queue.empty():
        queue.get_nowait()


def format_sse(event: Event) -> str:
    data = json.dumps(event.to_dict(), default=str, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"
