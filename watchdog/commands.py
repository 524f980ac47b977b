"""The modules that register ``erpwatch`` sub-commands (each has ``register(subparsers)``)."""

from __future__ import annotations

from watchdog import history, status_cmd

MODULES = [history, status_cmd]
