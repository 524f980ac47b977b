"""Silences: "hold mail about TARGET until T". Stored in SQLite so the CLI (another process)
and the running service share them. Events are still recorded; only mail is held.

Silence ends are wall-clock instants by nature (``--for 30m`` typed by a person).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_silences (
    target TEXT PRIMARY KEY,
    until TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
)
"""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``1h30m``, ``2d`` → a positive timedelta."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(
                f"cannot read duration {text!r}; use e.g. 90s, 30m, 2h, 1h30m, 1d"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Silence:
    target: str
    until: datetime
    reason: str = ""

    def describe(self) -> str:
        text = f"{self.target} silenced until {self.until.isoformat(timespec='seconds')}"
        return f"{text} ({self.reason})" if self.reason else text


def active_silence(silences: Sequence[Silence], target: str, now: datetime) -> Silence | None:
    """The silence covering ``target`` at ``now`` (names compare case-insensitively)."""
    for silence in silences:
        if silence.target.lower() == target.lower() and silence.until > now:
            return silence
    return None


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.execute(SCHEMA)


def add(conn: sqlite3.Connection, silence: Silence, now: datetime) -> None:
    with conn:
        ensure_schema(conn)
        conn.execute(
            "INSERT OR REPLACE INTO alert_silences (target, until, reason, created) "
            "VALUES (?, ?, ?, ?)",
            (silence.target.lower(), silence.until.isoformat(), silence.reason, now.isoformat()),
        )


def remove(conn: sqlite3.Connection, target: str) -> bool:
    with conn:
        ensure_schema(conn)
        cursor = conn.execute("DELETE FROM alert_silences WHERE target = ?", (target.lower(),))
    return cursor.rowcount > 0


def load(conn: sqlite3.Connection, now: datetime | None = None) -> list[Silence]:
    """All silences, or only those still active at ``now``."""
    rows = conn.execute(
        "SELECT target, until, reason FROM alert_silences ORDER BY until"
    ).fetchall()
    silences = [Silence(t, datetime.fromisoformat(u), r) for t, u, r in rows]
    if now is not None:
        silences = [s for s in silences if s.until > now]
    return silences


def utc_now() -> datetime:
    return datetime.now(UTC)
