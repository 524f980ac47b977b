"""Event kinds, severities and the immutable `Event` every state change becomes.

Bounds: an event's details serialise (`Event.details_json`) to at most `DETAILS_MAX_BYTES`
(64 KiB) and its message has at most `MESSAGE_MAX_CHARS`. `Event.of` and the store's
``append`` enforce them with `bound_details` / `bound_message`: a larger value is cut field
by field (the largest fields first; a long string keeps its head and its tail, a long list
its newest items) with a visible marker, and the details gain a ``_truncated`` entry naming
the fields that were cut and the original size.

Text is also made encodable there: a lone surrogate (``"\\ud800"``, which ``json.loads``
decodes from a backend's health body or an operator's request without complaint, but which
UTF-8 cannot encode) in the message or in any string of the details (keys and nested values
too) becomes a visible escape (`clean_text`), so SQLite, the API's and SSE's JSON and mails
can take every event.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Kind(StrEnum):
    # target lifecycle and health (watchdog/)
    STARTED = "started"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"
    RESTARTED = "restarted"
    RESTART_LIMIT_REACHED = "restart-limit-reached"
    CRASH_LOOP = "crash-loop"
    DOWN = "down"
    STOPPED = "stopped"
    STOP_FAILED = "stop-failed"  # stopping the tree raised (EPERM, EMFILE, ...): retried
    RESOURCE_WARNING = "resource-warning"
    RESOURCE_OK = "resource-ok"
    # erpwatch itself
    WATCHDOG_STARTED = "watchdog-started"
    WATCHDOG_STOPPED = "watchdog-stopped"
    WATCHDOG_FAULT = "watchdog-fault"  # a task of erpwatch's own raised and was restarted
    CONFIG_RELOADED = "config-reloaded"
    CONFIG_REJECTED = "config-rejected"  # a reload refused: nothing changed
    LEFTOVER_STOPPED = "leftover-stopped"  # a child left by a killed erpwatch, ended at start
    # alert decisions (alerting/)
    ALERT_SENT = "alert-sent"
    ALERT_HELD = "alert-held"
    ALERT_FAILED = "alert-failed"
    # the event store itself (watchdog/bus.py): written once the store works again
    STORE_FAILING = "store-failing"  # appends failed (disk full, read-only, I/O error)
    STORE_RECOVERED = "store-recovered"  # the events kept in memory are written
    EVENTS_DROPPED = "events-dropped"  # the in-memory buffer overflowed: oldest events lost


DEFAULT_SEVERITY: Mapping[str, Severity] = {
    Kind.STARTED: Severity.INFO,
    Kind.HEALTHY: Severity.INFO,
    Kind.DEGRADED: Severity.WARNING,
    Kind.UNHEALTHY: Severity.WARNING,
    Kind.CRASHED: Severity.WARNING,
    Kind.RESTARTED: Severity.WARNING,
    Kind.RESTART_LIMIT_REACHED: Severity.CRITICAL,
    Kind.CRASH_LOOP: Severity.CRITICAL,
    Kind.DOWN: Severity.CRITICAL,
    Kind.STOPPED: Severity.INFO,
    Kind.STOP_FAILED: Severity.CRITICAL,
    Kind.RESOURCE_WARNING: Severity.WARNING,
    Kind.RESOURCE_OK: Severity.INFO,
    Kind.WATCHDOG_STARTED: Severity.INFO,
    Kind.WATCHDOG_STOPPED: Severity.INFO,
    Kind.WATCHDOG_FAULT: Severity.CRITICAL,
    Kind.CONFIG_RELOADED: Severity.INFO,
    Kind.CONFIG_REJECTED: Severity.WARNING,
    Kind.LEFTOVER_STOPPED: Severity.WARNING,
    Kind.ALERT_SENT: Severity.INFO,
    Kind.ALERT_HELD: Severity.INFO,
    Kind.ALERT_FAILED: Severity.CRITICAL,
    Kind.STORE_FAILING: Severity.CRITICAL,
    Kind.STORE_RECOVERED: Severity.INFO,
    Kind.EVENTS_DROPPED: Severity.WARNING,
}

# The pseudo-target of events about erpwatch itself (start, stop, alert path, host resources).
SYSTEM_TARGET = "erpwatch"

DETAILS_MAX_BYTES = 64 * 1024  # serialised details of one event (JSON, ASCII-escaped)
MESSAGE_MAX_CHARS = 4096
TRUNCATED_KEY = "_truncated"  # the marker entry of details that were cut
_MARKER_RESERVE = 1024  # room kept for the marker entry
_MIN_FIELD = 96  # a cut field keeps at least this much (bytes of JSON)
_MARKER_NAMES = 20  # field names listed in the marker


def clean_text(text: str) -> str:
    """``text`` with whatever UTF-8 cannot encode (lone surrogates) as backslash escapes.

    ``backslashreplace`` rather than ``replace``: the operator still sees which code point
    came (``\\ud800``, not an anonymous ``?``), and nothing is lost that a readable text
    could keep. Encodable text is returned as it is (the same object).
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clean_value(value: Any) -> Any:
    """``value`` with every string in it (mapping keys too, nested) made encodable
    (`clean_text`); a value with nothing to clean is returned as it is (the same object).

    Other objects are written as ``str(value)`` (``details_json``): one whose text is not
    encodable (a path decoded with surrogateescape) is replaced by its cleaned text.
    """
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, Mapping):
        items = [(clean_value(key), clean_value(item)) for key, item in value.items()]
        if all(
            new_key is key and new_item is item
            for (new_key, new_item), (key, item) in zip(items, value.items(), strict=True)
        ):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        out = [clean_value(item) for item in value]
        if all(new is old for new, old in zip(out, value, strict=True)):
            return value
        return out if isinstance(value, list) else tuple(out)
    text = str(value)
    cleaned = clean_text(text)
    return value if cleaned is text else cleaned


