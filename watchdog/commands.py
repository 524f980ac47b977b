"""The modules that register ``erpwatch`` sub-commands (each has ``register(subparsers)``)."""

from __future__ import annotations

from alerting import commands as alerting_commands
from watchdog import app, control_cmd, history, logs, preflight, status_cmd
from watchdog.demo import runner as demo

MODULES = [app, control_cmd, demo, history, status_cmd, logs, preflight, alerting_commands]
