"""The SQLite event store (sqlite-utils, WAL): the audit log every event is committed to.

CONTRACT (filled in by the store/bus work):

    class EventStore:
        def __init__(self, path: Path) -> None
            # creates parent dirs, WAL, synchronous=NORMAL, schema (events table, indexes on
            # (target, kind, ts), (kind, ts), (ts), (severity, ts)), a schema_version in a meta
            # table, migrations run idempotently. Safe for one writer + several readers.
        @property path -> Path
        @property db -> sqlite_utils.Database   # other modules (alerting) add their own tables
        def append(self, event: Event) -> Event
            # one transaction that holds the event and nothing else; returns it with its id.
        def query(self, *, target: str | None = None, kinds: Sequence[str] = (),
                  severity: str | None = None,  # minimum severity: info < warning < critical
                  since: datetime | None = None, until: datetime | None = None,
                  after_id: int | None = None, limit: int | None = 50,
                  newest_first: bool = True) -> list[Event]
        def last_event(self, target: str) -> Event | None
        def count(self) -> int
        def close(self) -> None

Additions: ``EventStore.open_readonly(path)`` (``readonly=True``) for ``erpwatch history``
while ``erpwatch run`` writes; ``transaction()`` for other writers of the same connection;
``get(event_id)``; ``schema_version()``; `format_ts` / `parse_ts` (the stored time form);
``append_many(events)`` (several events, one transaction of events only: the bus's flush
after a store failure); `store_trouble_reason` (is an exception "the store cannot be
written": full, read-only, I/O error, locked?); retention: ``prune(older_than, batch=...)``,
``add_retention(name, participant)``, ``reclaim(pages)``, ``disk_bytes()``.

Design notes:

* ``ts`` is stored as ISO-8601 UTC text with milliseconds and a ``Z`` suffix
  (``2024-05-01T12:00:00.123Z``): fixed width, so text order is time order and every time
  filter is an index range. `append` returns the event with its ``ts`` normalised to that
  precision, so a subscriber's copy equals what `query` reads back.
* Time ranges are half-open: ``since <= ts < until``.
* Writes go through one connection guarded by a lock (``BEGIN IMMEDIATE`` .. ``COMMIT``);
  reads use a second connection, so a reader never sees an uncommitted event and never waits
  for a writer (WAL).
* A transaction of `append` holds only the event: no consumer writes inside it, so nothing a
  consumer does can roll an audit event back. Consumers (alerting) read the events by id
  after the fact (``query(after_id=...)``) and commit their own progress in their own
  `transaction()`.
* sqlite-utils is imported only when `db` is first used: ``erpwatch history`` stays fast.
* Order is id order. ``query`` sorts by id (commit order), never by ``ts``: the wall clock
  may step backwards (NTP, a VM resumed), and the newest event must still come first. The
  indexes are ``(column, id, ts)``: each walks a target's / kind's / rank's events in id
  order and checks a ``since``/``until`` filter inside the index, so "last 50 of X since T"
  reads about 50 index entries; ``(ts)`` serves pure time windows and retention.
* Retention: `prune` deletes at most ``batch`` rows per transaction (events older than the
  cut-off, but never one above a participant's floor: alerting registers its cursor, so an
  event it has not processed is never deleted) and then one batch of each participant's own
  tables; the caller (``EventBus.retention_worker``) repeats it on the writer thread, so a
  publish waits for one batch at most. New databases use ``auto_vacuum = INCREMENTAL`` and
  `reclaim` returns freed pages to the file system; an existing database without it is
  converted at open (one VACUUM) when it is at most `VACUUM_CONVERT_MAX_BYTES`, otherwise
  its freed pages are reused but the file does not shrink.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from watchdog.events import DETAILS_MAX_BYTES, Event, Severity, bound_details, bound_message

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SEVERITY_RANK: dict[str, int] = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
BUSY_TIMEOUT_S = 5.0
# Once a write has waited the whole busy timeout for a lock another process holds (a sqlite3
# shell in BEGIN EXCLUSIVE, a stuck CLI), writes wait this long for it until one gets
# through: every job on the bus's single writer thread (events, the children ledger,
# alerting's steps) waited the whole 5 s in turn, and a monitor awaiting its publish neither
# probed nor restarted its target meanwhile (a crash restarted 20 s late, seen).
CONTENDED_WAIT_S = 0.1
_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
WAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL file is truncated back to this after a checkpoint
VACUUM_CONVERT_MAX_BYTES = 64 * 1024 * 1024  # convert to incremental auto-vacuum up to this
PRUNE_BATCH = 1000
RECLAIM_PAGES = 1000  # pages returned to the file system per `reclaim` call

_COLUMNS = "id, ts, target, kind, severity, message, details"
_ORDER_DESC = "ORDER BY id DESC"
_ORDER_ASC = "ORDER BY id ASC"

# Each entry upgrades the schema by one version; they run in order inside one transaction.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            target TEXT NOT NULL,
            kind TEXT NOT NULL,
            severity TEXT NOT NULL,
            severity_rank INTEGER NOT NULL,
            message TEXT NOT NULL,
            details TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX IF NOT EXISTS events_target_kind_ts ON events (target, kind, ts)",
        "CREATE INDEX IF NOT EXISTS events_target_ts ON events (target, ts)",
        "CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts)",
        "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
        "CREATE INDEX IF NOT EXISTS events_severity_ts ON events (severity_rank, ts)",
    ),
    (
        # 2: queries order by id (commit order), not ts: id-ordered indexes that also carry
        # ts, so a time filter is checked inside the index while walking newest-first.
        "DROP INDEX IF EXISTS events_target_kind_ts",
        "DROP INDEX IF EXISTS events_target_ts",
        "DROP INDEX IF EXISTS events_kind_ts",
        "DROP INDEX IF EXISTS events_severity_ts",
        "CREATE INDEX IF NOT EXISTS events_target_kind_id ON events (target, kind, id, ts)",
        "CREATE INDEX IF NOT EXISTS events_target_id ON events (target, id, ts)",
        "CREATE INDEX IF NOT EXISTS events_kind_id ON events (kind, id, ts)",
        "CREATE INDEX IF NOT EXISTS events_severity_id ON events (severity_rank, id, ts)",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

# Primary SQLite result codes that mean "the store cannot be written now" (rather than a bug
# in a statement): the bus keeps events in memory and retries while one of these persists.
_TROUBLE_CODES: dict[int, str] = {
    3: "SQLITE_PERM",
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
    26: "SQLITE_NOTADB",
}


class StoreError(Exception):
    """The event database cannot be used (wrong file, newer schema, closed store)."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A read-only open found no database file."""


