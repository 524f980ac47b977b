"""ManagedProcess against real children (mostly the demo backend)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import await_until, tmpfs
from watchdog.demo.backend import CRASH_EXIT_CODE, CRASH_LINE
from watchdog.process import (
    TAIL_LINE_MAX,
    ExitInfo,
    LogFile,
    ManagedProcess,
    MiB,
    ProcessStartError,
    ppid_map,
    tail_lines,
)

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
        kwargs.setdefault("log_dir", tmp_path / "logs")
        process = ManagedProcess(name, argv, **kwargs)
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


def pipe_inode(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


@pytest.mark.parametrize("setsid", [False, True], ids=["in-group", "setsid-survivor"])
async def test_exit_by_signal_is_seen_at_once(make_process: MakeProcess, setsid: bool) -> None:
    """The grandchild holds the child's stdout/stderr pipes: exit is seen through the pidfd,
    never the pipes' EOF (gh-119710), so wait() returns although the pipe stays open. The
    setsid grandchild was never seen by erpwatch (no tree_pids, no stop, not a subreaper):
    it survives the crash, still holding the pipes, and blocks nothing."""
    extra = ["--spawn-grandchild", "--grandchild-setsid"] if setsid else ["--spawn-grandchild"]
    process = make_process([*BACKEND, *extra])
    pid = await process.start()
    grandchild = await grandchild_pid(process)
    with reaped_on_failure(grandchild):
        assert pipe_inode(grandchild, 1) == pipe_inode(pid, 1)
        assert pipe_inode(grandchild, 1).startswith("pipe:")
        os.kill(pid, signal.SIGKILL)
        info = await asyncio.wait_for(process.wait(), timeout=5)
        assert info.signal == "SIGKILL"
        assert info.returncode is None
        assert info.describe() == "killed by SIGKILL"
        if setsid:
            assert alive(grandchild)  # it holds the pipe and nothing waits for it
            assert pipe_inode(grandchild, 1).startswith("pipe:")
            # The next run starts regardless, with pipes of its own.
            again = await process.start()
            await await_until(
                lambda: process.stdout_path.read_text().count("GRANDCHILD") == 2,
                what="the second run's output",
            )
            assert pipe_inode(again, 1) != pipe_inode(grandchild, 1)
            os.kill(grandchild, signal.SIGKILL)
        else:
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
    report = await process.stop_tree()
    info = report.exit
    assert info is not None and info.signal == "SIGKILL"
    assert report.escalated  # SIGTERM was ignored: the grace ran out, then SIGKILL
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


# --- bounded logs: the writer ---------------------------------------------------------------


def files_of(path: Path) -> list[Path]:
    """``path`` and its numbered backups, oldest first."""
    backups = sorted(path.parent.glob(f"{path.name}.*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, path] if path.exists() else backups


def test_log_file_rotates_by_rename_at_line_ends(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "x.log", max_bytes=100, backups=2)
    log.open()
    for n in range(12):
        log.write(f"line {n:02d} {'.' * 30}\n".encode())  # 41 bytes: two fit in a file
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x.log", "x.log.1", "x.log.2"]  # the oldest ones were unlinked
    for path in files_of(tmp_path / "x.log"):
        assert path.stat().st_size <= 100
        assert path.read_bytes().endswith(b"\n")  # never cut inside a line
    text = "".join(p.read_text() for p in files_of(tmp_path / "x.log"))
    assert [line[:7] for line in text.splitlines()] == [f"line {n:02d}" for n in range(6, 12)]


def test_log_file_cuts_at_the_last_line_end_that_fits_in_one_write(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "x.log", max_bytes=100, backups=1)
    log.open()
    log.write(b"a" * 39 + b"\n" + b"b" * 39 + b"\n" + b"c" * 39 + b"\n")
    assert (tmp_path / "x.log.1").read_bytes() == b"a" * 39 + b"\n" + b"b" * 39 + b"\n"
    assert (tmp_path / "x.log").read_bytes() == b"c" * 39 + b"\n"


def test_log_file_cuts_a_line_longer_than_a_whole_file(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "x.log", max_bytes=100, backups=1)
    log.open()
    log.write(b"z" * 250)
    assert (tmp_path / "x.log.1").stat().st_size == 100
    assert (tmp_path / "x.log").stat().st_size == 50


def test_log_file_without_backups_starts_afresh(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "x.log", max_bytes=100, backups=0)
    log.open()
    for n in range(10):
        log.write(f"{n} {'-' * 40}\n".encode())
    assert [p.name for p in tmp_path.iterdir()] == ["x.log"]
    content = (tmp_path / "x.log").read_text()
    assert len(content) <= 100 and content.startswith("8 ") and "9 " in content


def test_log_file_on_a_full_disk_drops_counts_rotates_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC simulated in the writer only: never raised; the data is dropped and counted;
    rotation goes on (the oldest backup is unlinked, which is what frees space); once writing
    works again, one line in the file says how much was lost."""
    disk_full = False
    real_write = LogFile._raw_write

    def write(fd: int, data: memoryview) -> int:
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(LogFile, "_raw_write", staticmethod(write))
    reports: list[str] = []
    log = LogFile(tmp_path / "x.log", max_bytes=1000, backups=2, report=reports.append)
    log.open()
    for n in range(6):
        log.write(f"before {n} {'.' * 290}\n".encode())  # 300 bytes each: 3 per file
    assert (tmp_path / "x.log.1").read_text().startswith("before 0")
    disk_full = True
    for n in range(10):
        log.write(f"lost {n} {'.' * 292}\n".encode())
    assert log.dropped_total == 3000
    # Rotation went on while nothing could be written: the old data was unlinked.
    assert "before" not in "".join(p.read_text() for p in files_of(tmp_path / "x.log"))
    assert reports == [
        f"{tmp_path / 'x.log'}: cannot write (ENOSPC: No space left on device); dropping output"
    ]
    disk_full = False
    log.write(b"back again\n")
    text = "".join(p.read_text() for p in files_of(tmp_path / "x.log"))
    assert text.endswith(
        "[erpwatch] 3000 bytes of output dropped (ENOSPC: No space left on device)\nback again\n"
    )
    assert len(reports) == 2 and "writing again" in reports[1]
    log.write(b"and more\n")
    assert (tmp_path / "x.log").read_text().endswith("back again\nand more\n")
    assert log.dropped_total == 3000


