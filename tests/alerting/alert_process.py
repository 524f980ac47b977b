"""A process running only the alert service, for the SIGKILL tests (started by PID).

Settings come from ERPWATCH_* variables; with ``--publish TARGET`` it publishes one critical event
(target TARGET) after start-up. It prints ``ready`` and then runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

from alerting.service import AlertService
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.events import Event, Kind
from watchdog.store import EventStore


async def main(publish: str | None) -> None:
    settings = load_settings()
    store = EventStore(settings.event_db_path)
    bus = EventBus(store)
    service = AlertService(
        settings, store, bus, hostname="killhost", retry_initial=0.05, retry_max=0.2
    )
    await service.start()
    if publish:
        await bus.publish(Event.of(publish, Kind.RESTART_LIMIT_REACHED, "gave up after 5"))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[2] if sys.argv[1:2] == ["--publish"] else None))
