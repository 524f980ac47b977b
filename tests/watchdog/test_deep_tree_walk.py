"""A deep process tree (a chain: each process forks the next) costs erpwatch O(tree) to look
through, not O(depth x tree): every crash, stop and sweep looks at all the processes it has
seen, and each used to be walked down to the bottom again (a 300-deep chain held the event
loop for over a second per look)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import await_until
from watchdog import process as process_module
from watchdog.process import ManagedProcess

DEPTH = 60
CHAIN = f"""
import os, time
for _ in range({DEPTH}):
    if os.fork():
        break
print("READY", flush=True)
while True:
    time.sleep(3600)
"""


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[ManagedProcess]:
    process = ManagedProcess(
        "chain", [sys.executable, "-c", CHAIN], log_dir=tmp_path / "logs", stop_timeout=2.0
    )
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def test_looking_for_strays_walks_each_process_once(
    chain: ManagedProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    await await_until(
        lambda: len(chain.tree_pids()) >= DEPTH + 1, timeout=30, what="the whole chain"
    )
    reads: list[str] = []
    real = process_module._read_small

    def counting(path: str) -> bytes:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(process_module, "_read_small", counting)
    found = chain._strays()
    assert len(found) >= DEPTH
    # One children file per process (each has one thread), plus a little slack; walking
    # every remembered process's subtree again read DEPTH * (DEPTH + 1) / 2 of them.
    assert len(reads) <= 2 * (DEPTH + 1), len(reads)


async def test_a_deep_chain_is_still_stopped_whole(chain: ManagedProcess) -> None:
    def whole() -> list[int] | None:
        pids = chain.tree_pids()
        return pids if len(pids) >= DEPTH + 1 else None

    pids = await await_until(whole, timeout=30, what="the whole chain")
    snapshot = [process_module.psutil.Process(pid) for pid in pids]
    report = await chain.stop_tree()
    assert report.exit is not None
    assert not [p.pid for p in snapshot if process_module.is_alive(p)]
