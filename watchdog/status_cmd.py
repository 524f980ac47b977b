"""``erpwatch status``: each target's state, from the running erpwatch's status API, or, when
none answers, the last known state from the event store (read-only).

Readable at a glance: the page's state names (``Down: restart limit reached``), times
relative to now (``down 5m``, ``up 2h 3m``, ``4s ago``), colour on a terminal, and an exit
code a script can test, the way ``systemctl status`` does (see `EXIT_CODES`).

Kept light (the command should answer within a few hundred milliseconds as a whole
process): the API is read with the standard library's ``http.client``, not httpx; nothing
of the server side (uvicorn, jinja2) is imported.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import socket
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from watchdog.cli import RawDescriptionHelpFormatter
from watchdog.events import SYSTEM_TARGET, Kind
from watchdog.paths import (
    DEFAULT_STATUS_HOST,
    DEFAULT_STATUS_PORT,
    control_socket_path,
    event_db_path,
    raw_setting,
)
from watchdog.states import STATE_LABELS, TargetState
from watchdog.store import EventStore, StoreError, StoreNotFoundError

EXIT_OK = 0  # every target healthy or degraded, or stopped by an operator
EXIT_NOT_RUNNING = 3  # a target is not running as it should, or erpwatch is not running
EXIT_UNKNOWN = 4  # the state cannot be read (no API and no event log, refused, corrupt)
EXIT_CODES = f"""\
exit status (like systemctl status):
  {EXIT_OK}  every target is healthy or degraded, or stopped by an operator on purpose
  {EXIT_NOT_RUNNING}  a target is not running as it should (starting, unhealthy, restarting,
     down, stopped without an operator's hold), or erpwatch is not running (the
     states shown are then the last ones recorded in the event log)
  {EXIT_UNKNOWN}  the state cannot be read: the API refused or gave no answer, or erpwatch
     is not running and the event log is missing, unreadable or corrupt (the
     reason is one line on stderr)
  2  usage or configuration error
