"""A webhook answer is read as the bytes on the wire, never decompressed: a few KiB of
doubly gzipped zeros (``Content-Encoding: gzip, gzip``) inflate to hundreds of MiB, and
httpx's decoder inflates a whole network read at once, before any byte budget applies."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib

from tests.alerting.test_webhooks import raw_lane, statuses
from watchdog.bus import EventBus
from watchdog.store import EventStore

INFLATED = 200 << 20  # bytes the answer inflates to


def bomb() -> bytes:
    """``INFLATED`` zero bytes, gzipped twice (about 1 KiB)."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    chunk = bytes(1 << 20)
    once = b"".join(inner.compress(chunk) for _ in range(INFLATED >> 20)) + inner.flush()
    return gzip.compress(once, 9)


async def test_a_gzip_bomb_answer_is_not_inflated(store: EventStore, bus: EventBus) -> None:
    body = bomb()
    asked: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    delivery, server = await raw_lane(store, bus, answer, "firing", wait=30)
    tracemalloc.start()
    try:
        accepted = await delivery.drain()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.close()
    assert accepted == 1
    assert statuses(store) == [("firing", "sent", 1)]
    assert peak < 16 << 20, f"{peak >> 20} MiB allocated to read a {len(body)}-byte answer"
    assert b"accept-encoding: identity" in asked[0].lower()
