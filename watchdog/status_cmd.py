"""``erpwatch status``: each target's state, from the running erpwatch's status API, or, when
none answers, the last known state from the event store (read-only).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import httpx

from watchdog.config import Settings, load_settings
from watchdog.events import SYSTEM_TARGET, Kind
from watchdog.states import TargetState
from watchdog.store import EventStore, StoreError

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
TIMEOUT_MAX_S = 600.0

# The state a target was last known to be in, by the kind of its last state-bearing event.
KIND_STATE: dict[str, TargetState] = {
    Kind.STARTED: TargetState.STARTING,
    Kind.RESTARTED: TargetState.STARTING,
    Kind.HEALTHY: TargetState.HEALTHY,
    Kind.DEGRADED: TargetState.DEGRADED,
    Kind.UNHEALTHY: TargetState.UNHEALTHY,
    Kind.CRASHED: TargetState.RESTARTING,
    Kind.RESTART_LIMIT_REACHED: TargetState.FAILED,
    Kind.CRASH_LOOP: TargetState.FAILED,
    Kind.DOWN: TargetState.FAILED,
    Kind.STOPPED: TargetState.STOPPED,
}
RECENT_SCAN = 200  # newest events scanned for target names not in the configuration


class StatusApiError(Exception):
    """The status API answered, but not with a status (e.g. a wrong token)."""


def api_base_url(settings: Settings) -> str:
    """Where a local client reaches the API (a wildcard bind address means loopback)."""
    host = settings.status_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.status_port}"


def fetch_status(settings: Settings, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running erpwatch's ``/status`` document, or None when no server answers."""
    if not settings.status_enabled or settings.status_port == 0:
        return None
    headers = {}
    if settings.status_token is not None:
        headers["Authorization"] = f"Bearer {settings.status_token.get_secret_value()}"
    url = f"{api_base_url(settings)}/status"
    try:
        response = httpx.get(url, params={"fresh": "1"}, headers=headers, timeout=timeout)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return None
    except httpx.HTTPError as exc:
        raise StatusApiError(f"{url}: {exc}") from exc
    if response.status_code == 401:
        raise StatusApiError(f"{url}: the token was refused (check ERPWATCH_STATUS_TOKEN)")
    if response.status_code == 421:
        raise StatusApiError(
            f"{url}: the server does not answer to this host name (a different erpwatch, or "
            "see ERPWATCH_STATUS_ALLOWED_HOSTS)"
        )
    if response.status_code != 200:
        raise StatusApiError(f"{url}: HTTP {response.status_code}")
    document = response.json()
    if not isinstance(document, dict) or not isinstance(document.get("targets"), list):
        raise StatusApiError(f"{url}: not an erpwatch status document")
    return document


def status_from_store(settings: Settings, store: EventStore) -> dict[str, Any]:
    """The last known state of each target (configured ones first, then any in the log)."""
    names = [config.name for config in settings.targets_resolved()]
    for event in store.query(limit=RECENT_SCAN):
        if event.target != SYSTEM_TARGET and event.target not in names:
            names.append(event.target)
    targets = []
    for name in names:
        last = store.last_event(name)
        stateful = store.query(target=name, kinds=list(KIND_STATE), limit=1)
        state = KIND_STATE[stateful[0].kind] if stateful else None
        targets.append(
            {
                "name": name,
                "state": str(state) if state is not None else "unknown",
                "colour": state.colour if state is not None else None,
                "last_event": last.to_dict() if last is not None else None,
            }
        )
    erpwatch = store.last_event(SYSTEM_TARGET)
    return {
        "source": "store",
        "store": str(store.path),
        "erpwatch_last_event": erpwatch.to_dict() if erpwatch is not None else None,
        "targets": targets,
    }


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _event_text(event: dict[str, Any] | None) -> str:
    if not event:
        return "-"
    return f"{event['ts']} {event['kind']}: {' '.join(str(event['message']).split())}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def _state_text(target: dict[str, Any]) -> str:
    """``stopped (by operator (alice) since 2026-12-01T10:00:00: upgrade)`` for a hold."""
    held = target.get("held")
    if not held:
        return str(target["state"])
    reason = f": {held['reason']}" if held.get("reason") else ""
    return f"stopped (by {held.get('actor', 'operator')} since {held.get('since', '?')}{reason})"


def format_api(document: dict[str, Any]) -> str:
    rows: list[Sequence[str]] = [("TARGET", "STATE", "PID", "UPTIME", "RESTARTS", "PROBE", "LAST")]
    for target in document["targets"]:
        probe = target.get("last_probe") or {}
        latency = probe.get("latency")
        rows.append(
            (
                str(target["name"]),
                _state_text(target),
                str(target["pid"]) if target.get("pid") is not None else "-",
                format_duration(target.get("uptime")),
                f"{target.get('restarts_in_window', 0)}/{target.get('restarts_total', 0)}",
                format_latency(latency) if latency is not None else "-",
                _event_text(target.get("last_event")),
            )
        )
    header = f"erpwatch {document['erpwatch']['version']} is running (from the status API)\n"
    if len(rows) == 1:
        return header + "no targets are supervised\n"
    return header + _table(rows)


def format_store(document: dict[str, Any]) -> str:
    last = document["erpwatch_last_event"]
    header = (
        "erpwatch is not running; last known states from the event log "
        f"{document['store']}\n(erpwatch's last event: {_event_text(last)})\n"
    )
    if not document["targets"]:
        return header + "no targets recorded\n"
    rows: list[Sequence[str]] = [("TARGET", "LAST KNOWN STATE", "LAST EVENT")]
    rows += [(t["name"], t["state"], _event_text(t["last_event"])) for t in document["targets"]]
    return header + _table(rows)


def register(subparsers: Any) -> None:
    """Add ``status`` to the ``erpwatch`` sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="show each target's state",
        description=(
            "Show each target's state from the running erpwatch (its status API at "
            "ERPWATCH_STATUS_HOST:ERPWATCH_STATUS_PORT, with ERPWATCH_STATUS_TOKEN), or, when "
            "it is not running, the last known state from the event log."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=2.0,
        metavar="S",
        help="API timeout (default 2 s)",
    )
    parser.set_defaults(handler=run_status)


def timeout_seconds(text: str) -> float:
    """``--timeout``: a finite number of seconds above 0, at most `TIMEOUT_MAX_S`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= TIMEOUT_MAX_S:
        raise argparse.ArgumentTypeError(
            f"expected more than 0 and at most {TIMEOUT_MAX_S:g} seconds, not {text!r}"
        )
    return value


def run_status(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    settings = load_settings()
    try:
        document = fetch_status(settings, timeout=args.timeout)
    except StatusApiError as exc:
        print(f"erpwatch status: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if document is not None:
        document = {"source": "api", **document}
        out.write(json.dumps(document, indent=2) + "\n" if args.json else format_api(document))
        return EXIT_OK
    path = settings.event_db_path
    try:
        with EventStore.open_readonly(path) as store:
            document = status_from_store(settings, store)
    except StoreError as exc:
        print(
            f"erpwatch status: erpwatch is not running and the event log cannot be read "
            f"({path}): {exc}",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    out.write(json.dumps(document, indent=2) + "\n" if args.json else format_store(document))
    return EXIT_OK
