"""The log directory deleted while a target runs (``rm -rf LOG_PATH``): erpwatch used to go
on writing the child's output into the unlinked files, where nobody can read it, holding
their space, silently, until LOG_MAX_BYTES had gone by. Now the next write starts a new
file at the path (the directory made again) and says so once."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import await_until
from watchdog.process import LogFile, ManagedProcess

TICKER = """
import sys, time
i = 0
while True:
    print(f"tick {i}", flush=True)
    i += 1
    time.sleep(0.01)
"""


def test_a_deleted_log_file_is_started_again_and_reported_once(tmp_path: Path) -> None:
    reports: list[str] = []
    path = tmp_path / "logs" / "erp.out.log"
    path.parent.mkdir()
    log = LogFile(path, 1024 * 1024, 2, report=reports.append)
    log.write(b"before\n")
    shutil.rmtree(path.parent)
    log.write(b"after 1\n")
    log.write(b"after 2\n")
    assert path.read_bytes() == b"after 1\nafter 2\n"
    assert len(reports) == 1, reports
    assert "deleted" in reports[0]
    assert log.dropped_total == 0
    log.close()


@pytest.fixture
async def ticker(tmp_path: Path) -> AsyncIterator[ManagedProcess]:
    process = ManagedProcess("erp", [sys.executable, "-c", TICKER], log_dir=tmp_path / "logs")
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


async def test_a_running_targets_output_reaches_a_new_file_after_rm_rf(
    ticker: ManagedProcess,
) -> None:
    await await_until(
        lambda: ticker.stdout_path.exists() and b"tick" in ticker.stdout_path.read_bytes(),
        what="first output",
    )
    shutil.rmtree(ticker.log_dir)
    await await_until(
        lambda: ticker.stdout_path.exists() and b"tick" in ticker.stdout_path.read_bytes(),
        what="output in a new file after the directory was deleted",
    )
    assert ticker.running
