"""The event bus: commit to the store first, then fan out to bounded subscriber queues.

CONTRACT:

    class Subscription:       # async iterator of committed events
        name: str
        dropped: int           # events lost to this subscriber because its queue was full
        async def get(self) -> Event
        def __aiter__ / __anext__
        def close(self) -> None

    class EventBus:
        def __init__(self, store: EventStore) -> None
        def add_commit_hook(self, hook: CommitHook) -> None
            # runs inside the event's SQLite transaction (e.g. alerting writes its outbox row)
        def subscribe(self, name: str, maxsize: int = 1000) -> Subscription
            # a full queue never blocks publish: the oldest queued event is dropped, counted,
            # and logged once per episode; the subscriber can catch up from the store by id.
        async def publish(self, event: Event) -> Event
            # appends via the store in a single writer thread (order kept, loop not blocked),
            # then puts the committed event (with id) into every subscriber's queue.
        async def close(self) -> None   # flushes; subscribers' iterators end
"""
