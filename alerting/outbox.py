"""The durable side of alerting, in the event database (same SQLite file as the events).

* ``alert_cursor`` — one row: ``last_event_id``, the id of the last event the pipeline has
  taken into account. A step reads the next events with ``id > last_event_id`` from the
  ``events`` table, in id order; the producer's transaction never writes anything of ours,
  so an alerting fault can never roll an audit event back or stop a publish. Event ids are
  taken inside the store's single-writer transaction (``BEGIN IMMEDIATE``), so id order is
  commit order: no event can become visible behind the cursor.
* ``alert_state`` — the pipeline's memory (targets, incidents, rate limiter) as JSON.
* ``alert_outbox`` — rendered notifications, one lane per receiver (``receiver``: ``email``,
  a webhook, an Alertmanager, the hook; `alerting.receivers`): ``pending`` → ``sent`` |
  ``dead`` (with the reason). A mail the server accepted for some recipients only is split
  (`Outbox.mark_partly_sent`): the row is sent to the accepted ones, the refused ones go on
  in a pending copy each, so every row's ``recipients`` say who got (or gets) it.
  One pipeline step moves the cursor, saves the state and inserts its mails in one
  transaction, so a step happens entirely or not at all: across a SIGKILL an event is
  either wholly processed (its mail queued) or read again after the restart.
* ``alert_log`` — the notification log: every held / sent / failed decision and why.

Retention: the outbox takes part in `EventStore.prune` (it registers itself): its floor is
the cursor, so an event alerting has not processed is never pruned; it prunes ``alert_log``
rows and *sent* or *dead* outbox rows older than the cut-off (pending mail never), at most a
batch per table per round.

While the store cannot be written (``paused`` is set by the service on store trouble),
`due` hands out nothing: a mail sent then could not be marked sent and would go out again
on every retry.

On the first start (no cursor yet) the cursor is set, and persisted at once, to the newest
event id: old history is not mailed. A database of the version that queued events in an
``alert_inbox`` table (written by a commit hook) starts just before the oldest queued event
instead, so nothing queued there is lost; that table is then dropped.

All methods are synchronous and run on the bus's writer thread (``EventBus.run_in_writer``)
over the store's connections, so they never block the event loop nor fight `append`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from alerting import silences
from alerting.incidents import SELF_KINDS
from alerting.render import Mail
from alerting.stages import Decision
from watchdog.events import Event
from watchdog.store import EventStore, format_ts

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alert_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_event_id INTEGER NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS alert_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS alert_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL, purpose TEXT NOT NULL, target TEXT NOT NULL,
        incident_id TEXT, recipients TEXT NOT NULL, subject TEXT NOT NULL,
        message_id TEXT NOT NULL, data BLOB NOT NULL, trigger_kinds TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT, sent_at TEXT, receiver TEXT NOT NULL DEFAULT 'email'
    )""",
    "CREATE INDEX IF NOT EXISTS alert_outbox_status ON alert_outbox (status, id)",
    "CREATE INDEX IF NOT EXISTS alert_outbox_status_created ON alert_outbox (status, created)",
    """CREATE TABLE IF NOT EXISTS alert_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, target TEXT NOT NULL,
        incident_id TEXT, decision TEXT NOT NULL, message TEXT NOT NULL, details TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alert_log_ts ON alert_log (ts)",
    silences.SCHEMA,
)
LEGACY_INBOX = "alert_inbox"
# Added after the first release: created on an older database by `Outbox.ensure_schema`.
RECEIVER_COLUMN = "ALTER TABLE alert_outbox ADD COLUMN receiver TEXT NOT NULL DEFAULT 'email'"
RECEIVER_INDEX = (
    "CREATE INDEX IF NOT EXISTS alert_outbox_receiver ON alert_outbox (receiver, status, id)"
)
REFRESH = "refresh"  # purpose of an Alertmanager re-send: one pending per incident at most

PENDING, SENT, DEAD = "pending", "sent", "dead"


_IDS_PER_QUERY = 500  # under SQLite builds older than 3.32 and their 999 variables


class CursorMoved(Exception):
    """The stored cursor is not where this step started (another writer moved it)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A queued mail as read back from the outbox."""

    id: int
    mail: Mail
    attempts: int


@dataclass(frozen=True, slots=True)
class EventBatch:
    """The next events after the cursor, as one pipeline step takes them."""

    events: list[Event]  # in id order, without alerting's own decisions (`SELF_KINDS`)
    start: int  # the cursor the batch was read after
    end: int  # id of the last event read (own decisions included): the cursor once committed
    read: int  # events read; equal to the limit when more may be waiting


@dataclass(frozen=True, slots=True)
class CursorStart:
    """Where `Outbox.ensure_schema` found or put the cursor."""

    last_event_id: int
    initialised: bool  # no cursor was stored: this start set it
    adopted: int  # events still queued in a legacy ``alert_inbox`` that the cursor covers


class Outbox:
    """The alerting tables over the store's write connection (call on the writer thread)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.paused: str | None = None  # why delivery must wait (the store cannot be written)
        store.add_retention("alerting", self)

    # --- retention (EventStore.prune) ---------------------------------------------------

    def retention_floor(self, conn: sqlite3.Connection) -> int | None:
        """Alerting's cursor: events after it are not processed yet and must stay."""
        try:
            row = conn.execute("SELECT last_event_id FROM alert_cursor WHERE id = 1").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # alerting never ran here: nothing to hold back
            raise
        return int(row[0]) if row is not None else None

    def prune_batch(self, conn: sqlite3.Connection, cutoff: str, batch: int) -> int:
        """At most ``batch`` rows in all: old log rows, then old sent/dead mails (never
        pending ones)."""
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
                ("alert_log", "alert_outbox"),
            )
        }
        statements: list[tuple[str, tuple[str, ...]]] = []
        if "alert_log" in tables:
            statements.append(
                ("DELETE FROM alert_log WHERE id IN (SELECT id FROM alert_log WHERE ts < ?", ())
            )
        if "alert_outbox" in tables:
            select = (
                "DELETE FROM alert_outbox WHERE id IN (SELECT id FROM alert_outbox "
                "WHERE status = ? AND created < ?"
            )
            statements += [(select, (SENT,)), (select, (DEAD,))]
        left = batch
        for sql, head in statements:
            if left <= 0:
                break
            left -= conn.execute(f"{sql} LIMIT ?)", (*head, cutoff, left)).rowcount
        return batch - left

    def ensure_schema(self) -> CursorStart:
        """Create the tables; on the first start set and persist the cursor (one commit)."""
        with self.store.transaction() as conn:
            for statement in SCHEMA:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(alert_outbox)")}
            if "receiver" not in columns:
                conn.execute(RECEIVER_COLUMN)
            conn.execute(RECEIVER_INDEX)
            row = conn.execute("SELECT last_event_id FROM alert_cursor WHERE id = 1").fetchone()
            if row is not None:
                start = CursorStart(int(row[0]), initialised=False, adopted=0)
            else:
                start = self._initial_cursor(conn)
                conn.execute(
                    "INSERT INTO alert_cursor (id, last_event_id) VALUES (1, ?)",
                    (start.last_event_id,),
                )
            conn.execute(f"DROP TABLE IF EXISTS {LEGACY_INBOX}")
        return start

    @staticmethod
    def _initial_cursor(conn: sqlite3.Connection) -> CursorStart:
        legacy = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEGACY_INBOX,)
        ).fetchone()
        if legacy is not None:
            oldest, queued = conn.execute(
                f"SELECT min(event_id), count(*) FROM {LEGACY_INBOX}"
            ).fetchone()
            if oldest is not None:
                return CursorStart(int(oldest) - 1, initialised=True, adopted=int(queued))
        (newest,) = conn.execute("SELECT max(id) FROM events").fetchone()
        return CursorStart(int(newest or 0), initialised=True, adopted=0)

    # --- pipeline step ------------------------------------------------------------------

    def cursor(self) -> int:
        with self.store.transaction() as conn:
            row = conn.execute("SELECT last_event_id FROM alert_cursor WHERE id = 1").fetchone()
        if row is None:
            raise CursorMoved("no alert cursor stored; ensure_schema() was not run")
        return int(row[0])

    def fetch_events(self, after: int, limit: int) -> EventBatch:
        """Up to ``limit`` committed events with ``id > after``, in id order."""
        read = self.store.query(after_id=after, newest_first=False, limit=limit)
        end = read[-1].id if read and read[-1].id is not None else after
        events = [e for e in read if e.kind not in SELF_KINDS]
        return EventBatch(events, start=after, end=end, read=len(read))

    def load_state(self) -> dict[str, Any]:
        with self.store.transaction() as conn:
            rows = conn.execute("SELECT key, value FROM alert_state").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def commit_step(
        self,
        batch: EventBatch,
        state: Mapping[str, Any],
        mails: Sequence[Mail],
        decisions: Sequence[Decision],
        wall: datetime,
    ) -> list[int]:
        """Apply one pipeline step atomically; return the new outbox ids.

        Moves the cursor from ``batch.start`` to ``batch.end``; if the stored cursor is not
        at ``batch.start`` nothing is written and `CursorMoved` is raised, so a batch is never
        committed twice.
        """
        with self.store.transaction() as conn:
            moved = conn.execute(
                "UPDATE alert_cursor SET last_event_id = ? WHERE id = 1 AND last_event_id = ?",
                (batch.end, batch.start),
            ).rowcount
            if moved != 1:
                raise CursorMoved(
                    f"alert cursor is no longer at event {batch.start}; step not committed"
                )
            conn.executemany(
                "INSERT INTO alert_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(key, json.dumps(value, default=str)) for key, value in state.items()],
            )
            ids = self._insert(conn, mails, wall)
            self._log(conn, wall, ((d, "held") for d in decisions))
        return ids

    def queue_refresh(self, mails: Sequence[Mail], wall: datetime) -> list[Mail]:
        """Queue Alertmanager re-sends, each only if its receiver has nothing pending for
        that incident (a pending row re-sends it anyway): a receiver that is down for hours
        holds one row per incident, not one per interval. Returns the rows queued."""
        with self.store.transaction() as conn:
            fresh = [
                mail
                for mail in mails
                if conn.execute(
                    "SELECT 1 FROM alert_outbox WHERE receiver = ? AND incident_id IS ? "
                    "AND status = ? LIMIT 1",
                    (mail.receiver, mail.incident_id, PENDING),
                ).fetchone()
                is None
            ]
            self._insert(conn, fresh, wall)
        return fresh

    @staticmethod
    def _insert(conn: sqlite3.Connection, mails: Sequence[Mail], wall: datetime) -> list[int]:
        ids: list[int] = []
        for mail in mails:
            cursor = conn.execute(
                "INSERT INTO alert_outbox (created, purpose, target, incident_id, "
                "recipients, subject, message_id, data, trigger_kinds, receiver) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    mail.receiver,
                ),
            )
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
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

    def due(self, limit: int, skip: Iterable[int] = (), receiver: str = "email") -> list[OutboxRow]:
        """The oldest pending rows of ``receiver``'s lane, in id order, ``skip`` left out.

        The ids are chosen first (from the receiver index alone), then only those rows are
        read: with the mail server down, thousands of rows wait for their retry, and reading
        each one's message on every drain took ~180 ms of the writer per call at 20,000."""
        if self.paused is not None:
            return []  # the store cannot record a delivery now: nothing goes out twice
        skipped = set(skip)
        with self.store.transaction() as conn:
            ids = [
                row_id
                for (row_id,) in conn.execute(
                    "SELECT id FROM alert_outbox WHERE receiver = ? AND status = ? "
                    "ORDER BY id LIMIT ?",
                    (receiver, PENDING, limit + len(skipped)),
                )
                if row_id not in skipped
            ][:limit]
            rows = []
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start : start + _IDS_PER_QUERY]
                rows += conn.execute(
                    "SELECT id, purpose, target, incident_id, recipients, subject, message_id, "
                    "data, trigger_kinds, attempts, receiver FROM alert_outbox "
                    f"WHERE id IN ({', '.join('?' * len(chunk))}) ORDER BY id",
                    chunk,
                ).fetchall()
        return [
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
                    receiver=r[10],
                ),
                attempts=r[9],
            )
            for r in rows
        ]

    def receivers_pending(self) -> list[str]:
        """Receivers with pending rows (a lane whose receiver is gone still has rows)."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT DISTINCT receiver FROM alert_outbox WHERE status = ?", (PENDING,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def mark_sent(self, row: OutboxRow, wall: datetime, transport: str) -> None:
        with self.store.transaction() as conn:
            self._mark_sent(conn, row, wall, transport)

    def mark_partly_sent(
        self,
        row: OutboxRow,
        refused: Sequence[tuple[str, ...]],
        wall: datetime,
        transport: str,
    ) -> tuple[OutboxRow, list[OutboxRow]]:
        """Accepted for some recipients only: in one commit ``row`` keeps the accepted ones
        and is sent, and each group of ``refused`` recipients gets a pending copy of the mail
        (same data and Message-ID, ``row``'s attempts), which the delivery then fails as
        usual (retry or dead letter). Returns the row as sent and the copies. A crash between
        the two commits leaves a copy pending: it is tried once more, the accepted recipients
        never are."""
        gone = {recipient for group in refused for recipient in group}
        accepted = tuple(r for r in row.mail.recipients if r not in gone)
        sent = OutboxRow(row.id, replace(row.mail, recipients=accepted), row.attempts)
        copies: list[OutboxRow] = []
        with self.store.transaction() as conn:
            self._mark_sent(conn, sent, wall, transport)
            for group in refused:
                cursor = conn.execute(
                    "INSERT INTO alert_outbox (created, purpose, target, incident_id, "
                    "recipients, subject, message_id, data, trigger_kinds, receiver, attempts) "
                    "SELECT created, purpose, target, incident_id, ?, subject, message_id, "
                    "data, trigger_kinds, receiver, ? FROM alert_outbox WHERE id = ?",
                    (json.dumps(list(group)), row.attempts, row.id),
                )
                assert cursor.lastrowid is not None
                copies.append(
                    OutboxRow(cursor.lastrowid, replace(row.mail, recipients=group), row.attempts)
                )
        return sent, copies

    def _mark_sent(
        self, conn: sqlite3.Connection, row: OutboxRow, wall: datetime, transport: str
    ) -> None:
        """``row`` sent to its (or, partly sent, to its accepted) ``mail.recipients``."""
        mail = row.mail
        conn.execute(
            "UPDATE alert_outbox SET status = ?, sent_at = ?, attempts = attempts + 1, "
            "last_error = NULL, recipients = ? WHERE id = ?",
            (SENT, format_ts(wall), json.dumps(list(mail.recipients)), row.id),
        )
        decision = Decision(
            mail.target,
            mail.incident_id,
            f"{mail.purpose} {'mail' if mail.receiver == 'email' else 'notification'} "
            f"delivered via {transport}",
            {
                "to": list(mail.recipients),
                "receiver": mail.receiver,
                "outbox_id": row.id,
                "message_id": mail.message_id,
            },
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
                            {
                                "outbox_id": r.id,
                                "to": list(r.mail.recipients),
                                "receiver": r.mail.receiver,
                            },
                        ),
                        "failed",
                    )
                    for r in rows
                ],
            )

    # --- reading ------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per receiver and status: ``{"email": {"pending": 0, "sent": 3, "dead": 0}}``."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT receiver, status, count(*) FROM alert_outbox GROUP BY receiver, status"
            ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for receiver, status, n in rows:
            lane = out.setdefault(str(receiver), {PENDING: 0, SENT: 0, DEAD: 0})
            lane[str(status)] = int(n)
        return out

    def last_sent(self) -> str | None:
        with self.store.transaction() as conn:
            row = conn.execute("SELECT max(sent_at) FROM alert_outbox").fetchone()
        return str(row[0]) if row and row[0] else None

    def silences(self) -> list[silences.Silence]:
        with self.store.transaction() as conn:
            return silences.load(conn)
