"""Shared by the scenario scripts run in their own interpreter (emfile_, survivor_scenario):
a publisher that keeps events in memory, and a polling wait with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from watchdog.events import Event


class Recorder:
    """A bus stand-in: the scenario's own descriptors or store must not be in the way."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> Event:
        self.events.append(event)
        return event


async def until(predicate: Callable[[], object], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.01)
