"""The ``erpwatch`` command. Each sub-command lives in the module of its concept and
registers itself through ``register(subparsers)``; this module only parses and dispatches.

A command handler has the signature ``handler(args: argparse.Namespace) -> int`` and loads
settings itself via `watchdog.config.load_settings` (so `history` works without a target).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from watchdog import __version__
from watchdog.config import ConfigError

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="erpwatch", description="Supervise an ERP backend and alert when it is down."
    )
    parser.add_argument("--version", action="version", version=f"erpwatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        module.register(subparsers)
    return parser


class CommandModule(Protocol):
    def register(self, subparsers: Any) -> None: ...


def _command_modules() -> list[CommandModule]:
    from watchdog import commands

    return list(commands.MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"erpwatch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