A starting target counts as not running yet ({EXIT_NOT_RUNNING}), like systemd's "activating".
--json prints the status API's document (when erpwatch is not running: the event
log's last known states), with the same exit status.
Colour: --color=auto (the default) colours on a terminal unless NO_COLOR is set
(non-empty) or TERM=dumb; --color=always also colours through a pipe."""

TIMEOUT_MAX_S = 600.0


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class StatusConfig(Protocol):
    """What this command reads of the settings (`watchdog.config.Settings` has it all)."""

    @property
    def status_enabled(self) -> bool: ...
    @property
    def status_host(self) -> str: ...
    @property
    def status_port(self) -> int: ...
    @property
    def status_token(self) -> _Secret | None: ...
    @property
    def control_socket_path(self) -> Path: ...
    @property
    def event_db_path(self) -> Path: ...
    def targets_resolved(self) -> Sequence[Any]: ...


@dataclass(frozen=True)
class _Token:
    value: str

    def get_secret_value(self) -> str:
        return self.value


class QuickConfig:
    """The few settings a status read needs, from the environment and the env file with
    the settings' own precedence (`watchdog.paths`), without pydantic-settings (~0.45 s).
    Only the store fallback (erpwatch not running) loads and validates everything, for
    the names of the configured targets."""

    def __init__(self) -> None:
        enabled = (raw_setting("status_enabled") or "true").strip().lower()
        if enabled not in _BOOLEANS:
            raise ValueError("ERPWATCH_STATUS_ENABLED")
        self.status_enabled = _BOOLEANS[enabled]
        self.status_host = raw_setting("status_host") or DEFAULT_STATUS_HOST
        self.status_port = int(raw_setting("status_port") or DEFAULT_STATUS_PORT)
        if not 0 <= self.status_port <= 65535:
            raise ValueError("ERPWATCH_STATUS_PORT")
        token = raw_setting("status_token")
        self.status_token: _Secret | None = _Token(token) if token else None
        self.control_socket_path = control_socket_path()
        self.event_db_path = event_db_path()

    def targets_resolved(self) -> Sequence[Any]:
        from watchdog.config import load_settings

        return load_settings().targets_resolved()


# What pydantic reads as a bool; anything else goes to the full settings for its error.
_BOOLEANS = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True,
             "0": False, "false": False, "f": False, "no": False, "n": False,
             "off": False}  # fmt: skip


def status_config() -> StatusConfig:
    """`QuickConfig`, or the fully validated settings when a value it reads is wrong (so
    the error names the variable and the expected form, as for every command)."""
    try:
        return QuickConfig()
    except ValueError:
        from watchdog.config import load_settings

        return load_settings()


MAX_BODY = 64 * 1024 * 1024  # a /status document larger than this is not one
LABEL_MAX = 60  # characters of a state label (an operator's reason can be long)
TEXT_MAX = 80  # characters of an event message or a cause in the table

UP_STATES = frozenset({TargetState.HEALTHY, TargetState.DEGRADED})

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

# SGR codes of the colours of `TargetState.colour`: grey (stopped) is dim on a terminal.
SGR: Mapping[str, str] = {
    "green": "32",
    "yellow": "33",
    "red": "31",
    "grey": "2",
    "dim": "2",
    "bold": "1",
}


class StatusApiError(Exception):
    """The status API answered, but not with a status (a wrong token, no answer in time)."""


class StatusUnreadable(Exception):
    """Neither the API nor the event log tells the state."""


# --- reading ----------------------------------------------------------------------------


def _api_host(settings: StatusConfig) -> str:
    host = settings.status_host
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host.strip("[]")


def api_base_url(settings: StatusConfig) -> str:
    """Where a local client reaches the API (a wildcard bind address means loopback)."""
    host = _api_host(settings)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.status_port}"


def api_enabled(settings: StatusConfig) -> bool:
    return settings.status_enabled and settings.status_port != 0


def fetch_status(settings: StatusConfig, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running erpwatch's ``/status`` document, or None when nothing listens.

    Raises `StatusApiError` when something listens but gives no status: a refused token,
    a misdirected request (421), no answer within ``timeout``, not a status document."""
    if not api_enabled(settings):
        return None
    url = f"{api_base_url(settings)}/status"
    headers = {"Accept": "application/json"}
    if settings.status_token is not None:
        headers["Authorization"] = f"Bearer {settings.status_token.get_secret_value()}"
    conn = http.client.HTTPConnection(_api_host(settings), settings.status_port, timeout=timeout)
    try:
        try:
            conn.connect()
        except socket.gaierror as exc:
            raise StatusApiError(f"{url}: cannot resolve ERPWATCH_STATUS_HOST ({exc})") from exc
        except (ConnectionError, TimeoutError):
            return None  # refused, reset, or nothing there within the timeout
        except OSError as exc:
            raise StatusApiError(f"{url}: {exc.strerror or exc}") from exc
        try:
            conn.request("GET", "/status?fresh=1", headers=headers)
            response = conn.getresponse()
            body = response.read(MAX_BODY + 1)
        except TimeoutError:
            raise StatusApiError(f"{url}: no answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise StatusApiError(f"{url}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    if response.status == 401:
        raise StatusApiError(f"{url}: the token was refused (check ERPWATCH_STATUS_TOKEN)")
    if response.status == 421:
        raise StatusApiError(
            f"{url}: the server does not answer to this host name (a different erpwatch, or "
            "see ERPWATCH_STATUS_ALLOWED_HOSTS)"
        )
    if response.status != 200:
        raise StatusApiError(f"{url}: HTTP {response.status}")
    try:
        document = json.loads(body) if len(body) <= MAX_BODY else None
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("targets"), list):
        raise StatusApiError(f"{url}: not an erpwatch status document")
    return document


