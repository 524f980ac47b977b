"""Errors that cross module boundaries, in a module that imports nothing (the CLI catches
them before it knows which command, and so which libraries, it needs)."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is wrong; the message names the variable and the expected form."""
