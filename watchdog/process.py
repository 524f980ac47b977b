"""One managed child process.

CONTRACT:

    @dataclass(frozen=True)
    class ExitInfo:
        pid: int
        returncode: int | None      # exit status when it exited normally
        signal: str | None          # e.g. "SIGKILL" when killed by a signal
        stderr_tail: tuple[str, ...]
        def describe(self) -> str   # "exit code 3" / "killed by SIGKILL"

    class ManagedProcess:
        def __init__(self, name: str, argv: Sequence[str], *, log_dir: Path,
                     cwd: Path | None = None, env: Mapping[str, str] | None = None,
                     stop_timeout: float = 10.0, stderr_tail_lines: int = 20,
                     log_max_bytes: int = 10 MiB, log_backups: int = 5) -> None
        stdout_path, stderr_path: Path      # log_dir / f"{name}.out.log", f"{name}.err.log"
        pid: int | None; running: bool; started_at: float | None (monotonic)
        async def start(self) -> int
            # no shell; start_new_session=True; stdout/stderr appended to the log files (O_APPEND
            # fds, never pipes); raises ProcessStartError(message) if the executable is missing.
        async def wait(self) -> ExitInfo
            # returns as soon as the child exits (no polling); safe to call from several tasks
        async def stop(self) -> ExitInfo | None
            # snapshot the process tree (psutil children(recursive=True)) first, SIGTERM the
            # process group, wait stop_timeout, SIGKILL the group and every snapshotted
            # descendant still alive (also those that left the group via setsid); never leaves
            # a zombie. None when not running.
        def stderr_tail(self, lines: int | None = None) -> list[str]
        def rotate_logs(self) -> None   # copytruncate when over log_max_bytes (O_APPEND keeps
                                        # the child's writes correct)

ADDITIONS:

    ManagedProcess(..., clock: Clock | None = None)   # started_at / uptime() on this clock
        # (stop's grace period runs on real time: it waits for a real process)
    ManagedProcess.uptime() -> float | None
    ManagedProcess.exit_info: ExitInfo | None         # the last run's exit, once known
    ManagedProcess.tree_pids(ppids: Mapping[int, int] | None = None) -> list[int]
        # the child and its descendants; pass one `ppid_map()` to share a single /proc scan
        # between many targets in the same sampling round.
    ppid_map() -> dict[int, int]                      # pid -> parent pid of every process
    descendants(pid) -> list[int]                     # O(tree) via /proc/<pid>/task/*/children
    tail_lines(path, lines, start=0) -> list[str]     # the efficient tail behind stderr_tail

Behaviour worth knowing:
- ``env`` is layered over the watchdog's own environment (it does not replace it).
- The ExitInfo tail holds only what this run wrote to stderr; `stderr_tail()` reads the file.
- When the child exits on its own, what is left of its process group and any descendant seen
  before (by `stop` or `tree_pids`) is SIGKILLed at once, like systemd's
  KillMode=control-group, so an orphan cannot keep the backend's port for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal as signals
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from watchdog.clock import Clock, RealClock

MiB = 1024 * 1024
_TAIL_BLOCK = 8192
_TAIL_MAX_BYTES = MiB  # never read more than this from the end of a log for a tail
_REAP_GRACE = 1.0  # seconds to wait for SIGKILLed descendants to disappear
_POLL = 0.01  # only while stopping: descendants are not our children, we cannot wait() on them
_EXIT_POLL = 0.05  # only when no pidfd could be opened for the child
_KILL_WAIT = 5.0  # a SIGKILLed child that is still not reaped after this is an error


class ProcessStartError(RuntimeError):
    """The child could not be started (missing executable, bad cwd, permissions, EMFILE)."""


class ProcessStopError(RuntimeError):
    """The child did not go away even after SIGKILL."""


def _describe_os_error(exc: OSError) -> str:
    """ "EMFILE: Too many open files" — the errno's name makes the cause searchable."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or type(exc).__name__
    return f"{name}: {text}" if name else text


@dataclass(frozen=True)
class StopReport:
    """How a stop went: ``escalated`` when SIGTERM was not enough and SIGKILL was needed."""

    exit: ExitInfo | None
    escalated: bool
    after: float  # seconds from SIGTERM until the tree was gone


