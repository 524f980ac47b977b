"""Monotonic time behind an interface, so pure logic and monitors can run on fake time."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """Time that moves only when told to; ``sleep`` returns once `advance` passes its deadline."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + max(seconds, 0.0), future))
        self._wake()
        await future

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._wake()

    def _wake(self) -> None:
        still: list[tuple[float, asyncio.Future[None]]] = []
        for deadline, future in self._sleepers:
            if future.done():
                continue
            if deadline <= self._now:
                future.set_result(None)
            else:
                still.append((deadline, future))
        self._sleepers = still