def control_answers(path: Path, timeout: float = 1.0) -> bool:
    """Does an erpwatch listen on its control socket? (Only asked when its API is off.)"""
    if len(os.fsencode(path)) >= 100:  # AF_UNIX's limit; control.py reaches it via /proc
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def label_for(state: str, held: Mapping[str, Any] | None = None) -> str:
    """The page's name of a state: ``Down: restart limit reached``, ``Stopped by X: why``."""
    if held:
        reason = held.get("reason")
        return f"Stopped by {held.get('actor') or 'operator'}" + (f": {reason}" if reason else "")
    return STATE_LABELS.get(state, state.capitalize())


def status_from_store(
    settings: StatusConfig, store: EventStore, *, erpwatch_running: bool = False
) -> dict[str, Any]:
    """The last known state of each target (configured ones first, then any in the log)."""
    names = [config.name for config in settings.targets_resolved()]
    for event in store.query(limit=RECENT_SCAN):
        if event.target != SYSTEM_TARGET and event.target not in names:
            names.append(event.target)
    targets = []
    for name in names:
        last = store.last_event(name)
        stateful = store.query(target=name, kinds=list(KIND_STATE), limit=2)
        state = KIND_STATE[stateful[0].kind] if stateful else None
        hold = stateful[0].details.get("held") if state is TargetState.STOPPED else None
        held = dict(hold) if isinstance(hold, Mapping) else None
        was = None  # stopped with erpwatch: what it was before (the last thing it did)
        if state is TargetState.STOPPED and held is None and len(stateful) > 1:
            before = KIND_STATE[stateful[1].kind]
            was = None if before is TargetState.STOPPED else label_for(str(before))
        targets.append(
            {
                "name": name,
                "state": str(state) if state is not None else "unknown",
                "colour": state.colour if state is not None else None,
                "label": label_for(str(state), held) if state is not None else "Unknown",
                "was": was,
                "held": held,
                "since": stateful[0].to_dict()["ts"] if stateful else None,
                "last_event": last.to_dict() if last is not None else None,
            }
        )
    erpwatch = store.last_event(SYSTEM_TARGET)
    return {
        "source": "store",
        "erpwatch_running": erpwatch_running,
        "store": str(store.path),
        "erpwatch_last_event": erpwatch.to_dict() if erpwatch is not None else None,
        "targets": targets,
    }


def read_status(settings: StatusConfig, timeout: float) -> dict[str, Any]:
    """The status document (``source``: ``api`` or ``store``). Raises `StatusUnreadable`."""
    try:
        document = fetch_status(settings, timeout=timeout)
    except StatusApiError as exc:
        raise StatusUnreadable(str(exc)) from exc
    if document is not None:
        return {"source": "api", **document}
    if api_enabled(settings):
        running, why = False, f"nothing answers at {api_base_url(settings)}"
    else:
        running = control_answers(settings.control_socket_path)
        why = "its status API is off (ERPWATCH_STATUS_ENABLED, ERPWATCH_STATUS_PORT)"
    path = settings.event_db_path
    what = "erpwatch is running but " + why if running else f"erpwatch is not running ({why})"
    unreadable = f"{what} and the event log {path} cannot be read"
    try:
        path.stat()  # is_file() (in open_readonly) says False for "permission denied" too
        if not os.access(path, os.R_OK):
            raise PermissionError(f"permission denied (uid {os.getuid()})")
        with EventStore.open_readonly(path) as store:
            return status_from_store(settings, store, erpwatch_running=running)
    except (FileNotFoundError, StoreNotFoundError):
        raise StatusUnreadable(f"{what} and there is no event log at {path}") from None
    except OSError as exc:
        raise StatusUnreadable(f"{unreadable}: {exc.strerror or exc}") from exc
    except (StoreError, sqlite3.Error) as exc:
        raise StatusUnreadable(f"{unreadable}: {exc}") from exc


