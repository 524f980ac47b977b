"""What a previous erpwatch left running when it died (SIGKILL, OOM): found and ended.

Each run records every child it starts (target, pid, start time, process group) in the
store's ``children`` table. A new ``erpwatch run`` reads it before it starts anything: a
recorded child still alive with the same start time (never a stranger that reused the pid)
is stopped with its whole tree — its process group, its descendants and every process still
carrying the target's ``ERPWATCH_TARGET`` marker (double-forked daemons re-parented to init
when the old erpwatch died) — so the new run never runs two backends, and never refuses to
start because the old backend still holds the port.

The alert hook (`alerting.hooks`) is recorded the same way while it runs, under `HOOK_KEY`:
a hook hung past its timeout is killed by the erpwatch that started it, but one left by an
erpwatch that died would run forever, and beside its retry.

Why stop rather than adopt: the old child's stdout/stderr were pipes into the dead erpwatch;
an adopted backend would log into a broken pipe for the rest of its life. A restart costs
the ERP a few seconds once, after a crash of the watchdog itself.

The ledger's methods are synchronous and run on the bus's writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from watchdog.events import SYSTEM_TARGET
from watchdog.process import descendants, is_alive
from watchdog.reaper import carries_marker
from watchdog.store import EventStore

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS children (
        target TEXT PRIMARY KEY, pid INTEGER NOT NULL, create_time REAL NOT NULL,
        pgid INTEGER, argv TEXT NOT NULL, erpwatch_pid INTEGER NOT NULL
    )""",
    # An operator's stop: the target stays stopped, also across an erpwatch restart.
    "CREATE TABLE IF NOT EXISTS holds (target TEXT PRIMARY KEY, held TEXT NOT NULL)",
)
HOOK_KEY = "erpwatch:hook"  # the ledger row of a running alert hook (no target has a ':')
_POLL = 0.02
_CREATE_TIME_SLACK = 0.05  # psutil's create_time is derived from jiffies: allow rounding


@dataclass(frozen=True, slots=True)
class ChildRecord:
    target: str
    pid: int
    create_time: float
    pgid: int | None
    argv: tuple[str, ...]
    erpwatch_pid: int


@dataclass(frozen=True, slots=True)
class Cleanup:
    """What was done about one recorded child."""

    record: ChildRecord
    found: bool  # still alive and verified to be the recorded process
    killed: tuple[int, ...] = ()  # every pid signalled (the child and its tree)
    escalated: bool = False  # SIGKILL was needed

    @property
    def target(self) -> str:
        """The target it belonged to; erpwatch's own for the alert hook."""
        return SYSTEM_TARGET if self.record.target == HOOK_KEY else self.record.target

    def describe(self) -> str:
        hook = self.record.target == HOOK_KEY
        whose, what = ("", "alert hook") if hook else (f"{self.target}: ", "child")
        if not self.found:
            return f"{whose}previous {what} {self.record.pid} is gone"
        how = "SIGKILL" if self.escalated else "SIGTERM"
        return (
            f"{whose}stopped the previous run's {what} {self.record.pid} and "
            f"{len(self.killed) - 1} descendant(s) ({how})"
        )