@dataclass(frozen=True)
class ExitInfo:
    pid: int
    returncode: int | None
    signal: str | None
    stderr_tail: tuple[str, ...] = ()

    @classmethod
    def from_returncode(cls, pid: int, returncode: int, stderr_tail: Sequence[str]) -> ExitInfo:
        """asyncio reports a death by signal N as returncode -N."""
        if returncode < 0:
            return cls(pid, None, _signal_name(-returncode), tuple(stderr_tail))
        return cls(pid, returncode, None, tuple(stderr_tail))

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {self.signal}"
        return f"exit code {self.returncode}"


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ppid_map() -> dict[int, int]:
    """pid → parent pid for every process on the host (one scan of /proc)."""
    result: dict[int, int] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if isinstance(ppid, int):
            result[proc.pid] = ppid
    return result


def _children_file_works() -> bool:
    me = os.getpid()
    return os.path.exists(f"/proc/{me}/task/{me}/children")


_HAS_CHILDREN_FILE = _children_file_works()


def descendants(pid: int) -> list[int]:
    """The descendants of ``pid``, breadth-first; raises psutil.NoSuchProcess if it is gone.

    On Linux this reads ``/proc/<pid>/task/*/children``: it costs O(size of the tree), where
    psutil's ``children()`` scans every process on the host. Many targets each taking a
    snapshot made that scan dominate erpwatch's CPU (O(targets x host processes)).
    """
    if not _HAS_CHILDREN_FILE:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    result: list[int] = []
    queue = [pid]
    for parent in queue:  # the list grows while we walk it
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            if parent == pid:
                raise psutil.NoSuchProcess(pid) from None
            continue  # a descendant that just went away
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as handle:
                    found = handle.read().split()
            except OSError:
                continue
            for child in found:
                child_pid = int(child)
                if child_pid not in result:
                    result.append(child_pid)
                    queue.append(child_pid)
    return result


def _is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (psutil's is_running also guards against pid reuse)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _send(proc: psutil.Process, sig: signals.Signals) -> None:
    # NoSuchProcess: it died meanwhile, which is what we want.
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)