# --- bounded logs: real children --------------------------------------------------------------

FLOOD = r"""
import sys
line = b"x" * 99 + b"\n"
block = line * 10486  # ~1 MiB
out = sys.stdout.buffer
for _ in range(int(sys.argv[1])):
    out.write(block)
sys.stderr.write("flood done\n")
out.write(b"END\n")
out.flush()
"""


class DirSampler:
    """Samples a directory's total size from a thread (really concurrently with the loop's
    callbacks, so a moment inside a rotation is seen too) and keeps the peak."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peak_size = 0  # sum of st_size
        self.peak_disk = 0  # sum of allocated blocks
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DirSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            size = disk = 0
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.path):
                    with contextlib.suppress(FileNotFoundError):
                        stat = entry.stat()
                        size += stat.st_size
                        disk += stat.st_blocks * 512
            self.peak_size = max(self.peak_size, size)
            self.peak_disk = max(self.peak_disk, disk)
            self.samples += 1


async def test_fast_child_logs_stay_within_the_bound(
    make_process: MakeProcess, tmp_path: Path
) -> None:
    """~110 MB as fast as the child can write, LOG_MAX_BYTES 1 MiB, 2 backups: the log
    directory never holds more than 1 MiB x 3 (+ 1 MiB slack), the child is never blocked,
    and the event loop keeps running other tasks meanwhile."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    process = make_process(
        [sys.executable, "-c", FLOOD, "105"], log_dir=log_dir, log_max_bytes=MiB, log_backups=2
    )
    bound = MiB * (2 + 1) + MiB
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    with DirSampler(log_dir) as sampler:
        other = asyncio.create_task(other_task())
        try:
            await process.start()
            info = await asyncio.wait_for(process.wait(), timeout=60)
        finally:
            other.cancel()
        await await_until(lambda: sampler.samples > 0, what="a sample")
    print(
        f"log dir peak: {sampler.peak_size} bytes ({sampler.peak_disk} on disk), "
        f"{sampler.samples} samples, {turns} turns of another task"
    )
    assert info.returncode == 0 and info.stderr_tail == ("flood done",)
    assert sampler.peak_size <= bound and sampler.peak_disk <= bound
    assert turns > 10  # the loop was not starved by the reading
    out = process.stdout_path
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "erp.err.log",
        "erp.out.log",
        "erp.out.log.1",
        "erp.out.log.2",
    ]
    for path in files_of(out):
        assert path.stat().st_size <= MiB
        assert path.read_bytes().endswith(b"\n")
    assert out.read_bytes().endswith(b"\nEND\n")
    assert process.dropped_log_bytes == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs (needs root), unmounted afterwards."""
    with tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up, then give back about ``leave`` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, chunk)
        size = os.fstat(fd).st_size
        os.ftruncate(fd, max(size - leave, 0))
    finally:
        os.close(fd)
    return filler


PHASES = r"""
import os, sys, time
state = sys.argv[1]
out = sys.stdout.buffer
block = (b"y" * 99 + b"\n") * 1000
for _ in range(160):  # 16 MB into 2.5 MiB of free space
    out.write(block)
out.write(b"PHASE1 END\n")
out.flush()
open(os.path.join(state, "phase1"), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(state, "go")):
    if time.monotonic() > deadline:
        sys.exit(9)
    time.sleep(0.01)
for n in range(100):
    out.write(b"after %d\n" % n)
