"""The ``erpwatch`` command. Each sub-command lives in the module of its concept and
registers itself through ``register(subparsers)``; this module only parses and dispatches,
and imports only the chosen command's module (`watchdog.commands.COMMANDS`).

A command handler has the signature ``handler(args: argparse.Namespace) -> int`` and loads
what it needs itself (settings, the store), so `history` works without a target.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from watchdog.commands import COMMANDS
from watchdog.entry import version_line
from watchdog.errors import ConfigError

EXIT_CONFIG = 2


def chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def terminal_columns() -> int:
    """The terminal's width as `shutil.get_terminal_size` finds it ($COLUMNS, then the
    terminal of stdout, then 80), without importing shutil (and with it zlib, bz2, lzma)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized by `terminal_columns`. argparse's own imports shutil to
    size itself, and makes one for every argument added: ~2 ms of each command's start."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = terminal_columns() - 2 if width is None else width  # argparse's margin
        super().__init__(prog, indent_increment, max_help_position, width)


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`argparse.RawDescriptionHelpFormatter` (description and epilog as written), sized
    as `HelpFormatter`."""


class Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose help is formatted by `HelpFormatter` unless told
    otherwise; the sub-parsers are of this class too (argparse makes them as their parent)."""

    def __init__(self, *args: object, **kwargs: object) -> None:  # not typing.Any: 3 ms
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


class _VersionAction(argparse.Action):
    """``--version``: one line, printed as it is. argparse's own version action wraps it
    with the help formatter, which imports textwrap for that (~1 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(version_line())
        parser.exit()


def asks_for_help(argv: Sequence[str]) -> bool:
    """Whether ``argv`` has ``-h`` or ``--help`` (or an abbreviation argparse accepts)."""
    return any(arg == "-h" or (len(arg) > 2 and "--help".startswith(arg)) for arg in argv)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the chosen command's module registers its sub-parsers.

    The other commands are listed by name and help only, and only where the list is shown:
    in the help, and in the error for an unknown command. Each listed sub-parser costs
    argparse three gettext look-ups on disk: building them was most of ``--version``."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = Parser(
        prog="erpwatch", description="Supervise an ERP backend and alert when it is down."
    )
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = chosen_command(words)
    if chosen is not None and asks_for_help(words[: words.index(chosen)]):
        chosen = None  # `erpwatch -h status` is the top-level help: it lists every command
    if chosen in COMMANDS:
        importlib.import_module(COMMANDS[chosen][0]).register(subparsers)
    elif chosen is not None or asks_for_help(words):
        for name, (_module, help_text) in COMMANDS.items():
            subparsers.add_parser(name, help=help_text, add_help=False)  # never parses
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
