"""SSE catch-ups are bounded: a client resuming from far back (``Last-Event-ID: 0``) gets the
newest `CATCH_UP_MAX` events, not the whole history, and at most `CATCH_UP_CONCURRENCY`
catch-ups read and format the store at once. Real server on 127.0.0.1, real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import await_until
from tests.watchdog.test_api import FakeSource, close_env, make_env
from watchdog import api
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.events import Event, Kind
from watchdog.store import EventStore


@dataclass
class Replay:
    """What one /events stream sent up to its first heartbeat (the catch-up is over then:
    the stream is waiting on its live queue)."""

    ids: list[int] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


async def read_until_heartbeat(lines: AsyncIterator[str]) -> Replay:
    """Read one stream's lines (``response.aiter_lines()``, one iterator per stream)."""
    replay = Replay()
    async with asyncio.timeout(30):
        async for line in lines:
            if line == ": heartbeat":
                return replay
            if line.startswith("id: "):
                replay.ids.append(int(line.removeprefix("id: ")))
            elif line.startswith(":"):
                replay.comments.append(line)
    raise AssertionError("the stream ended before its first heartbeat")


def store_events(store: EventStore, count: int) -> list[int]:
    committed = store.append_many(
        [Event.of("backend", Kind.HEALTHY, f"n{n}", n=n) for n in range(count)]
    )
    return [event.id or 0 for event in committed]


def truncation_notices(replay: Replay) -> list[str]:
    return [c for c in replay.comments if "catch-up limited" in c]


@pytest.mark.parametrize("how", ["header", "query"])
async def test_catch_up_from_zero_delivers_only_the_newest_cap_in_order(
    tmp_path: Path, how: str
) -> None:
    env = await make_env(tmp_path)
    try:
        stored = store_events(env.store, 1500)
        request: dict[str, Any] = (
            {"headers": {"Last-Event-ID": "0"}}
            if how == "header"
            else {"params": {"last_event_id": "0"}}
        )
        async with env.client.stream("GET", "/events", **request) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            replay = await read_until_heartbeat(lines)
            assert len(replay.ids) < len(stored), "replayed the whole history"
            assert replay.ids == stored[-api.CATCH_UP_MAX :]
            assert len(truncation_notices(replay)) == 1
            # The stream goes on live after the bounded catch-up: no gap, no duplicate.
            live = await env.bus.publish(Event.of("backend", Kind.DEGRADED, "slow"))
            after = await read_until_heartbeat(lines)
            assert after.ids == [live.id]
    finally:
        await close_env(env)


async def test_catch_up_of_exactly_the_cap_is_complete_and_says_nothing(tmp_path: Path) -> None:
    env = await make_env(tmp_path)
    try:
        stored = store_events(env.store, api.CATCH_UP_MAX + 50)
        resume = stored[-api.CATCH_UP_MAX - 1]
        headers = {"Last-Event-ID": str(resume)}
        async with env.client.stream("GET", "/events", headers=headers) as response:
            replay = await read_until_heartbeat(response.aiter_lines())
        assert replay.ids == stored[-api.CATCH_UP_MAX :]
        assert truncation_notices(replay) == []
    finally:
        await close_env(env)


async def test_resync_after_overflow_is_bounded_too(tmp_path: Path) -> None:
    """A live stream whose queue overflowed re-reads at most the cap (the newest)."""
    env = await make_env(tmp_path)
    try:
        async with env.client.stream("GET", "/events") as response:
            await await_until(lambda: env.server.hub.count == 1, timeout=5, what="stream open")
            env.server.hub.maxsize = 3
            # Committed first, then handed to the hub, which overflows the stream's queue.
            committed = store_events(env.store, api.CATCH_UP_MAX + 300)
            for event_id in committed[:4]:
                event = env.store.get(event_id)
                assert event is not None
                env.server.hub.publish(event)
            replay = await read_until_heartbeat(response.aiter_lines())
        # The overflow emptied the queue: everything comes from the (bounded) re-read.
        assert replay.ids == committed[-api.CATCH_UP_MAX :]
        assert len(truncation_notices(replay)) == 1
    finally:
        await close_env(env)


class GatedStore(EventStore):
    """A real store whose catch-up reads (``after_id`` given) wait for `gate` while
    `closed`; counts how many run at once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.closed = False
        self.gate = threading.Event()
        self.inside = 0
        self.peak = 0
        self._lock = threading.Lock()

    def query(self, *, after_id: int | None = None, **kw: Any) -> list[Event]:
        if after_id is None or not self.closed:
            return super().query(after_id=after_id, **kw)
        with self._lock:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
        try:
            assert self.gate.wait(30), "the test never opened the gate"
            return super().query(after_id=after_id, **kw)
        finally:
            with self._lock:
                self.inside -= 1


@dataclass
class Served:
    server: StatusServer
    store: GatedStore
    bus: EventBus
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def gated_server(tmp_path: Path) -> AsyncIterator[Served]:
    store = GatedStore(tmp_path / "events.db")
    bus = EventBus(store)
    server = StatusServer(
        load_settings(status_port=0, log_path=tmp_path / "logs"),
        source=FakeSource(),
        store=store,
        bus=bus,
        heartbeat=0.2,
        probe_sample_interval=None,
    )
    await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    try:
        yield Served(server, store, bus, client)
    finally:
        store.gate.set()
        await client.aclose()
        await server.stop()
        await bus.close()
        store.close()


async def _catch_up_ids(client: httpx.AsyncClient, opened: list[int]) -> list[int]:
    async with client.stream("GET", "/events", headers={"Last-Event-ID": "0"}) as response:
        assert response.status_code == 200
        opened.append(1)
        return (await read_until_heartbeat(response.aiter_lines())).ids


async def test_catch_ups_beyond_the_limit_wait_their_turn(tmp_path: Path) -> None:
    limit = api.CATCH_UP_CONCURRENCY
    clients = limit + 3
    async with gated_server(tmp_path) as served:
        stored = store_events(served.store, 20)
        served.store.closed = True
        opened: list[int] = []
        readers = [
            asyncio.create_task(_catch_up_ids(served.client, opened)) for _ in range(clients)
        ]
        gate = served.server.replays
        await await_until(
            lambda: served.store.inside == limit and gate.waiting == clients - limit,
            timeout=10,
            what=f"{limit} catch-ups reading, {clients - limit} waiting",
        )
        assert served.store.peak == limit
        assert gate.running == limit
        served.store.gate.set()
        results: Sequence[list[int]] = await asyncio.wait_for(asyncio.gather(*readers), 30)
        assert [ids for ids in results] == [stored] * clients
        assert served.store.peak == limit
        assert gate.running == 0 and gate.waiting == 0
        assert len(opened) == clients


def test_cap_and_limit_are_sane() -> None:
    """The cap covers more than a live queue's worth of events (an overflowed stream gets
    all it missed in ordinary operation) and the limit leaves the default thread pool free
    for the other store reads (/health)."""
    from watchdog.sse import STREAM_QUEUE

    assert api.CATCH_UP_MAX >= 2 * STREAM_QUEUE
    assert 1 <= api.CATCH_UP_CONCURRENCY <= 4
