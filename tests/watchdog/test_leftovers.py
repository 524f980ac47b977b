"""Leftovers of a dead erpwatch: real processes, a real SQLite ledger."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_until
from watchdog.bus import EventBus
from watchdog.leftovers import (
    HOOK_KEY,
    ChildLedger,
    ChildRecord,
    Cleanup,
    HookLedger,
    clean_up,
    verified,
)
from watchdog.store import EventStore

# A "backend" that double-forks a setsid daemon (re-parented to init, out of its group and
# session) and prints both pids, then sleeps: what a dead erpwatch leaves behind.
TREE = textwrap.dedent(
    """
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print("DAEMON", os.getpid(), flush=True)
            time.sleep(120)
        os._exit(0)
    print("ROOT", os.getpid(), flush=True)
    time.sleep(120)
    """
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    out = tmp_path / "out"
    env = {**os.environ, "ERPWATCH_TARGET": "backend@test-instance"}
    with out.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", TREE], stdout=handle, env=env, start_new_session=True
        )

    def daemon_pid() -> int | None:
        for line in out.read_text().splitlines():
            if line.startswith("DAEMON"):
                return int(line.split()[1])
        return None

    daemon = wait_until(daemon_pid, what="the daemon pid")
    assert daemon is not None
    yield proc, daemon
    for pid in (proc.pid, daemon):  # only what this fixture started
        if alive(pid):
            os.kill(pid, 9)
    proc.wait(5)


def record_of(proc: subprocess.Popen[bytes], target: str = "backend@test-instance") -> ChildRecord:
    return ChildRecord(
        target=target,
        pid=proc.pid,
        create_time=psutil.Process(proc.pid).create_time(),
        pgid=proc.pid,
        argv=("python",),
        erpwatch_pid=0,  # "another, dead erpwatch"
    )


def test_ledger_records_and_forgets_in_the_store(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "erpwatch.db")
    try:
        ledger = ChildLedger(store)
        ledger.ensure_schema()
        ledger.record("backend", os.getpid(), ["erp", "--port", "1"])
        (record,) = ledger.records()
        assert record.target == "backend" and record.pid == os.getpid()
        assert record.argv == ("erp", "--port", "1")
        assert verified(record) is not None
        ledger.forget("backend")
        assert ledger.records() == []
    finally:
        store.close()


async def test_hook_ledger_records_the_running_hook_through_the_bus(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "erpwatch.db")
    bus = EventBus(store)
    try:
        hooks = HookLedger(ChildLedger(store), bus.run_in_writer)
        await hooks.spawned(os.getpid(), ["page-ops"])  # a fresh store: the schema is made
        (record,) = ChildLedger(store).records()
        assert (record.target, record.pid, record.argv) == (HOOK_KEY, os.getpid(), ("page-ops",))
        cleanup = Cleanup(record, found=True, killed=(os.getpid(),))
        assert cleanup.target == "erpwatch" and "alert hook" in cleanup.describe()
        await hooks.ended()
        assert ChildLedger(store).records() == []
    finally:
        await bus.close()
        store.close()


async def test_a_stalled_hook_ledger_write_never_holds_the_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stalled_writer(*args: object) -> None:
        await asyncio.Event().wait()  # a disk that never answers

    hooks = HookLedger(ChildLedger(None), stalled_writer, timeout=0.05)  # type: ignore[arg-type]
    await hooks.spawned(os.getpid(), ["page-ops"])  # returns: bounded by the timeout
    assert "could not record the alert hook" in caplog.text


def test_a_reused_pid_is_never_taken_for_the_leftover() -> None:
    me = psutil.Process(os.getpid())
    # A name no process carries as its marker: clean_up also looks for marked strays, and
    # "backend" is what other erpwatch runs on this machine (another test session) use.
    name = f"backend-{os.getpid()}-reused"
    stranger = ChildRecord(name, me.pid, me.create_time() - 3600, None, (), 0)
    assert verified(stranger) is None
    assert clean_up([stranger], grace=0.1)[0].found is False
    assert alive(os.getpid())


def test_leftover_tree_is_ended_with_its_setsid_daemon(
    tree: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, daemon = tree
    (result,) = clean_up([record_of(proc)], grace=2.0)
    assert result.found
    assert {proc.pid, daemon} <= set(result.killed)
    proc.wait(5)
    wait_until(lambda: not alive(daemon), 5, what="the daemon ended")
    assert "stopped the previous run's child" in result.describe()


def test_a_daemon_left_after_its_parent_died_is_found_by_its_marker(
    tree: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, daemon = tree
    record = record_of(proc)
    proc.kill()
    proc.wait(5)
    (result,) = clean_up([record], grace=2.0)
    assert result.found and daemon in result.killed
    wait_until(lambda: not alive(daemon), 5, what="the daemon ended")


def test_another_instances_marker_is_left_alone(
    tree: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, daemon = tree
    record = record_of(proc, target="backend@other-instance")
    record = ChildRecord(record.target, 999_999_999, 0.0, None, (), 0)  # its child is gone
    (result,) = clean_up([record], grace=0.5)
    assert not result.found
    assert alive(proc.pid) and alive(daemon)
