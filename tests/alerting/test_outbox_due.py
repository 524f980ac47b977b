"""`Outbox.due`: the oldest pending rows of a lane, the skipped ones left out, in id order,
read from a real SQLite file, also past one query's worth of ids."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alerting.outbox import Outbox
from alerting.render import Mail
from watchdog.store import EventStore


def _outbox(tmp_path: Path, count: int, receiver: str = "email") -> Outbox:
    store = EventStore(tmp_path / "events.db")
    outbox = Outbox(store)
    outbox.ensure_schema()
    mails = [
        Mail(
            purpose="down",
            target="backend",
            incident_id=None,
            recipients=("ops@x.org",),
            subject=f"s{i}",
            message_id=f"<{i}@h>",
            data=f"m{i}".encode(),
            trigger_kinds=("down",),
            receiver=receiver,
        )
        for i in range(count)
    ]
    with store.transaction() as conn:
        outbox._insert(conn, mails, datetime.now(UTC))
    return outbox


def test_due_leaves_the_skipped_out_and_keeps_id_order(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, 20)
    due = outbox.due(5, skip={1, 2, 4, 7})
    assert [row.id for row in due] == [3, 5, 6, 8, 9]
    assert [row.mail.data for row in due] == [b"m2", b"m4", b"m5", b"m7", b"m8"]
    assert due[0].mail.recipients == ("ops@x.org",) and due[0].mail.trigger_kinds == ("down",)
    assert outbox.due(5, skip=set(range(1, 21))) == []
    assert outbox.due(5, receiver="webhook:0") == []


def test_due_past_one_query_of_ids_returns_them_all_in_order(tmp_path: Path) -> None:
    outbox = _outbox(tmp_path, 1300)
    skipped = set(range(1, 1301, 3))
    due = outbox.due(1000, skip=skipped)
    expected = [i for i in range(1, 1301) if i not in skipped]
    assert [row.id for row in due] == expected[:1000]
    assert all(row.mail.data == f"m{row.id - 1}".encode() for row in due)