# --- judging ----------------------------------------------------------------------------


def is_as_it_should(target: Mapping[str, Any]) -> bool:
    """Healthy or degraded, or stopped by an operator (a hold): nothing to do."""
    state = target.get("state")
    if state in UP_STATES:
        return True
    return state == TargetState.STOPPED and bool(target.get("held"))


def exit_code(document: Mapping[str, Any]) -> int:
    """`EXIT_OK` or `EXIT_NOT_RUNNING` for a document `read_status` returned."""
    if document.get("source") == "store" and not document.get("erpwatch_running"):
        return EXIT_NOT_RUNNING
    targets = document.get("targets") or []
    return EXIT_OK if all(is_as_it_should(t) for t in targets) else EXIT_NOT_RUNNING


# --- relative times (pure: ``now`` comes in) ----------------------------------------------


def format_span(seconds: float) -> str:
    """A length of time as people say it at a glance: ``4s``, ``5m``, ``2h 3m``, ``3d 4h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def parse_time(text: Any) -> datetime | None:
    """An ISO-8601 time of the API or the store (``Z`` or an offset; naive means UTC)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def relative(when: datetime | str | None, now: datetime) -> str:
    """``4s ago``, ``2h 3m ago``, ``in 5m`` (the future: a scheduled retry), ``just now``."""
    moment = parse_time(when) if not isinstance(when, datetime) else when
    if moment is None:
        return "-"
    delta = (now - moment).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"{format_span(delta)} ago" if delta > 0 else f"in {format_span(-delta)}"


def seconds_since(when: Any, now: datetime) -> float | None:
    moment = parse_time(when)
    return None if moment is None else (now - moment).total_seconds()


# --- kept for the page (`watchdog.api` uses these as template filters) ----------------------


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


# --- text -------------------------------------------------------------------------------


def use_colour(choice: str, stream: TextIO, environ: Mapping[str, str]) -> bool:
    """``always`` / ``never``; ``auto``: a terminal, unless ``NO_COLOR`` (no-color.org: any
    non-empty value) or ``TERM=dumb``. An explicit ``--color=always`` beats ``NO_COLOR``."""
    if choice == "always":
        return True
    if choice == "never" or environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Painter:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, style: str | None) -> str:
        if not self.enabled or not style or style not in SGR or not text:
            return text
        return f"\x1b[{SGR[style]}m{text}\x1b[0m"


def state_style(target: Mapping[str, Any]) -> str | None:
    """The page's tone: the state's colour (stopped: grey, dim on a terminal)."""
    colour = target.get("colour")
    return str(colour) if colour else None