def store_trouble_reason(exc: BaseException) -> str | None:
    """Why the store cannot be written, if ``exc`` says so (disk full, read-only, I/O error,
    locked, corrupt, ...); None for anything else (a closed store, a bad statement, a bug).

    Works on sqlite3 errors (by result code) and on `OSError` (ENOSPC, EROFS, EIO, ...).
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        name = _TROUBLE_CODES.get(code & 0xFF)
        if name is None:
            return None
        detail = getattr(exc, "sqlite_errorname", name)
        return f"{exc} ({detail})"
    if isinstance(exc, OSError) and not isinstance(exc, StoreError):
        return f"{type(exc).__name__}: {exc}"
    return None


class RetentionParticipant(Protocol):
    """Another user of the database that takes part in retention (alerting's outbox)."""

    def retention_floor(self, conn: sqlite3.Connection) -> int | None:
        """The highest event id that may be pruned (e.g. a consumer's cursor); None: any."""
        ...

    def prune_batch(self, conn: sqlite3.Connection, cutoff: str, batch: int) -> int:
        """Delete at most ``batch`` of its own rows older than ``cutoff`` (stored ts form,
        see `format_ts`) inside the open transaction ``conn``; return how many."""
        ...


def format_ts(ts: datetime) -> str:
    """The stored form: UTC, milliseconds, ``Z``. A naive datetime is taken as UTC."""
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return f"{ts:%Y-%m-%dT%H:%M:%S}.{ts.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back, keeping the original error if the rollback fails too (I/O error)."""
    try:
        conn.rollback()
    except sqlite3.Error as exc:
        log.warning("rollback failed after a failed transaction: %s", exc)


def _row_to_event(row: tuple[Any, ...]) -> Event:
    event_id, ts, target, kind, severity, message, details = row
    return Event(
        target=target,
        kind=kind,
        message=message,
        severity=Severity(severity),
        details=json.loads(details) if details else {},
        ts=parse_ts(ts),
        id=event_id,
    )


def _connect(uri: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


def build_query(
    *,
    target: str | None = None,
    kinds: Sequence[str] = (),
    severity: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int | None = None,
    limit: int | None = 50,
    newest_first: bool = True,
) -> tuple[str, list[Any]]:
    """The SQL and parameters of `EventStore.query` (every filter an index range)."""
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0 or None")
    if severity is not None and severity not in SEVERITY_RANK:
        raise ValueError(f"unknown severity {severity!r}; expected info, warning or critical")
    where: list[str] = []
    params: list[Any] = []
    if target is not None:
        where.append("target = ?")
        params.append(target)
    if since is not None:
        where.append("ts >= ?")
        params.append(format_ts(since))
    if until is not None:
        where.append("ts < ?")
        params.append(format_ts(until))
    if after_id is not None:
        where.append("id > ?")
        params.append(after_id)
    kind_list = list(dict.fromkeys(kinds))
    min_rank = SEVERITY_RANK[severity] if severity is not None else 0
    ranks = [rank for rank in SEVERITY_RANK.values() if rank >= min_rank] if min_rank else []
    order = _ORDER_DESC if newest_first else _ORDER_ASC
    if len(kind_list) > 1 or (not kind_list and len(ranks) > 1):
        # One index range per kind (or per severity rank), each already in id order, merged:
        # avoids sorting every matching row of an IN list just to keep the newest few.
        split_col, values = ("kind", kind_list) if kind_list else ("severity_rank", ranks)
        if kind_list and min_rank:
            where.append(f"severity_rank >= {min_rank:d}")
        arms: list[str] = []
        arm_params: list[Any] = []
        for value in values:
            conditions = " AND ".join([f"{split_col} = ?", *where])
            arm = f"SELECT {_COLUMNS} FROM events WHERE {conditions} {order}"
            arm_params.extend([value, *params])
            if limit is not None:
                arm += " LIMIT ?"
                arm_params.append(limit)
            arms.append(f"SELECT * FROM ({arm})")
        sql = " UNION ALL ".join(arms) + f" {order}"
        params = arm_params
    else:
        if kind_list:
            where.append("kind = ?")
            params.append(kind_list[0])
        if min_rank:
            # "= max" rather than ">= max": the planner then walks (severity_rank, id, ts).
            where.append("severity_rank = ?" if len(ranks) == 1 else "severity_rank >= ?")
            params.append(min_rank)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        window_only = until is not None and after_id is None and target is None
        if window_only and not kind_list and not min_rank and limit is not None:
            # A time window alone: its rows are found on (ts) but must be ordered by id.
            # Pick the newest ids inside the covering index first, then read just those
            # rows (not every row of the window into the sorter).
            inner = f"SELECT id FROM events{clause} {order} LIMIT ?"
            return f"SELECT {_COLUMNS} FROM events WHERE id IN ({inner}) {order}", [
                *params,
                limit,
            ]
        sql = f"SELECT {_COLUMNS} FROM events{clause} {order}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return sql, params


class EventStore:
    """The append-only event log in one SQLite file (WAL: one writer, many readers).

    Thread-safe: `append` and `transaction` serialise on a lock; queries use their own
    connection. The bus calls `append` from its single writer thread.
    """

    def __init__(
        self, path: Path | str, *, readonly: bool = False, timeout: float = BUSY_TIMEOUT_S
    ) -> None:
        self._path = Path(path)
        self._readonly = readonly
        self._timeout = timeout
        self._lock_wait = timeout  # the write connection's busy timeout now
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._db: sqlite_utils.Database | None = None
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._retention: dict[str, RetentionParticipant] = {}
        self._in_transaction = False
        if readonly:
            if not self._path.is_file():
                raise StoreNotFoundError(f"no event database at {self._path}")
            self._read = _connect(self._path.resolve().as_uri() + "?mode=ro", timeout)
            self._check_readable()
        else:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            uri = self._path.resolve().as_uri() + "?mode=rwc"
            self._conn = _connect(uri, timeout)
            try:
                self._auto_vacuum(self._conn)  # before WAL: a new file gets it for free
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT:d}")
                self._migrate(self._conn)
            except sqlite3.DatabaseError as exc:
                self._conn.close()
                raise StoreError(f"cannot use {self._path} as the event database: {exc}") from exc
            except BaseException:
                self._conn.close()
                raise
            self._read = _connect(uri, timeout)
        self._read.execute("PRAGMA query_only = ON")

    @classmethod
    def open_readonly(cls, path: Path | str, *, timeout: float = BUSY_TIMEOUT_S) -> EventStore:
        """Open an existing database for reading only; `StoreNotFoundError` if there is none.

        Works while another process writes (WAL readers see each committed event).
        """
        return cls(path, readonly=True, timeout=timeout)

    # --- properties ---------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the write connection (read-only connection in read-only mode).

        Use it inside `transaction()` or from the bus's writer thread
        (`EventBus.run_in_writer`): the connection is shared with `append`.
        """
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self._conn if self._conn is not None else self._read)
        return self._db

    # --- schema --------------------------------------------------------------------------

    def _auto_vacuum(self, conn: sqlite3.Connection) -> None:
        """Incremental auto-vacuum: set on a new file; an old small one is converted."""
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        if mode == 2:
            return
        (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if not tables:
            return  # takes effect with the first table
        size = self._path.stat().st_size if self._path.exists() else 0
        if size > VACUUM_CONVERT_MAX_BYTES:
            log.info(
                "%s is %.0f MB and has no incremental auto-vacuum: space freed by retention "
                "is reused but not returned to the file system (run VACUUM while erpwatch is "
                "stopped to convert it)",
                self._path,
                size / 1e6,
            )
            return
        try:
            conn.execute("VACUUM")  # applies the new auto_vacuum mode (a one-time rewrite)
        except sqlite3.OperationalError as exc:
            log.warning("could not convert %s to incremental auto-vacuum: %s", self._path, exc)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            current = self._read_version(conn)
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path} has schema version {current}, newer than this erpwatch "
                    f"understands ({SCHEMA_VERSION}); upgrade erpwatch"
                )
            for statements in _MIGRATIONS[current:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    @staticmethod
    def _read_version(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _check_readable(self) -> None:
        try:
            tables = {
                name
                for (name,) in self._read.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
        except sqlite3.DatabaseError as exc:
            self._read.close()
            raise StoreError(f"{self._path} is not an erpwatch event database ({exc})") from exc
        if not {"meta", "events"} <= tables:
            self._read.close()
            raise StoreError(f"{self._path} is not an erpwatch event database")

    def schema_version(self) -> int:
        with self._read_lock:
            return self._read_version(self._read)

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``) on the write connection, locked.

        Commits on success, rolls back and re-raises on any exception. Not nestable: a
        second ``transaction()`` inside the first raises `StoreError`.
        """
        with self._write_lock:
            conn = self._writer()
            if self._in_transaction:
                raise StoreError("transaction() is already open on this thread")
            if conn.in_transaction:
                conn.rollback()  # left open by a rollback that failed (I/O error): retry it
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in _BUSY_CODES:
                    self._wait_for_locks(conn, CONTENDED_WAIT_S)
                raise
            self._in_transaction = True
            try:
                yield conn
                conn.commit()  # may fail too (disk full while writing the WAL)
                self._wait_for_locks(conn, self._timeout)
            except BaseException:
                if conn.in_transaction:
                    _rollback(conn)
                raise
            finally:
                self._in_transaction = False

    def _wait_for_locks(self, conn: sqlite3.Connection, seconds: float) -> None:
        """Set the busy timeout of the write connection (under the write lock) when it
        changes: `CONTENDED_WAIT_S` after a write found the database locked for the whole
        timeout, the store's own after a write got through."""
        if seconds != self._lock_wait:
            conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
            self._lock_wait = seconds

    def append(self, event: Event) -> Event:
        """Insert ``event`` in a transaction of its own; return the committed copy.

        Details and message are bounded here as in `Event.of` (an event built directly
        may carry more); the returned copy carries what was stored.
        """
        with self.transaction() as conn:
            return self._insert(conn, event)

    def append_many(self, events: Sequence[Event]) -> list[Event]:
        """Insert ``events`` in order in one transaction (events only, nothing else)."""
        with self.transaction() as conn:
            return [self._insert(conn, event) for event in events]

    @staticmethod
    def _insert(conn: sqlite3.Connection, event: Event) -> Event:
        ts = format_ts(event.ts)
        severity = Severity(event.severity)
        details = event.details
        details_text = event.details_json()
        if len(details_text) > DETAILS_MAX_BYTES:
            details = bound_details(details)
            details_text = json.dumps(details, sort_keys=True, default=str)
        message = bound_message(event.message)
        cursor = conn.execute(
            "INSERT INTO events (ts, target, kind, severity, severity_rank, message, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                ts,
                event.target,
                event.kind,
                str(severity),
                SEVERITY_RANK[severity],
                message,
                details_text,
            ),
        )
        assert cursor.lastrowid is not None
        return Event(
            target=event.target,
            kind=event.kind,
            message=message,
            severity=severity,
            details=details,
            ts=parse_ts(ts),
            id=cursor.lastrowid,
        )

    # --- retention -----------------------------------------------------------------------

    def add_retention(self, name: str, participant: RetentionParticipant) -> None:
        """Let ``participant`` hold back events (its floor) and prune its own rows in `prune`.

        A second participant of the same name replaces the first.
        """
        self._retention[name] = participant

    def prune(self, older_than: datetime, *, batch: int = PRUNE_BATCH) -> dict[str, int]:
        """One round of retention: delete at most ``batch`` events with ``ts < older_than``
        and ``id`` at or below every participant's floor, in one transaction; then, in one
        transaction each, at most ``batch`` old rows of every participant.

        Returns the rows deleted per table group (``"events"`` and each participant's
        name); a value equal to ``batch`` means more may be left: call again.
        """
        if batch < 1:
            raise ValueError("batch must be >= 1")
        cutoff = format_ts(older_than)
        deleted: dict[str, int] = {}
        with self.transaction() as conn:
            floors = [
                floor
                for participant in self._retention.values()
                if (floor := participant.retention_floor(conn)) is not None
            ]
            select = "SELECT id FROM events INDEXED BY events_ts WHERE ts < ?"
            params: list[Any] = [cutoff]
            if floors:
                select += " AND id <= ?"
                params.append(min(floors))
            params.append(batch)
            cursor = conn.execute(f"DELETE FROM events WHERE id IN ({select} LIMIT ?)", params)
            deleted["events"] = cursor.rowcount
        for name, participant in self._retention.items():
            with self.transaction() as conn:
                deleted[name] = participant.prune_batch(conn, cutoff, batch)
        return deleted

    def reclaim(self, pages: int = RECLAIM_PAGES) -> int:
        """Return up to ``pages`` free pages to the file system (incremental auto-vacuum);
        returns the free pages left. A database without auto-vacuum keeps its free pages
        for reuse (returns their count unchanged)."""
        with self._write_lock:
            conn = self._writer()
            (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
            if mode == 2:
                # executescript steps the pragma to the end (execute() frees one page only).
                conn.executescript(f"PRAGMA incremental_vacuum({int(pages):d})")
            (free,) = conn.execute("PRAGMA freelist_count").fetchone()
            if not free:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            return int(free)

    def disk_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += Path(f"{self._path}{suffix}").stat().st_size
            except FileNotFoundError:
                continue
        return total

    def _writer(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the event store is closed")
        if self._conn is None:
            raise StoreError(f"{self._path} is open read-only")
        return self._conn

    # --- reading -------------------------------------------------------------------------

    def query(
        self,
        *,
        target: str | None = None,
        kinds: Sequence[str] = (),
        severity: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
        limit: int | None = 50,
        newest_first: bool = True,
    ) -> list[Event]:
        """Events matching every given filter, in id (commit) order; ``limit=None``: all.

        Newest first by default. Ordered by id, not by ``ts``: after a wall-clock step
        backwards the latest event still comes first. ``severity`` is a minimum;
        ``since <= ts < until``; ``after_id`` keeps ids greater than it (a subscriber
        catching up after drops: ``query(after_id=sub.last_id, newest_first=False,
        limit=None)``).
        """
        sql, params = build_query(
            target=target,
            kinds=kinds,
            severity=severity,
            since=since,
            until=until,
            after_id=after_id,
            limit=limit,
            newest_first=newest_first,
        )
        return self._fetch(sql, params)

    def explain(self, **filters: Any) -> list[str]:
        """EXPLAIN QUERY PLAN details of `query` with these filters (tests, benchmark)."""
        sql, params = build_query(**filters)
        with self._read_lock:
            rows = self._read.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        return [str(row[-1]) for row in rows]

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[Event]:
        if self._closed:
            raise StoreError("the event store is closed")
        with self._read_lock:
            rows = self._read.execute(sql, params).fetchall()
        return [_row_to_event(row) for row in rows]

    def get(self, event_id: int) -> Event | None:
        found = self._fetch(f"SELECT {_COLUMNS} FROM events WHERE id = ?", (event_id,))
        return found[0] if found else None

    def last_event(self, target: str) -> Event | None:
        found = self.query(target=target, limit=1)
        return found[0] if found else None

    def count(self) -> int:
        if self._closed:
            raise StoreError("the event store is closed")
        with self._read_lock:
            (total,) = self._read.execute("SELECT count(*) FROM events").fetchone()
        return int(total)

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close both connections (idempotent). Waits for a running `append` to finish."""
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._read.close()
            if self._conn is not None:
                self._conn.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self._readonly else "rw"
        return f"EventStore({str(self._path)!r}, {mode})"
