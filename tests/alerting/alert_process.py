"""A process running only the alert service, for the SIGKILL tests (started by PID).

Settings come from ERPWATCH_* variables. ``--publish TARGET`` publishes one critical event
(target TARGET) after start-up, then prints ``ready`` and runs until killed.
``--publish-and-die TARGET`` SIGKILLs itself the moment that event is committed, before the
alert pipeline can take it into account (its step needs the loop and the writer thread again).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from alerting.service import AlertService
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.events import Event, Kind
from watchdog.store import EventStore


async def main(mode: str | None, target: str | None) -> None:
    settings = load_settings()
    store = EventStore(settings.event_db_path)
    bus = EventBus(store)
    service = AlertService(
        settings, store, bus, hostname="killhost", retry_initial=0.05, retry_max=0.2
    )
    await service.start()
    if target is not None:
        await bus.publish(Event.of(target, Kind.RESTART_LIMIT_REACHED, "gave up after 5"))
        if mode == "--publish-and-die":
            os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] in ("--publish", "--publish-and-die"):
        asyncio.run(main(args[0], args[1]))
    else:
        asyncio.run(main(None, None))
