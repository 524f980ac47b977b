"""``erpwatch run`` without its start-up preflight, for the scale benchmark only.

    python bench/run_unchecked.py   # with erpwatch installed in that python

The preflight refuses a target whose health port is already held by another process (a
stale backend, normally). In the scale benchmark the targets are ``sleep`` processes and ONE
asyncio process serves all their health URLs, so the ports are held on purpose. Everything
after the preflight is exactly what `erpwatch run` does: `watchdog.app.serve` with the same
settings, logging and signal handling (`watchdog.app.run_service`).
"""

from __future__ import annotations

from watchdog.app import run_service
from watchdog.config import load_settings


def main() -> None:
    settings = load_settings()
    run_service(settings, settings.targets_resolved())


if __name__ == "__main__":
    main()
