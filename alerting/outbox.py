"""The durable side of alerting, in the event database (same SQLite file as the events).

* ``alert_inbox`` — one row per event the pipeline must see, written by the commit hook in
  the event's own transaction: an event committed is an event the pipeline will process,
  even after a SIGKILL right after the commit.
* ``alert_state`` — the pipeline's memory (targets, incidents, rate limiter) as JSON.
* ``alert_outbox`` — rendered mails: ``pending`` → ``sent`` | ``dead`` (with the reason).
  One pipeline step deletes its inbox rows, saves the state and inserts its mails in one
  transaction, so a step happens entirely or not at all.
* ``alert_log`` — the notification log: every held / sent / failed decision and why.

All methods are synchronous and run on the bus's writer thread (``EventBus.run_in_writer``)
over the store's write connection, so they never block the event loop nor fight `append`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerting import silences
from alerting.incidents import SELF_KINDS
from alerting.render import Mail
from alerting.stages import Decision
from watchdog.events import Event, Severity
from watchdog.store import EventStore, format_ts, parse_ts

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alert_inbox (
        event_id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL, target TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
        message TEXT NOT NULL, details TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS alert_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL, purpose TEXT NOT NULL, target TEXT NOT NULL,
        incident_id TEXT, recipients TEXT NOT NULL, subject TEXT NOT NULL,
        message_id TEXT NOT NULL, data BLOB NOT NULL, trigger_kinds TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT, sent_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS alert_outbox_status ON alert_outbox (status, id)",
    """CREATE TABLE IF NOT EXISTS alert_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, target TEXT NOT NULL,
        incident_id TEXT, decision TEXT NOT NULL, message TEXT NOT NULL, details TEXT NOT NULL
    )""",
    silences.SCHEMA,
)

PENDING, SENT, DEAD = "pending", "sent", "dead"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A queued mail as read back from the outbox."""

    id: int
    mail: Mail
    attempts: int


def inbox_hook(event: Event, db: Any) -> None:
    """Commit hook: runs inside the event's transaction (``db`` is sqlite-utils')."""
    if event.kind in SELF_KINDS:
        return
    db.execute(
        "INSERT OR IGNORE INTO alert_inbox "
        "(event_id, ts, target, kind, severity, message, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            format_ts(event.ts),
            event.target,
            event.kind,
            str(event.severity),
            event.message,
            event.details_json(),
        ),
    )


