"""The wall clock stepped back across a restart (an NTP correction, an operator fixing a
clock that ran hours ahead): the pipeline's saved instants (a group wait's end, the rate
limiter's sends) are mapped back to the new process's monotonic clock through the wall
clock, and must not land hours in the future, holding a ``down`` mail for as long."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alerting.service import AlertService
from tests.alerting.conftest import SmtpServer, make_settings
from tests.alerting.test_service import subjects
from tests.helpers import await_until
from watchdog.bus import EventBus
from watchdog.events import Event, Kind
from watchdog.settings import Settings
from watchdog.store import EventStore

AHEAD = timedelta(hours=3)


def ahead() -> datetime:
    return datetime.now(UTC) + AHEAD


@asynccontextmanager
async def running(
    settings: Settings, store: EventStore, bus: EventBus, wall: Callable[[], datetime]
) -> AsyncIterator[AlertService]:
    service = AlertService(
        settings, store, bus, hostname="testhost", retry_initial=0.05, retry_max=0.2,
        poll=0.05, wall=wall,
    )  # fmt: skip
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def saved_group_deadline(path: Path) -> bool:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM alert_state WHERE key = 'target:backend'").fetchone()
    conn.close()
    return row is not None and '"group_deadline": "' in row[0]


async def test_a_group_wait_saved_before_the_clock_went_back_ends_on_time(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(tmp_path, smtp, alert_group_wait=0.5)
    async with running(settings, store, bus, ahead):
        await bus.publish(Event.of("backend", Kind.DOWN, "backend down for 60s"))
        await await_until(lambda: saved_group_deadline(store.path), what="the group wait saved")
    assert smtp.messages == []  # stopped within its group wait
    async with running(settings, store, bus, lambda: datetime.now(UTC)):
        await await_until(lambda: smtp.messages, what="the down mail after the restart")
    assert len(subjects(smtp, "backend")) == 1


async def test_rate_limit_sends_saved_before_the_clock_went_back_expire_on_time(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(tmp_path, smtp, alert_rate_limit=1, alert_rate_window=1.0)
    async with running(settings, store, bus, ahead):
        await bus.publish(Event.of("backend", Kind.DOWN, "backend down for 60s"))
        await await_until(lambda: smtp.messages, what="the first mail")
    async with running(settings, store, bus, lambda: datetime.now(UTC)):
        await bus.publish(Event.of("other", Kind.DOWN, "other down for 60s"))
        await await_until(
            lambda: len(smtp.messages) >= 2, what="the next mail once the window has passed"
        )