def _size(value: Any) -> int:
    """Bytes of ``value`` as `Event.details_json` writes it (ASCII JSON: chars = bytes)."""
    return len(json.dumps(value, sort_keys=True, default=str))


def _water_level(sizes: list[int], budget: int) -> int:
    """The largest cap L with ``sum(min(size, L)) <= budget``: small items stay whole, the
    big ones share what is left equally."""
    remaining = budget
    ordered = sorted(sizes)
    for index, size in enumerate(ordered):
        share = remaining // (len(ordered) - index)
        if size > share:
            return max(share, 0)
        remaining -= size
    return max(ordered, default=0) + max(remaining, 0)


def cut_text(text: str, budget: int) -> str:
    """``text`` within ``budget`` bytes of JSON: its head and its tail around a marker."""
    if _size(text) <= budget:
        return text
    marker = f" ...[cut {len(text):,} chars to fit {budget:,} bytes]... "
    room = budget - _size(marker)
    keep = min(len(text), max(room, 0))
    while keep > 0:
        head = keep // 2
        tail = keep - head
        cost = _size(text[:head] + text[len(text) - tail :]) - 2
        if cost <= room:
            return text[:head] + marker + text[len(text) - tail :]
        keep = min(keep - 1, keep * room // cost)  # escapes cost more than one byte a char
    return marker if _size(marker) <= budget else marker[: max(budget - 2, 0)]


def _shrink(value: Any, budget: int) -> Any:
    if _size(value) <= budget:
        return value
    if isinstance(value, Mapping):
        return _shrink_mapping(value, budget)[0]
    if isinstance(value, list | tuple):
        return _shrink_list(list(value), budget)
    return cut_text(value if isinstance(value, str) else str(value), budget)


def _shrink_mapping(data: Mapping[Any, Any], budget: int) -> tuple[dict[str, Any], list[str]]:
    """``data`` within ``budget``; also the names of the fields that were cut or left out."""
    items = [(cut_text(str(key), 256), value) for key, value in data.items()]
    sizes = [_size(key) + 1 + _size(value) + 1 for key, value in items]
    room = budget - 2
    level = _water_level(sizes, room)
    if level < _MIN_FIELD and len(items) > 1:
        # Too many fields for a useful share each: keep the smallest ones whole.
        out: dict[str, Any] = {}
        cut_names: list[str] = []
        for index in sorted(range(len(items)), key=lambda i: (sizes[i], items[i][0])):
            key, value = items[index]
            if sizes[index] <= room:
                out[key] = value
                room -= sizes[index]
            else:
                cut_names.append(key)
        return out, cut_names
    out = {}
    cut_names = []
    for (key, value), size in zip(items, sizes, strict=True):
        if size <= level:
            out[key] = value
        else:
            out[key] = _shrink(value, max(level - _size(key) - 2, 16))
            cut_names.append(key)
    return out, cut_names


def _shrink_list(items: list[Any], budget: int) -> list[Any]:
    """``items`` within ``budget``, keeping the newest (last) ones; a leading marker string
    counts the items left out."""
    room = budget - 2 - 64  # the marker item
    sizes = [_size(item) + 1 for item in items]
    level = _water_level(sizes, room)
    dropped = 0
    if level < _MIN_FIELD and len(items) > 1:
        # Too many items for a useful share each: keep the newest that fit at that share.
        used, keep = 0, 0
        for size in reversed(sizes):
            if used + min(size, _MIN_FIELD) > room:
                break
            used += min(size, _MIN_FIELD)
            keep += 1
        keep = max(keep, 1)
        dropped = len(items) - keep
        items, sizes = items[dropped:], sizes[dropped:]
        level = _water_level(sizes, room)
    out = [
        item if size <= level else _shrink(item, max(level - 1, 16))
        for item, size in zip(items, sizes, strict=True)
    ]
    if dropped:
        out.insert(0, f"...[{dropped:,} earlier items cut]...")
    return out


def bound_details(details: Mapping[str, Any], limit: int = DETAILS_MAX_BYTES) -> dict[str, Any]:
    """``details`` as a dict whose JSON fits ``limit`` bytes (unchanged when it already does).

    The largest fields are cut first, each to a fair share of the room; the result carries a
    ``_truncated`` entry: ``{"limit", "bytes" (original), "fields" (names cut)}``. Strings
    are made encodable first (`clean_value`), so the result fits with its escapes.
    """
    plain = dict(clean_value(details))
    original = _size(plain)
    if original <= limit:
        return plain
    plain.pop(TRUNCATED_KEY, None)
    budget = limit - _MARKER_RESERVE
    for _attempt in range(4):
        out, cut_names = _shrink_mapping(plain, max(budget, _MIN_FIELD))
        names = sorted(cut_names)
        listed = [cut_text(name, 64) for name in names[:_MARKER_NAMES]]
        if len(names) > _MARKER_NAMES:
            listed.append(f"... {len(names) - _MARKER_NAMES} more")
        out[TRUNCATED_KEY] = {"limit": limit, "bytes": original, "fields": listed}
        over = _size(out) - limit
        if over <= 0:
            return out
        budget -= over + 256  # floors of tiny shares overshot: try again with less room
    return {TRUNCATED_KEY: {"limit": limit, "bytes": original, "fields": ["*"]}}


def bound_message(message: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """``message`` made encodable (`clean_text`), then cut to ``limit`` characters (head and
    tail kept)."""
    message = clean_text(message)
    if len(message) <= limit:
        return message
    marker = f" ...[cut {len(message):,} chars]... "
    keep = max(limit - len(marker), 0)
    head = keep // 2
    return message[:head] + marker + message[len(message) - (keep - head) :]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. Values are snapshots (JSON-safe), never live objects.

    ``id`` is None until the store has committed the event; the bus hands subscribers the
    committed copy, so every event a subscriber sees has an id.
    """

    target: str
    kind: str
    message: str
    severity: Severity = Severity.INFO
    details: Mapping[str, Any] = field(default_factory=dict)
    ts: datetime = field(default_factory=utcnow)
    id: int | None = None

    @classmethod
    def of(cls, target: str, kind: Kind | str, message: str, **details: Any) -> Event:
        """An event with the kind's default severity; ``None`` details are left out.

        Details and message are made encodable and bounded (`bound_details`,
        `bound_message`).
        """
        return cls(
            target=target,
            kind=str(kind),
            message=bound_message(message),
            severity=DEFAULT_SEVERITY.get(kind, Severity.INFO),
            details=bound_details({k: v for k, v in details.items() if v is not None}),
        )

    def with_id(self, event_id: int) -> Event:
        return dataclasses.replace(self, id=event_id)

    def to_dict(self) -> dict[str, Any]:
        """The public JSON shape (history --json, /api/history, SSE)."""
        return {
            "id": self.id,
            "ts": self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "target": self.target,
            "kind": self.kind,
            "severity": str(self.severity),
            "message": self.message,
            "details": dict(self.details),
        }

    def details_json(self) -> str:
        return json.dumps(dict(self.details), sort_keys=True, default=str)