out.write(b"END\n")
out.flush()
"""
NOTICE = re.compile(rb"\[erpwatch\] (\d+) bytes of output dropped \(ENOSPC: [^)]*\)\n")


async def test_full_disk_drops_output_then_writing_resumes(
    make_process: MakeProcess, small_disk: Path, tmp_path: Path
) -> None:
    """A real full disk: the child is never blocked, what cannot be written is dropped and
    counted, rotation frees space (the oldest backup), writing resumes and says how much was
    lost; after the disk is freed, everything lands."""
    state = tmp_path / "state"
    state.mkdir()
    filler = fill(small_disk, leave=5 * MiB // 2)
    process = make_process(
        [sys.executable, "-c", PHASES, str(state)],
        log_dir=small_disk,
        log_max_bytes=MiB,
        log_backups=2,
    )
    await process.start()
    # Never blocked: the child gets through 16 MB although only 2.5 MiB fit.
    await await_until(lambda: (state / "phase1").exists(), timeout=30, what="phase 1 done")
    await await_until(lambda: process.dropped_log_bytes > 0, what="dropped bytes counted")

    def notices() -> list[int]:
        text = b"".join(p.read_bytes() for p in files_of(process.stdout_path))
        return [int(n) for n in NOTICE.findall(text)]

    # Rotation unlinked the oldest backup: space came back (while the disk is still full of
    # the filler) and a line in the log says how much had been dropped.
    await await_until(notices, what="a dropped-bytes notice while the disk is full")
    assert all(n > 0 for n in notices())
    dropped_while_full = process.dropped_log_bytes
    filler.unlink()
    (state / "go").touch()
    info = await asyncio.wait_for(process.wait(), timeout=30)
    assert info.returncode == 0
    current = process.stdout_path.read_bytes()
    assert current.endswith(b"after 99\nEND\n")
    assert b"after 0\n" in current
    assert process.dropped_log_bytes == dropped_while_full  # nothing lost once freed
    assert sum(notices()) <= dropped_while_full
    for path in files_of(process.stdout_path):
        assert path.stat().st_size <= MiB


# --- the exit tail ------------------------------------------------------------------------------


async def test_a_huge_stderr_line_is_cut_in_the_exit_tail(make_process: MakeProcess) -> None:
    script = (
        "import sys\n"
        "sys.stderr.write('E' * (2 * 1024 * 1024) + '\\n')\n"
        "sys.stderr.write('dying\\n')\n"
        "sys.stderr.write('U' * (2 * 1024 * 1024))\n"  # unterminated at the crash
        "sys.stderr.flush()\n"
        "sys.exit(3)\n"
    )
    process = make_process([sys.executable, "-c", script])
    await process.start()
    info = await process.wait()
    assert info.returncode == 3
    assert info.stderr_tail == ("E" * TAIL_LINE_MAX + "…", "dying", "U" * TAIL_LINE_MAX + "…")
    assert all(len(line) <= TAIL_LINE_MAX + 1 for line in info.stderr_tail)
    assert process.stderr_path.stat().st_size == 4 * MiB + 7  # the file has everything
    assert all(len(line) <= TAIL_LINE_MAX + 1 for line in process.stderr_tail())


async def test_exit_tail_keeps_the_last_lines_of_a_flood(make_process: MakeProcess) -> None:
    script = "import sys\nfor n in range(200000): print('err', n, file=sys.stderr)\nsys.exit(1)"
    process = make_process([sys.executable, "-c", script], stderr_tail_lines=3)
    await process.start()
    info = await process.wait()
    assert info.stderr_tail == ("err 199997", "err 199998", "err 199999")


async def test_no_descriptor_is_held_between_runs(make_process: MakeProcess) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    process = make_process([sys.executable, "-c", "print('hi')"])
    before = open_fds()
    await process.start()
    assert open_fds() > before  # pipes, log files, pidfd
    await process.wait()
    await await_until(lambda: open_fds() == before, timeout=5, what="descriptors closed")
    assert process.stdout_path.read_text() == "hi\n"


# --- the environment ------------------------------------------------------------------------


def environ_of(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return handle.read()


async def test_child_environment_has_the_marker_and_extras_but_not_our_secrets(
    make_process: MakeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERPWATCH_SMTP_PASSWORD", "hunter2-pw")
    monkeypatch.setenv("ERPWATCH_STATUS_TOKEN", "tok-123456")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    script = "import time; print('up', flush=True); time.sleep(60)"
    extra = {"ERP_MODE": "demo", "ERPWATCH_TARGET": "spoofed"}
    process = make_process([sys.executable, "-c", script], env=extra)
    pid = await process.start()
    await stdout_match(process, "up")
    raw = environ_of(pid)
    environ = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    assert "ERPWATCH_SMTP_PASSWORD" not in environ and "hunter2-pw" not in raw.decode()
    assert "ERPWATCH_STATUS_TOKEN" not in environ and "NOTIFY_SOCKET" not in environ
    assert environ["ERPWATCH_TARGET"] == "erp"  # the marker cannot be overridden
    assert environ["ERP_MODE"] == "demo"
    assert environ["PATH"] == os.environ["PATH"]
    assert [key for key in environ if key.startswith("ERPWATCH_")] == ["ERPWATCH_TARGET"]
