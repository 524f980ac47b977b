"""``erpwatch run`` without its start-up preflight, for the scale benchmark only.

    python -m bench.run_unchecked

The preflight refuses a target whose health port is already held by another process (a
stale backend, normally). In the scale benchmark the targets are ``sleep`` processes and ONE
asyncio process serves all their health URLs, so the ports are held on purpose. Everything
after the preflight is exactly what `erpwatch run` does: `watchdog.app.serve` with the same
settings, logging and signal handling.
"""

from __future__ import annotations

import asyncio

from watchdog.app import Watchdog, install_stop_signals, serve
from watchdog.config import load_settings
from watchdog.logs import setup_logging


def main() -> None:
    settings = load_settings()
    setup_logging(settings)

    async def run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await serve(Watchdog(settings, settings.targets_resolved()), stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