class ChildLedger:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    def ensure_schema(self) -> None:
        with self.store.transaction() as conn:
            for statement in SCHEMA:
                conn.execute(statement)

    def set_hold(self, target: str, held: Mapping[str, str] | None) -> None:
        with self.store.transaction() as conn:
            if held is None:
                conn.execute("DELETE FROM holds WHERE target = ?", (target,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO holds (target, held) VALUES (?, ?)",
                    (target, json.dumps(dict(held))),
                )

    def holds(self) -> dict[str, dict[str, str]]:
        with self.store.transaction() as conn:
            try:
                rows = conn.execute("SELECT target, held FROM holds").fetchall()
            except sqlite3.OperationalError:
                return {}
        return {str(target): dict(json.loads(held)) for target, held in rows}

    def record(self, target: str, pid: int, argv: Sequence[str]) -> None:
        """Remember a child just started (its start time makes pid reuse detectable)."""
        try:
            proc = psutil.Process(pid)
            create_time = proc.create_time()
            pgid: int | None = os.getpgid(pid)
        except (psutil.Error, OSError):
            return  # already gone: nothing to leave behind
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO children "
                "(target, pid, create_time, pgid, argv, erpwatch_pid) VALUES (?, ?, ?, ?, ?, ?)",
                (target, pid, create_time, pgid, json.dumps(list(argv)), os.getpid()),
            )

    def forget(self, target: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM children WHERE target = ?", (target,))

    def records(self) -> list[ChildRecord]:
        with self.store.transaction() as conn:
            try:
                rows = conn.execute(
                    "SELECT target, pid, create_time, pgid, argv, erpwatch_pid FROM children"
                ).fetchall()
            except sqlite3.OperationalError:
                return []  # no table yet: a store from before this feature
        return [
            ChildRecord(
                str(t),
                int(p),
                float(c),
                None if g is None else int(g),
                tuple(json.loads(a)),
                int(e),
            )
            for t, p, c, g, a, e in rows
        ]


class LedgerHooks:
    """The supervisor's hooks: record each child started, forget it once stopped on
    purpose. Writes run on the bus's writer thread (``run_in_writer``)."""

    def __init__(
        self,
        ledger: ChildLedger,
        run_in_writer: Callable[..., Awaitable[Any]],
        argv: Mapping[str, Sequence[str]],
    ) -> None:
        self._ledger = ledger
        self._run = run_in_writer
        self._argv = argv

    async def spawned(self, target: str, pid: int) -> None:
        await self._run(self._ledger.record, target, pid, self._argv.get(target, ()))

    async def stopped(self, target: str) -> None:
        await self._run(self._ledger.forget, target)

    async def held(self, target: str, held: Mapping[str, str] | None) -> None:
        await self._run(self._ledger.set_hold, target, held)

    async def load_holds(self) -> dict[str, dict[str, str]]:
        holds: dict[str, dict[str, str]] = await self._run(self._ledger.holds)
        return holds


class HookLedger:
    """Records the alert hook while it runs (the hook lane runs one at a time). Never in
    the hook's way: a write that fails or waits past ``timeout`` (a stalled disk) is logged,
    and the hook runs on; writes stay in order (one writer thread)."""

    def __init__(
        self,
        ledger: ChildLedger,
        run_in_writer: Callable[..., Awaitable[Any]],
        timeout: float = 5.0,
    ) -> None:
        self._ledger = ledger
        self._run = run_in_writer
        self._timeout = timeout
        self._schema = False

    async def spawned(self, pid: int, argv: Sequence[str]) -> None:
        await self._write(self._ledger.record, HOOK_KEY, pid, argv)

    async def ended(self) -> None:
        await self._write(self._ledger.forget, HOOK_KEY)

    async def _write(self, write: Callable[..., None], *args: Any) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                if not self._schema:
                    await self._run(self._ledger.ensure_schema)
                    self._schema = True
                await self._run(write, *args)
        except Exception as exc:  # the store's trouble is reported by the bus
            log.warning("could not record the alert hook's process: %r", exc)


def verified(record: ChildRecord) -> psutil.Process | None:
    """The recorded child if it still runs and is the same process (start time), else None."""
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > _CREATE_TIME_SLACK:
            return None  # the pid was reused by a stranger
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def marked(target: str, *, exclude: Sequence[int] = ()) -> list[psutil.Process]:
    """Processes whose environment carries ``ERPWATCH_TARGET=<target>`` (one host scan)."""
    found: list[psutil.Process] = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me or proc.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if carries_marker(proc.pid, target):
                found.append(proc)
    return found


def end_tree(root: psutil.Process, target: str, grace: float) -> tuple[list[int], bool]:
    """SIGTERM the leftover's group, descendants and marked processes; SIGKILL after
    ``grace``. Returns the pids signalled and whether SIGKILL was needed."""
    procs: dict[int, psutil.Process] = {root.pid: root}
    with contextlib.suppress(psutil.Error):
        for pid in descendants(root.pid):
            with contextlib.suppress(psutil.Error):
                procs[pid] = psutil.Process(pid)
    for proc in marked(target, exclude=list(procs)):
        procs[proc.pid] = proc
    with contextlib.suppress(OSError):
        os.killpg(root.pid, signal.SIGTERM)  # its group: pgid == pid (start_new_session)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_alive(p) for p in procs.values()):
        time.sleep(_POLL)
    survivors = [p for p in procs.values() if is_alive(p)]
    for proc in survivors:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(is_alive(p) for p in survivors):
        time.sleep(_POLL)
    return sorted(procs), bool(survivors)


def clean_up(
    records: Sequence[ChildRecord],
    grace: float,
    marker: Callable[[str], str] | None = None,
) -> list[Cleanup]:
    """End every recorded child still alive (blocking; run it in a thread). ``marker``
    gives a target's ``ERPWATCH_TARGET`` value (default: its name)."""
    marker_of = marker or (lambda target: target)
    results = []
    for record in records:
        if record.erpwatch_pid == os.getpid():
            continue  # our own (cannot happen across runs; be safe)
        proc = verified(record)
        if proc is None:
            # The child is gone, but a daemon it double-forked may still carry the marker.
            strays = marked(marker_of(record.target))
            if strays:
                root = strays[0]
                killed, escalated = end_tree(root, marker_of(record.target), grace)
                results.append(Cleanup(record, True, tuple(killed), escalated))
            else:
                results.append(Cleanup(record, False))
            continue
        killed, escalated = end_tree(proc, marker_of(record.target), grace)
        results.append(Cleanup(record, True, tuple(killed), escalated))
    return results
