"""The ``erpwatch`` console script. ``erpwatch --version`` is answered here, before argparse
(and with it re, gettext and locale) is imported, which would double the start of a bare
interpreter; every other command line goes to `watchdog.cli.main`."""

from __future__ import annotations

import sys

from watchdog import __version__


def version_line() -> str:
    return f"erpwatch {__version__}"


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words == ["--version"]:
        print(version_line())
        return 0
    from watchdog.cli import main as cli_main

    return cli_main(words)