def _clip(text: Any, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _event_text(event: Mapping[str, Any] | None, now: datetime) -> str:
    if not event:
        return "-"
    message = _clip(event.get("message", ""), TEXT_MAX)
    return f"{relative(event.get('ts'), now)} {event.get('kind')}: {message}"


def _table(
    rows: Sequence[Sequence[str]],
    paint: Painter,
    styles: Mapping[tuple[int, int], str] | None = None,
) -> list[str]:
    """Columns padded on the plain text, then painted (escape codes take no width)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            padded = cell.ljust(widths[c]) if c < len(widths) else cell
            style = "bold" if r == 0 else (styles or {}).get((r, c))
            # paint only the text, not the padding after it
            cells.append(paint(cell, style) + padded[len(cell) :])
        lines.append("  ".join(cells).rstrip())
    return lines


def _summary(targets: Sequence[Mapping[str, Any]], paint: Painter) -> str:
    bad = [t for t in targets if not is_as_it_should(t)]
    if not bad:
        return paint(f"{_plural(len(targets), 'target')}, all as they should be", "green")
    names = ", ".join(str(t["name"]) for t in bad)
    text = f"{len(bad)} of {_plural(len(targets), 'target')} not running as they should: {names}"
    return paint(text, "red")


def _up_down(target: Mapping[str, Any], now: datetime) -> str:
    """``up 2h 3m`` / ``down 5m`` / ``held 3h`` (stopped by an operator)."""
    state = target.get("state")
    held = target.get("held")
    if state == TargetState.STOPPED and held:
        since = seconds_since(held.get("since"), now)
        return f"held {format_span(since)}" if since is not None else "held"
    uptime = target.get("uptime")
    if state in UP_STATES:
        return f"up {format_span(uptime)}" if uptime is not None else "up"
    down = seconds_since(target.get("down_since"), now)
    if down is not None:
        return f"down {format_span(down)}"
    if state == TargetState.STARTING and uptime is not None:
        return f"up {format_span(uptime)}"  # a first start: not down, not up yet either
    return "-"


def _probe_text(probe: Mapping[str, Any] | None) -> str:
    """``12 ms 4s ago`` (``failed 4s ago`` without an answer): the last probe."""
    if not probe:
        return "-"
    latency = probe.get("latency")
    if latency is None or probe.get("answered") is False:
        result = str(probe.get("status") or "failed")
    else:
        result = format_latency(float(latency))
        if probe.get("status") not in (None, "ok"):
            result += f" {probe['status']}"
    age = probe.get("age_s")
    if age is None:
        return result
    return f"{result} {format_span(age)} ago" if age >= 1 else f"{result} just now"


def _details(target: Mapping[str, Any], now: datetime) -> list[str]:
    """The lines under a target that is not healthy: why, when the next retry is due."""
    if target.get("state") == TargetState.HEALTHY:
        return []
    lines = []
    cause = target.get("cause")
    if target.get("held"):
        pass  # the label says who stopped it and why
    elif isinstance(cause, Mapping) and cause.get("summary"):
        lines.append(f"why: {_clip(cause['summary'], 2 * TEXT_MAX)}")
    elif target.get("state") not in UP_STATES:
        probe = target.get("last_probe") or {}
        if probe.get("reason"):
            lines.append(f"last probe: {_clip(probe['reason'], 2 * TEXT_MAX)}")
    retry = parse_time(target.get("next_retry_at"))
    if retry is not None:
        lines.append(f"next retry {relative(retry, now)}")
    silence = target.get("silence")
    if isinstance(silence, Mapping) and silence.get("until"):
        reason = f": {silence['reason']}" if silence.get("reason") else ""
        lines.append(f"alerts silenced, ends {relative(silence['until'], now)}{reason}")
    return lines


def _now_of(document: Mapping[str, Any]) -> datetime:
    """The server's own clock when it stamped the document (its times are relative to it)."""
    return parse_time(document.get("generated_at")) or datetime.now(UTC)


def format_api(
    document: Mapping[str, Any], now: datetime | None = None, colour: bool = False
) -> str:
    now = now if now is not None else _now_of(document)
    paint = Painter(colour)
    me = document.get("erpwatch") or {}
    bits = [f"pid {me['pid']}"] if me.get("pid") is not None else []
    if me.get("uptime") is not None:
        bits.append(f"up {format_span(me['uptime'])}")
    running = "is running" + (f" ({', '.join(bits)})" if bits else "")
    version = f"erpwatch {me.get('version', '?')}"
    targets = list(document.get("targets") or [])
    if not targets:
        return f"{version} {running}; no targets are supervised\n"
    lines = [f"{version} {running}; {_summary(targets, paint)}"]
    if me.get("problem"):  # what /health answers 503 for: the page says it too
        lines.append(paint(f"erpwatch itself: {_clip(me['problem'], 300)}", "red"))
    rows: list[Sequence[str]] = [
        ("TARGET", "STATE", "PID", "UP/DOWN", "RESTARTS", "LAST PROBE", "LAST EVENT")
    ]
    styles: dict[tuple[int, int], str] = {}
    details: dict[int, list[str]] = {}
    for target in targets:
        label = target.get("label") or label_for(str(target.get("state")), target.get("held"))
        row = len(rows)
        style = state_style(target)
        if style:
            styles[(row, 1)] = style
        details[row] = _details(target, now)
        rows.append(
            (
                str(target["name"]),
                _clip(label, LABEL_MAX),
                str(target["pid"]) if target.get("pid") is not None else "-",
                _up_down(target, now),
                f"{target.get('restarts_in_window', 0)}/{target.get('restarts_total', 0)}",
                _probe_text(target.get("last_probe")),
                _event_text(target.get("last_event"), now),
            )
        )
    for row, line in enumerate(_table(rows, paint, styles)):
        lines.append(line)
        lines += [paint(f"    {extra}", "dim") for extra in details.get(row, [])]
    return "\n".join(lines) + "\n"


def _store_label(target: Mapping[str, Any]) -> str:
    label = str(target.get("label") or target["state"])
    return f"{label} (was {target['was']})" if target.get("was") else label


def format_store(document: Mapping[str, Any], now: datetime, colour: bool = False) -> str:
    paint = Painter(colour)
    if document.get("erpwatch_running"):
        head = "erpwatch is running, but its status API is off"
    else:
        head = paint("erpwatch is not running", "red")
    lines = [
        f"{head}; last known states from the event log {document['store']}",
        f"erpwatch's last event: {_event_text(document.get('erpwatch_last_event'), now)}",
    ]
    targets = list(document.get("targets") or [])
    if not targets:
        return "\n".join([*lines, "no targets recorded"]) + "\n"
    rows: list[Sequence[str]] = [("TARGET", "LAST KNOWN STATE", "SINCE", "LAST EVENT")]
    styles: dict[tuple[int, int], str] = {}
    for target in targets:
        style = state_style(target)
        if style:
            styles[(len(rows), 1)] = style
        rows.append(
            (
                str(target["name"]),
                _clip(_store_label(target), LABEL_MAX),
                relative(target.get("since"), now) if target.get("since") else "-",
                _event_text(target.get("last_event"), now),
            )
        )
    return "\n".join(lines + _table(rows, paint, styles)) + "\n"


def render(
    document: Mapping[str, Any], *, now: datetime | None = None, colour: bool = False
) -> str:
    if document.get("source") == "store":
        return format_store(document, now if now is not None else datetime.now(UTC), colour)
    return format_api(document, now, colour)


# --- the command ------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``status`` to the ``erpwatch`` sub-commands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="show each target's state",
        description=(
            "Show each target's state from the running erpwatch (its status API at\n"
            "ERPWATCH_STATUS_HOST:ERPWATCH_STATUS_PORT, with ERPWATCH_STATUS_TOKEN), or, when\n"
            "it is not running, the last known state from the event log. States are named\n"
            "as on the status page; times are relative to now."
        ),
        epilog=EXIT_CODES,
        formatter_class=RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON document (same exit status)"
    )
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=2.0,
        metavar="S",
        help="API timeout (default 2 s)",
    )
    parser.add_argument(
        "--color",
        "--colour",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the states (default auto: on a terminal, unless NO_COLOR is set)",
    )
    parser.add_argument(
        "--no-color",
        "--no-colour",
        dest="color",
        action="store_const",
        const="never",
        help="same as --color=never",
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


def run_status(
    args: argparse.Namespace,
    stdout: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    out = stdout if stdout is not None else sys.stdout
    settings = status_config()
    try:
        document = read_status(settings, args.timeout)
    except StatusUnreadable as exc:
        print(f"erpwatch status: {_clip(exc, 1000)}", file=sys.stderr)
        return EXIT_UNKNOWN
    if args.json:
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        choice = getattr(args, "color", "auto")
        colour = use_colour(choice, out, os.environ if environ is None else environ)
        out.write(render(document, colour=colour))
    return exit_code(document)
