"""A receiver that answered 2xx has taken the notification, however slowly the rest of its
answer comes: retrying it would post the same alert again on every retry, for ever, and hold
every later row of the ordered lane behind it."""

from __future__ import annotations

import asyncio

from alerting.delivery import Delivery
from tests.alerting.test_webhooks import raw_lane, statuses
from watchdog.bus import EventBus
from watchdog.clock import FakeClock
from watchdog.store import EventStore


async def lane_to(
    store: EventStore, bus: EventBus, status: bytes, dripping: bool
) -> tuple[Delivery, list[bytes], asyncio.Server]:
    """A lane to a receiver answering ``status`` at once; with ``dripping`` its body then
    comes one byte every 50 ms (never complete within the timeout)."""
    posts: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        posts.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 1000000\r\n\r\n")
        try:
            while dripping:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    delivery, server = await raw_lane(store, bus, answer, "firing", "resolved")
    return delivery, posts, server


async def test_a_200_whose_body_trickles_is_delivered_once(
    store: EventStore, bus: EventBus
) -> None:
    delivery, posts, server = await lane_to(store, bus, b"200 OK", dripping=True)
    try:
        assert await delivery.drain() == 2
        assert isinstance(delivery.clock, FakeClock)
        delivery.clock.advance(1000)
        assert await delivery.drain() == 0
    finally:
        server.close()
    assert statuses(store) == [("firing", "sent", 1), ("resolved", "sent", 1)]
    assert len(posts) == 2  # each once, in order


async def test_a_503_whose_body_trickles_is_still_a_retry(store: EventStore, bus: EventBus) -> None:
    delivery, posts, server = await lane_to(store, bus, b"503 Busy", dripping=True)
    try:
        assert await delivery.drain() == 0
    finally:
        server.close()
    assert statuses(store) == [("firing", "pending", 1), ("resolved", "pending", 0)]
    assert len(posts) == 1