def tail_lines(path: Path, lines: int, start: int = 0) -> list[str]:
    """The last ``lines`` lines of ``path`` at or after byte ``start``, reading from the end."""
    if lines <= 0:
        return []
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return []
    with handle:
        end = handle.seek(0, os.SEEK_END)
        floor = max(min(max(start, 0), end), end - _TAIL_MAX_BYTES)
        position = end
        data = b""
        while position > floor and data.count(b"\n") <= lines:
            step = min(_TAIL_BLOCK, position - floor)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    result = data.decode("utf-8", errors="replace").splitlines()
    if position > max(start, 0) and len(result) > lines:
        result = result[1:]  # the first line read may be cut in the middle
    return result[-lines:]


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stop_timeout: float = 10.0,
        stderr_tail_lines: int = 20,
        log_max_bytes: int = 10 * MiB,
        log_backups: int = 5,
        clock: Clock | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must name an executable")
        self.name = name
        self.argv = tuple(argv)
        self.log_dir = Path(log_dir)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.stop_timeout = stop_timeout
        self.stderr_tail_lines = stderr_tail_lines
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.stdout_path = self.log_dir / f"{name}.out.log"
        self.stderr_path = self.log_dir / f"{name}.err.log"
        self.pid: int | None = None
        self.started_at: float | None = None
        self.exit_info: ExitInfo | None = None
        self._clock: Clock = clock or RealClock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._exited: asyncio.Future[ExitInfo] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stop_lock = asyncio.Lock()
        self._stopping = False
        self._stderr_offset = 0  # where this run's stderr starts, for the exit tail
        # Descendants seen so far (by stop() or tree_pids()): those that left the group via
        # setsid cannot be found through the group once the child is gone.
        self._known: dict[int, psutil.Process] = {}

    @property
    def running(self) -> bool:
        return self._exited is not None and not self._exited.done()

    def uptime(self) -> float | None:
        if not self.running or self.started_at is None:
            return None
        return self._clock.now() - self.started_at

    async def start(self) -> int:
        """Spawn the child; any OSError (EMFILE, EACCES, a log it cannot open, ...) becomes a
        `ProcessStartError` naming what failed, and then no child is running."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        try:
            out_fd, err_fd = self._open_logs()
        except OSError as exc:
            raise ProcessStartError(
                f"cannot open the log files of {self.name}: {_describe_os_error(exc)}"
            ) from exc
        try:
            self._stderr_offset = os.fstat(err_fd).st_size
            env = {**os.environ, **self.env} if self.env is not None else None
            # Popen, not asyncio's subprocess: no pipes (gh-119710) and no child watcher whose
            # own failure (EMFILE opening a pidfd) would leave a child nobody waits for.
            # (asyncio's create_subprocess_exec runs the same Popen on the loop's thread.)
            proc = subprocess.Popen(  # noqa: ASYNC220
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            # filename is the executable, or the cwd when that is what is missing
            what = exc.filename if exc.filename is not None else self.argv[0]
            raise ProcessStartError(
                f"cannot start {self.name}: {what!r}: {_describe_os_error(exc)}"
            ) from exc
        except (ValueError, subprocess.SubprocessError) as exc:
            raise ProcessStartError(f"cannot start {self.name}: {exc}") from exc
        finally:
            os.close(out_fd)
            os.close(err_fd)
        self._popen = proc
        self.pid = proc.pid
        self.started_at = self._clock.now()
        self.exit_info = None
        self._known = {}
        self._exited = asyncio.get_running_loop().create_future()
        self._watch(proc, self._exited)
        return proc.pid

    def _open_logs(self) -> tuple[int, int]:
        """Append-only descriptors for the child's stdout and stderr (never pipes: gh-119710)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out_fd = os.open(self.stdout_path, flags, 0o644)
        try:
            return out_fd, os.open(self.stderr_path, flags, 0o644)
        except OSError:
            os.close(out_fd)
            raise

    def _watch(self, proc: subprocess.Popen[bytes], exited: asyncio.Future[ExitInfo]) -> None:
        """Be told of the exit by a pidfd in the event loop (no thread, no polling); if no
        pidfd can be had (EMFILE, old kernel), poll instead: the exit is never missed."""
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (OSError, AttributeError):
            self._poller = loop.create_task(
                self._poll_exit(proc, exited), name=f"erpwatch-exit-{self.name}"
            )
            return

        def readable() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if proc.poll() is None:  # cannot happen for a pidfd; be safe anyway
                self._poller = loop.create_task(self._poll_exit(proc, exited))
                return
            self._finish(proc, exited)

        try:
            loop.add_reader(pidfd, readable)
        except (OSError, ValueError):
            os.close(pidfd)
            self._poller = loop.create_task(self._poll_exit(proc, exited))

    async def _poll_exit(
        self, proc: subprocess.Popen[bytes], exited: asyncio.Future[ExitInfo]
    ) -> None:
        while proc.poll() is None:  # noqa: ASYNC110 - no pidfd: nothing to wait on
            await asyncio.sleep(_EXIT_POLL)
        self._finish(proc, exited)

    def _finish(self, proc: subprocess.Popen[bytes], exited: asyncio.Future[ExitInfo]) -> None:
        """The child is reaped: end what is left of its tree, read its stderr tail, report.

        Whatever fails here (psutil, the log file), the exit is reported."""
        returncode = proc.returncode if proc.returncode is not None else -signals.SIGKILL
        tail: list[str] = []
        try:
            if not self._stopping:
                self._kill_now(proc.pid, list(self._known.values()))
            tail = tail_lines(self.stderr_path, self.stderr_tail_lines, self._stderr_offset)
        except Exception as exc:  # never lose the exit over a cleanup fault
            tail = [f"(cleanup after the exit failed: {exc})"]
        finally:
            info = ExitInfo.from_returncode(proc.pid, returncode, tail)
            if self._popen is proc:
                self.exit_info = info
            if not exited.done():
                exited.set_result(info)

    async def wait(self) -> ExitInfo:
        if self._exited is None:
            raise RuntimeError(f"{self.name} was never started")
        # shield: one cancelled waiter must not cancel the future the others share
        return await asyncio.shield(self._exited)

    async def stop(self, grace: float | None = None) -> ExitInfo | None:
        """`stop_tree`, returning only the exit (None when it was not running)."""
        return (await self.stop_tree(grace)).exit

    async def stop_tree(self, grace: float | None = None) -> StopReport:
        """SIGTERM the tree, wait ``grace`` (default STOP_TIMEOUT), SIGKILL what is left.

        Raises OSError/psutil.Error when signalling fails for a reason other than the process
        being gone (the caller retries)."""
        grace = self.stop_timeout if grace is None else grace
        async with self._stop_lock:
            if self._exited is None or self._popen is None or not self.running:
                # Its group was killed when it exited; descendants seen before that left the
                # group may remain (psutil.Process objects are safe against pid reuse).
                await self._kill_and_reap(None, list(self._known.values()))
                return StopReport(None, escalated=False, after=0.0)
            pid = self._popen.pid
            self._stopping = True
            began = time.monotonic()
            try:
                descendants = self._snapshot(pid)
                deadline = began + grace
                self._signal_group(pid, signals.SIGTERM)
                for proc in descendants:  # also those that left the group with setsid
                    _send(proc, signals.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), grace)
                # Descendants get what is left of the grace period.
                await self._wait_gone(descendants, deadline)
                escalated = self.running or any(_is_alive(p) for p in descendants)
                await self._kill_and_reap(pid, descendants)
                try:
                    info = await asyncio.wait_for(self.wait(), _KILL_WAIT)
                except TimeoutError:
                    raise ProcessStopError(
                        f"{self.name} (pid {pid}) still there {_KILL_WAIT:g}s after SIGKILL"
                    ) from None
                return StopReport(info, escalated=escalated, after=time.monotonic() - began)
            finally:
                self._stopping = False

    def _snapshot(self, pid: int) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            self._remember(descendants(pid))
        return list(self._known.values())

    def _remember(self, pids: Sequence[int]) -> None:
        for pid in pids:
            if pid not in self._known:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self._known[pid] = psutil.Process(pid)

    @staticmethod
    def _signal_group(pgid: int, sig: signals.Signals) -> None:
        # pgid == the child's pid (start_new_session). The id stays reserved while any member
        # lives, so this is only called while the child is alive or has just been reaped.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def _kill_now(
        self, pgid: int | None, descendants: list[psutil.Process]
    ) -> list[psutil.Process]:
        """SIGKILL the group and every descendant still alive; returns the ones signalled."""
        if pgid is not None:
            self._signal_group(pgid, signals.SIGKILL)
        alive = [p for p in descendants if _is_alive(p)]
        for proc in alive:
            _send(proc, signals.SIGKILL)
        self._known = {}
        return alive

    async def _kill_and_reap(self, pgid: int | None, descendants: list[psutil.Process]) -> None:
        """`_kill_now`, then wait briefly until the killed descendants are really gone."""
        alive = self._kill_now(pgid, descendants)
        await self._wait_gone(alive, time.monotonic() + _REAP_GRACE)

    async def _wait_gone(self, procs: list[psutil.Process], deadline: float) -> None:
        # Polling, because they are not our children: no wait() and no exit notification.
        # Only runs while stopping, for a bounded time.
        while any(_is_alive(p) for p in procs) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)

    def tree_pids(self, ppids: Mapping[int, int] | None = None) -> list[int]:
        """The child and its descendants (for resource sampling); [] when not running."""
        if not self.running or self.pid is None:
            return []
        if ppids is None:
            try:
                children = descendants(self.pid)
            except psutil.NoSuchProcess:
                return []
            self._remember(children)
            return [self.pid, *children]
        by_parent: dict[int, list[int]] = {}
        for pid, parent in ppids.items():
            by_parent.setdefault(parent, []).append(pid)
        result = [self.pid]
        for pid in result:  # breadth-first: the list grows while we walk it
            result.extend(child for child in by_parent.get(pid, ()) if child not in result)
        return result

    def stderr_tail(self, lines: int | None = None) -> list[str]:
        return tail_lines(self.stderr_path, self.stderr_tail_lines if lines is None else lines)

    def rotate_logs(self) -> None:
        """Copy-truncate each log over ``log_max_bytes`` into ``name.1`` … ``name.N`` backups.

        The child keeps its O_APPEND descriptor, so after the truncate its next write lands at
        the new end of file instead of leaving a sparse hole. Lines written between the copy
        and the truncate are lost: the usual copytruncate trade-off. Copying a 10 MiB log
        blocks briefly; a caller on the event loop may run this in a thread.
        """
        for path in (self.stdout_path, self.stderr_path):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size <= self.log_max_bytes:
                continue
            if self.log_backups > 0:
                path.with_name(f"{path.name}.{self.log_backups}").unlink(missing_ok=True)
                for number in range(self.log_backups - 1, 0, -1):
                    backup = path.with_name(f"{path.name}.{number}")
                    if backup.exists():
                        backup.rename(path.with_name(f"{path.name}.{number + 1}"))
                shutil.copyfile(path, path.with_name(f"{path.name}.1"))
            with path.open("r+b") as handle:
                handle.truncate(0)
            if path == self.stderr_path:
                self._stderr_offset = 0
