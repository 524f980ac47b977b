"""ManagedProcess against real children (mostly the demo backend)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import await_until
from watchdog.demo.backend import CRASH_EXIT_CODE, CRASH_LINE
from watchdog.process import ExitInfo, ManagedProcess, ProcessStartError, ppid_map, tail_lines

BACKEND = [sys.executable, "-m", "watchdog.demo.backend", "--port", "0"]
MakeProcess = Callable[..., ManagedProcess]


def alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
async def make_process(tmp_path: Path) -> AsyncIterator[MakeProcess]:
    """Builds ManagedProcesses logging to tmp_path; stops them all at teardown."""
    made: list[ManagedProcess] = []

    def make(argv: list[str], name: str = "erp", **kwargs: Any) -> ManagedProcess:
        kwargs.setdefault("stop_timeout", 2.0)
        process = ManagedProcess(name, argv, log_dir=tmp_path / "logs", **kwargs)
        made.append(process)
        return process

    yield make
    for process in made:
        await process.stop()


async def stdout_match(process: ManagedProcess, pattern: str) -> re.Match[str]:
    def find() -> Any:  # a match or None; await_until waits for a truthy value
        if not process.stdout_path.exists():
            return None
        return re.search(pattern, process.stdout_path.read_text())

    return await await_until(find, timeout=10, what=f"{pattern!r} in {process.stdout_path}")


async def listening_port(process: ManagedProcess) -> int:
    return int((await stdout_match(process, r"LISTENING (\d+)")).group(1))


async def grandchild_pid(process: ManagedProcess) -> int:
    return int((await stdout_match(process, r"GRANDCHILD (\d+)")).group(1))


@contextlib.contextmanager
def reaped_on_failure(pid: int) -> Iterator[None]:
    """If the test fails, do not leave the grandchild we caused behind."""
    try:
        yield
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_start_writes_output_to_log_files(make_process: MakeProcess) -> None:
    script = "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"
    process = make_process([sys.executable, "-c", script])
    pid = await process.start()
    info = await process.wait()
    assert info == ExitInfo(pid, 0, None, ("to stderr",))
    assert info.describe() == "exit code 0"
    assert process.stdout_path.read_text() == "to stdout\n"
    assert process.stderr_path.read_text() == "to stderr\n"
    assert not process.running


async def test_crash_records_exit_code_and_stderr_tail(make_process: MakeProcess) -> None:
    process = make_process(BACKEND)
    pid = await process.start()
    assert process.running and process.pid == pid
    port = await listening_port(process)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{port}/fault/crash")
    assert response.status_code == 200
    info = await process.wait()
    assert info.returncode == CRASH_EXIT_CODE
    assert info.signal is None
    assert info.describe() == "exit code 3"
    assert info.stderr_tail[-1] == CRASH_LINE
    assert process.exit_info == info
    assert process.stderr_tail(1) == [CRASH_LINE]


async def test_exit_tail_holds_only_this_runs_stderr(make_process: MakeProcess) -> None:
    script = "import sys; print('run', sys.argv[1], file=sys.stderr); sys.exit(int(sys.argv[1]))"
    first = make_process([sys.executable, "-c", script, "1"])
    await first.start()
    assert (await first.wait()).stderr_tail == ("run 1",)
    again = make_process([sys.executable, "-c", script, "2"])  # same name, same log files
    await again.start()
    info = await again.wait()
    assert info.stderr_tail == ("run 2",)
    assert info.returncode == 2
    assert again.stderr_tail() == ["run 1", "run 2"]


async def test_exit_by_signal_is_seen_at_once(make_process: MakeProcess) -> None:
    """The grandchild keeps the log descriptors open: with pipes, wait() would hang here."""
    process = make_process([*BACKEND, "--spawn-grandchild"])
    pid = await process.start()
    grandchild = await grandchild_pid(process)
    with reaped_on_failure(grandchild):
        os.kill(pid, signal.SIGKILL)
        info = await asyncio.wait_for(process.wait(), timeout=5)
        assert info.signal == "SIGKILL"
        assert info.returncode is None
        assert info.describe() == "killed by SIGKILL"
        # The crashed child's group is cleaned up, so no orphan keeps its port.
        await await_until(lambda: not alive(grandchild), timeout=2, what="orphan killed")


async def test_wait_serves_several_tasks_and_survives_a_cancelled_waiter(
    make_process: MakeProcess,
) -> None:
    process = make_process([*BACKEND])
    pid = await process.start()
    await listening_port(process)  # its SIGTERM handler is installed by then
    cancelled = asyncio.create_task(process.wait())
    waiters = [asyncio.create_task(process.wait()) for _ in range(3)]
    await asyncio.sleep(0)  # let the waiters start waiting
    cancelled.cancel()
    os.kill(pid, signal.SIGTERM)
    results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
    assert len(set(results)) == 1
    assert results[0].returncode == 0  # the demo backend shuts down cleanly on SIGTERM


async def test_stop_terminates_gracefully(make_process: MakeProcess) -> None:
    process = make_process(BACKEND)
    await process.start()
    await listening_port(process)
    report = await process.stop_tree()
    info = report.exit
    assert info is not None and info.returncode == 0
    assert "received SIGTERM, shutting down" in info.stderr_tail
    assert not report.escalated  # SIGTERM was enough
    assert not process.running
    assert await process.stop() is None


async def test_stop_escalates_to_sigkill_after_the_grace(make_process: MakeProcess) -> None:
    process = make_process([*BACKEND, "--ignore-sigterm"], stop_timeout=0.3)
    pid = await process.start()
    await listening_port(process)  # the SIGTERM handler is installed by then
    started = time.monotonic()
    report = await process.stop_tree()
    elapsed = time.monotonic() - started
    info = report.exit
    assert info is not None and info.signal == "SIGKILL"
    assert report.escalated and report.after >= 0.3
    assert elapsed >= 0.3  # it waited the grace first
    assert not alive(pid)


@pytest.mark.parametrize("setsid", [False, True], ids=["in-group", "setsid"])
async def test_stop_leaves_no_grandchild(make_process: MakeProcess, setsid: bool) -> None:
    extra = ["--spawn-grandchild", "--grandchild-setsid"] if setsid else ["--spawn-grandchild"]
    process = make_process([*BACKEND, *extra])
    pid = await process.start()
    grandchild = await grandchild_pid(process)
    with reaped_on_failure(grandchild):
        assert alive(grandchild)
        assert (os.getpgid(grandchild) == pid) is not setsid
        assert grandchild in process.tree_pids()
        await listening_port(process)
        info = await process.stop()
        assert info is not None
        assert not alive(pid)
        assert not alive(grandchild)


async def test_stop_when_never_started_returns_none(make_process: MakeProcess) -> None:
    process = make_process(BACKEND)
    assert await process.stop() is None
    assert process.tree_pids() == []
    with pytest.raises(RuntimeError, match="never started"):
        await process.wait()


async def test_missing_executable_raises_start_error(make_process: MakeProcess) -> None:
    process = make_process(["/nonexistent/erp-backend", "--serve"])
    with pytest.raises(ProcessStartError, match=r"erp.*'/nonexistent/erp-backend'.*No such file"):
        await process.start()
    assert not process.running and process.pid is None


async def test_missing_cwd_raises_start_error(make_process: MakeProcess, tmp_path: Path) -> None:
    process = make_process([sys.executable, "-c", "pass"], cwd=tmp_path / "gone")
    with pytest.raises(ProcessStartError, match="gone"):
        await process.start()


async def test_start_twice_is_refused(make_process: MakeProcess) -> None:
    process = make_process(BACKEND)
    await process.start()
    with pytest.raises(RuntimeError, match="already running"):
        await process.start()


async def test_env_is_layered_over_ours(make_process: MakeProcess) -> None:
    script = "import os; print(os.environ['ERP_MODE'], 'PATH' in os.environ)"
    process = make_process([sys.executable, "-c", script], env={"ERP_MODE": "demo"})
    await process.start()
    assert (await process.wait()).returncode == 0
    assert process.stdout_path.read_text() == "demo True\n"


async def test_tree_pids_from_a_shared_ppid_map(make_process: MakeProcess) -> None:
    process = make_process([*BACKEND, "--spawn-grandchild"])
    pid = await process.start()
    grandchild = await grandchild_pid(process)
    with reaped_on_failure(grandchild):
        assert process.tree_pids(ppid_map()) == [pid, grandchild]
        assert process.tree_pids() == [pid, grandchild]


def test_tail_reads_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {n}\n" for n in range(50_000)) + "partial")
    assert tail_lines(path, 3) == ["line 49998", "line 49999", "partial"]
    assert tail_lines(path, 0) == []
    assert tail_lines(tmp_path / "missing.log", 5) == []


def test_tail_respects_the_start_offset(tmp_path: Path) -> None:
    path = tmp_path / "err.log"
    path.write_text("old 1\nold 2\nnew 1\n")
    assert tail_lines(path, 10, start=len("old 1\nold 2\n")) == ["new 1"]
    assert tail_lines(path, 10) == ["old 1", "old 2", "new 1"]


def test_rotation_keeps_numbered_backups(tmp_path: Path) -> None:
    process = ManagedProcess("erp", ["true"], log_dir=tmp_path, log_max_bytes=100, log_backups=2)
    for generation in "abc":
        process.stderr_path.write_text(generation * 150)
        process.stdout_path.write_text("small\n")
        process.rotate_logs()
        assert process.stderr_path.read_text() == ""
        assert process.stdout_path.read_text() == "small\n"  # under the limit: untouched
    backups = sorted(p.name for p in tmp_path.iterdir() if ".err.log." in p.name)
    assert backups == ["erp.err.log.1", "erp.err.log.2"]
    assert (tmp_path / "erp.err.log.1").read_text() == "c" * 150
    assert (tmp_path / "erp.err.log.2").read_text() == "b" * 150


async def test_rotation_under_a_writing_child_leaves_no_hole(make_process: MakeProcess) -> None:
    script = (
        "import sys, time\n"
        "print('x' * 2000, flush=True)\n"
        "for n in range(2000):\n"
        "    print(f'tick {n}', flush=True); time.sleep(0.005)\n"
    )
    process = make_process([sys.executable, "-c", script], log_max_bytes=1000, log_backups=1)
    await process.start()
    await stdout_match(process, r"tick 1\n")
    process.rotate_logs()
    backup = process.stdout_path.with_name("erp.out.log.1")
    assert backup.read_text().startswith("x" * 2000)
    await stdout_match(process, r"tick \d+\n")
    content = process.stdout_path.read_bytes()
    assert not content.startswith(b"\0"), "writes after the truncate must land at offset 0"
    assert len(content) < 1000
