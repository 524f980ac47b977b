"""``erpwatch history``: read the event log (read-only, also while ``erpwatch run`` writes).

Kept light to import: no HTTP or server modules, only the store and the standard library.
The parsing and formatting helpers are pure functions, tested on their own.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from watchdog.cli import RawDescriptionHelpFormatter
from watchdog.events import Event, Kind
from watchdog.store import EventStore, StoreError, StoreNotFoundError

EXIT_OK = 0
EXIT_NO_DB = 1
EXIT_USAGE = 2

COLUMNS = ("id", "ts", "target", "kind", "severity", "message", "details")
TABLE_COLUMNS = ("ts", "target", "kind", "severity", "message")

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Stored times are fixed-width ISO text (store.format_ts): only 4-digit years keep text order
# equal to time order, and no event is older than the epoch.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LIMIT_MAX = 1_000_000_000  # beyond this a limit is a typo ("0 = all" says all)

_EPILOG = """\
times: ISO 8601 (2024-05-01, 2024-05-01T12:00, 2024-05-01T12:00:00+02:00; no offset = UTC)
or an age: 30s, 30m, 2h, 7d, 1w meaning that long ago. --since is inclusive, --until exclusive.
Times lie between 1970-01-01 and 9999-12-31; --limit is 0 (all) to 1000000000.

The database is ERPWATCH_DB_PATH, else ERPWATCH_LOG_PATH/erpwatch.db, unless --db is given.
It is opened read-only, so this works while `erpwatch run` writes.

exit status: 0 (also when nothing matches), 1 if the database does not exist or cannot be
read, 2 for bad options.
"""


class UsageError(ValueError):
    """A bad option value; the message is one line for the user."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An absolute ISO 8601 time (no offset = UTC) or an age like ``30m`` before ``now``;
    `UsageError` also for a time outside 1970..9999 (``1000000d``, ``0500-01-01``)."""
    out_of_range = UsageError(
        f"time {text.strip()!r} is out of range: times and ages must stay between "
        "1970-01-01 and 9999-12-31"
    )
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        base = now if now is not None else datetime.now(UTC)
        try:
            parsed = base - timedelta(seconds=amount * _UNIT_SECONDS[unit])
        except (OverflowError, ValueError):
            raise out_of_range from None
    else:
        try:
            parsed = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"cannot read time {text!r}: expected ISO 8601 (2024-05-01T12:00Z) "
                "or an age such as 30s, 30m, 2h, 7d"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            raise out_of_range from None
    if parsed < EARLIEST:
        raise out_of_range
    return parsed


def parse_limit(text: str | int, name: str = "limit") -> int:
    """A count of events: a whole number from 0 (all) to `LIMIT_MAX`; ``1e3`` is read too."""
    value = str(text).strip()
    try:
        number = int(value)
    except ValueError:
        try:
            as_float = float(value)
        except ValueError:
            as_float = math.nan
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise UsageError(f"{name} must be a whole number, not {value!r}") from None
        number = int(as_float)
    if number < 0:
        raise UsageError(f"{name} must be 0 (all) or more, not {value}")
    if number > LIMIT_MAX:
        raise UsageError(f"{name} {value} is too large: at most {LIMIT_MAX} (0 = all)")
    return number


def parse_kinds(values: Iterable[str]) -> list[str]:
    """``--kind a --kind b,c`` → ``[a, b, c]`` (order kept, duplicates dropped)."""
    kinds: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in kinds:
                kinds.append(part)
    return kinds


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_table(events: Sequence[Event]) -> str:
    """Aligned columns (ts, target, kind, severity, message); the message is not padded."""
    rows = [TABLE_COLUMNS] + [
        (
            str(e.to_dict()["ts"]),
            e.target,
            e.kind,
            str(e.severity),
            _one_line(e.message),
        )
        for e in events
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def format_json(events: Sequence[Event]) -> str:
    return json.dumps([e.to_dict() for e in events], indent=2, default=str) + "\n"


def format_csv(events: Sequence[Event]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for event in events:
        row: dict[str, Any] = event.to_dict()
        row["details"] = event.details_json()
        writer.writerow([row[column] for column in COLUMNS])
    return out.getvalue()


def register(subparsers: Any) -> None:
    """Add ``history`` to the ``erpwatch`` sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "history",
        help="show recorded events (newest first)",
        description="Show events from erpwatch's event log, newest first.",
        epilog=_EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", help="only this target (erpwatch itself: 'erpwatch')")
    parser.add_argument(
        "--kind",
        action="append",
        default=[],
        metavar="KIND",
        help="only this kind; repeat or comma-separate for several (e.g. crashed,restarted)",
    )
    parser.add_argument(
        "--severity",
        choices=("info", "warning", "critical"),
        help="minimum severity",
    )
    parser.add_argument("--since", metavar="TIME", help="from this time or age (e.g. 2h)")
    parser.add_argument("--until", metavar="TIME", help="before this time or age")
    parser.add_argument(
        "--limit",
        default="50",
        metavar="N",
        help="at most N events, the newest (default 50; 0 = all)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="a JSON array of events")
    output.add_argument("--csv", action="store_true", help="CSV with a header row")
    parser.add_argument("--db", type=Path, metavar="PATH", help="the event database file")
    parser.set_defaults(handler=run_history)


def _default_db_path() -> Path:
    from watchdog.paths import event_db_path  # the path only: no settings validated

    return event_db_path()


def run_history(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
        limit = parse_limit(args.limit, "--limit")
    except UsageError as exc:
        print(f"erpwatch history: {exc}", file=sys.stderr)
        return EXIT_USAGE
    kinds = parse_kinds(args.kind)
    unknown = [kind for kind in kinds if kind not in set(Kind)]
    if unknown:
        known = ", ".join(sorted(str(k) for k in Kind))
        print(f"erpwatch history: note: unknown kind {unknown} (known: {known})", file=sys.stderr)

    path: Path = args.db if args.db is not None else _default_db_path()
    try:
        store = EventStore.open_readonly(path)
    except StoreNotFoundError:
        print(
            f"erpwatch history: no event database at {path} (`erpwatch run` creates it; "
            "set ERPWATCH_DB_PATH or pass --db)",
            file=sys.stderr,
        )
        return EXIT_NO_DB
    except StoreError as exc:
        print(f"erpwatch history: {exc}", file=sys.stderr)
        return EXIT_NO_DB
    with store:
        events = store.query(
            target=args.target,
            kinds=kinds,
            severity=args.severity,
            since=since,
            until=until,
            limit=limit or None,
        )
    if args.json:
        text = format_json(events)
    elif args.csv:
        text = format_csv(events)
    elif events:
        text = format_table(events)
    else:
        print("erpwatch history: no matching events", file=sys.stderr)
        return EXIT_OK
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        # `erpwatch history | head`: the reader left, which is not an error. Point stdout at
        # devnull so the interpreter's final flush does not complain (Python docs' recipe).
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK
