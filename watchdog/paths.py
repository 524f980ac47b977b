"""Where erpwatch's files are, read from ``ERPWATCH_*`` variables and the env file without
validating the rest of the settings (and without importing pydantic-settings: ~0.45 s).

For commands that need only a path: `history` reads the store, the control commands reach
the socket. A running erpwatch must stay reachable while its env file has an error. This is
the one definition of the precedence `watchdog.config` also uses: the process environment
wins over the env file, names compare case-insensitively, empty values count as unset.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_PREFIX = "ERPWATCH_"
DEFAULT_LOG_PATH = "watchdog_logs"
DB_FILE_NAME = "erpwatch.db"
DEFAULT_STATUS_HOST = "127.0.0.1"
DEFAULT_STATUS_PORT = 8765


def env_file() -> Path:
    """The env file read on top of the process environment (which wins): ``.env`` in the
    working directory, or the file ``ERPWATCH_ENV_FILE`` names."""
    return Path(os.environ.get(f"{ENV_PREFIX}ENV_FILE") or ".env")


def raw_setting(name: str) -> str | None:
    """One variable as the environment or the env file gives it (the environment wins)."""
    key = f"{ENV_PREFIX}{name.upper()}"
    for source_name, value in os.environ.items():
        if source_name.upper() == key and value:
            return value
    path = env_file()
    if path.is_file():
        from dotenv import dotenv_values  # python-dotenv: pydantic-settings' own parser

        for source_name, file_value in dotenv_values(path).items():
            if source_name.upper() == key and file_value:
                return file_value
    return None


def log_path() -> Path:
    return Path(raw_setting("log_path") or DEFAULT_LOG_PATH)


def event_db_path() -> Path:
    """`Settings.event_db_path` without validating the rest."""
    explicit = raw_setting("db_path")
    return Path(explicit) if explicit else log_path() / DB_FILE_NAME


def control_socket_path() -> Path:
    """`Settings.control_socket_path` without validating the rest."""
    explicit = raw_setting("control_socket")
    return Path(explicit) if explicit else log_path() / "erpwatch.sock"
