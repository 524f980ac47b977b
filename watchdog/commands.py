"""Every ``erpwatch`` sub-command: its name, the module that registers it (each has
``register(subparsers)``) and its one-line help.

The table is static so that the parser imports only the chosen command's module: building
every sub-parser would import the whole run path (uvicorn, jinja2, pydantic-settings, …) for
``erpwatch --version``. A test checks that it matches what the modules register.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("watchdog.app", "supervise the configured targets in the foreground (Ctrl+C stops)"),
    "status": ("watchdog.status_cmd", "show each target's state"),
    "history": ("watchdog.history", "show recorded events (newest first)"),
    "logs": ("watchdog.logs", "show a target's stdout/stderr"),
    "restart": (
        "watchdog.control_cmd",
        "restart targets now (not counted against MAX_RESTARTS, no alert)",
    ),
    "stop": (
        "watchdog.control_cmd",
        "stop targets and keep them stopped (also across erpwatch restarts)",
    ),
    "start": ("watchdog.control_cmd", "start stopped targets (also one past its restart limit)"),
    "reload": (
        "watchdog.control_cmd",
        "re-read the configuration (like SIGHUP): apply what changed",
    ),
    "check": ("watchdog.preflight", "check the configuration and the environment before running"),
    "silence": ("alerting.commands", "hold alert mail about a target for a while"),
    "unsilence": ("alerting.commands", "end a target's silence now"),
    "test-email": ("alerting.commands", "send a test alert mail with the current settings"),
    "test-alert": (
        "alerting.commands",
        "send a test notification to every configured receiver (mail, webhooks, ...)",
    ),
    "demo": (
        "watchdog.demo.runner",
        "supervise a sample backend and inject a crash, a hang and a crash loop",
    ),
}