class Outbox:
    """The alerting tables over the store's write connection (call on the writer thread)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def ensure_schema(self) -> None:
        with self.store.transaction() as conn:
            for statement in SCHEMA:
                conn.execute(statement)

    # --- pipeline step ------------------------------------------------------------------

    def fetch_inbox(self, limit: int) -> list[Event]:
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT event_id, ts, target, kind, severity, message, details "
                "FROM alert_inbox ORDER BY event_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            Event(
                target=target,
                kind=kind,
                message=message,
                severity=Severity(severity),
                details=json.loads(details),
                ts=parse_ts(ts),
                id=event_id,
            )
            for event_id, ts, target, kind, severity, message, details in rows
        ]

    def load_state(self) -> dict[str, Any]:
        with self.store.transaction() as conn:
            rows = conn.execute("SELECT key, value FROM alert_state").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def commit_step(
        self,
        done: Sequence[int],
        state: Mapping[str, Any],
        mails: Sequence[Mail],
        decisions: Sequence[Decision],
        wall: datetime,
    ) -> list[int]:
        """Apply one pipeline step atomically; return the new outbox ids."""
        ids: list[int] = []
        with self.store.transaction() as conn:
            conn.executemany("DELETE FROM alert_inbox WHERE event_id = ?", [(i,) for i in done])
            conn.executemany(
                "INSERT INTO alert_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(key, json.dumps(value, default=str)) for key, value in state.items()],
            )
            for mail in mails:
                cursor = conn.execute(
                    "INSERT INTO alert_outbox (created, purpose, target, incident_id, "
                    "recipients, subject, message_id, data, trigger_kinds) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        format_ts(wall),
                        mail.purpose,
                        mail.target,
                        mail.incident_id,
                        json.dumps(list(mail.recipients)),
                        mail.subject,
                        mail.message_id,
                        mail.data,
                        json.dumps(list(mail.trigger_kinds)),
                    ),
                )
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            self._log(conn, wall, ((d, "held") for d in decisions))
        return ids

    @staticmethod
    def _log(
        conn: sqlite3.Connection, wall: datetime, entries: Iterable[tuple[Decision, str]]
    ) -> None:
        conn.executemany(
            "INSERT INTO alert_log (ts, target, incident_id, decision, message, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    format_ts(wall),
                    d.target,
                    d.incident_id,
                    kind,
                    d.message,
                    json.dumps(dict(d.details), default=str),
                )
                for d, kind in entries
            ],
        )

    # --- delivery -----------------------------------------------------------------------

    def due(self, limit: int, skip: Iterable[int] = ()) -> list[OutboxRow]:
        skipped = set(skip)
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT id, purpose, target, incident_id, recipients, subject, message_id, "
                "data, trigger_kinds, attempts FROM alert_outbox WHERE status = ? "
                "ORDER BY id LIMIT ?",
                (PENDING, limit + len(skipped)),
            ).fetchall()
        out = [
            OutboxRow(
                id=r[0],
                mail=Mail(
                    purpose=r[1],
                    target=r[2],
                    incident_id=r[3],
                    recipients=tuple(json.loads(r[4])),
                    subject=r[5],
                    message_id=r[6],
                    data=bytes(r[7]),
                    trigger_kinds=tuple(json.loads(r[8])),
                ),
                attempts=r[9],
            )
            for r in rows
            if r[0] not in skipped
        ]
        return out[:limit]

    def mark_sent(self, row: OutboxRow, wall: datetime, transport: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE alert_outbox SET status = ?, sent_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE id = ?",
                (SENT, format_ts(wall), row.id),
            )
            mail = row.mail
            decision = Decision(
                mail.target,
                mail.incident_id,
                f"{mail.purpose} mail sent via {transport}",
                {"to": list(mail.recipients), "outbox_id": row.id, "message_id": mail.message_id},
            )
            self._log(conn, wall, [(decision, "sent")])

    def mark_retry(self, rows: Sequence[OutboxRow], error: str, wall: datetime) -> None:
        with self.store.transaction() as conn:
            conn.executemany(
                "UPDATE alert_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                [(error, row.id) for row in rows],
            )

    def mark_dead(self, rows: Sequence[OutboxRow], reason: str, wall: datetime) -> None:
        with self.store.transaction() as conn:
            conn.executemany(
                "UPDATE alert_outbox SET status = ?, attempts = attempts + 1, last_error = ? "
                "WHERE id = ?",
                [(DEAD, reason, row.id) for row in rows],
            )
            self._log(
                conn,
                wall,
                [
                    (
                        Decision(
                            r.mail.target,
                            r.mail.incident_id,
                            f"dead letter: {reason}",
                            {"outbox_id": r.id, "to": list(r.mail.recipients)},
                        ),
                        "failed",
                    )
                    for r in rows
                ],
            )

    # --- reading ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM alert_outbox GROUP BY status"
            ).fetchall()
        found = {status: int(n) for status, n in rows}
        return {name: found.get(name, 0) for name in (PENDING, SENT, DEAD)}

    def last_sent(self) -> str | None:
        with self.store.transaction() as conn:
            row = conn.execute("SELECT max(sent_at) FROM alert_outbox").fetchone()
        return str(row[0]) if row and row[0] else None

    def silences(self) -> list[silences.Silence]:
        with self.store.transaction() as conn:
            return silences.load(conn)
