"""The ``erpwatch`` command. Each sub-command lives in the module of its concept and
registers itself through ``register(subparsers)``; this module only parses and dispatches,
and imports only the chosen command's module (`watchdog.commands.COMMANDS`).

A command handler has the signature ``handler(args: argparse.Namespace) -> int`` and loads
what it needs itself (settings, the store), so `history` works without a target.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from watchdog import __version__
from watchdog.commands import COMMANDS
from watchdog.errors import ConfigError

EXIT_CONFIG = 2


def chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the chosen command's module registers its sub-parsers; the
    others are listed by name and help only (for ``erpwatch --help``)."""
    parser = argparse.ArgumentParser(
        prog="erpwatch", description="Supervise an ERP backend and alert when it is down."
    )
    parser.add_argument("--version", action="version", version=f"erpwatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = chosen_command(sys.argv[1:] if argv is None else argv)
    if chosen in COMMANDS:
        importlib.import_module(COMMANDS[chosen][0]).register(subparsers)
    else:
        for name, (_module, help_text) in COMMANDS.items():
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"erpwatch: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
