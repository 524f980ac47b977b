"""The SQLite event store (sqlite-utils, WAL): the audit log every event is committed to.

CONTRACT (filled in by the store/bus work):

    CommitHook = Callable[[Event, sqlite_utils.Database], None]

    class EventStore:
        def __init__(self, path: Path) -> None
            # creates parent dirs, WAL, synchronous=NORMAL, schema (events table, indexes on
            # (target, kind, ts), (kind, ts), (ts), (severity, ts)), a schema_version in a meta
            # table, migrations run idempotently. Safe for one writer + several readers.
        @property path -> Path
        @property db -> sqlite_utils.Database   # other modules (alerting) add their own tables
        def append(self, event: Event, hooks: Sequence[CommitHook] = ()) -> Event
            # one transaction: insert the event, then call each hook(event_with_id, db);
            # a hook that raises rolls the whole transaction back and the error propagates.
            # Returns the event with its id.
        def query(self, *, target: str | None = None, kinds: Sequence[str] = (),
                  severity: str | None = None,  # minimum severity: info < warning < critical
                  since: datetime | None = None, until: datetime | None = None,
                  after_id: int | None = None, limit: int | None = 50,
                  newest_first: bool = True) -> list[Event]
        def last_event(self, target: str) -> Event | None
        def count(self) -> int
        def close(self) -> None
"""
