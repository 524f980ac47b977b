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
            # no shell; start_new_session=True; stdout/stderr are pipes that erpwatch reads in
            # the event loop into bounded, rotated log files (`LogFile`); raises
            # ProcessStartError(message) if the executable is missing (or EMFILE, ...).
        async def wait(self) -> ExitInfo
            # returns as soon as the child exits (pidfd, never the pipes' EOF); safe to call
            # from several tasks
        async def stop(self) -> ExitInfo | None
            # snapshot the process tree first, SIGTERM the process group, wait stop_timeout,
            # SIGKILL the group and every snapshotted descendant still alive (also those that
            # left the group via setsid, and escaped daemons, see below); never leaves a
            # zombie. None when not running.
        def stderr_tail(self, lines: int | None = None) -> list[str]
        def rotate_logs(self) -> None   # a no-op: the writer rotates (kept for the protocol)

ADDITIONS:

    ManagedProcess(..., clock: Clock | None = None)   # started_at / uptime() on this clock
        # (stop's grace period runs on real time: it waits for a real process)
    ManagedProcess.uptime() -> float | None
    ManagedProcess.exit_info: ExitInfo | None         # the last run's exit, once known
    ManagedProcess.tree_pids(ppids: Mapping[int, int] | None = None) -> list[int]
        # the child, its descendants and its escaped processes; pass one `ppid_map()` to
        # share a single /proc scan between many targets in the same sampling round.
    ManagedProcess.escaped() -> list[psutil.Process]
        # processes of this target that left its tree (double-forked daemons re-parented to
        # erpwatch as the subreaper, see `watchdog.reaper`), by their marker or, without
        # one (``setsid env -i``), by the output pipe they hold; and their descendants
    ManagedProcess.dropped_log_bytes -> int           # output lost to write errors (ENOSPC)
    ppid_map() -> dict[int, int]                      # pid -> parent pid of every process
    descendants(pid) -> list[int]                     # O(tree) via /proc/<pid>/task/*/children
    tail_lines(path, lines, start=0) -> list[str]     # the efficient tail behind stderr_tail
    child_environment(name, extra=None) -> dict[str, str]
    LogFile(path, max_bytes, backups, report=None)    # the bounded writer (also erpwatch's log)

Behaviour worth knowing:
- The environment: erpwatch's own, without ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``/``_PID``
  and every ``ERPWATCH_*`` variable (they hold secrets: SMTP password, status token); then
  ``env`` (the target's extra variables); then the marker ``ERPWATCH_TARGET=<name>``.
- Logs: a file and its backups hold at most ``log_max_bytes * (log_backups + 1)`` bytes per
  stream, at any output rate. Rotation renames ``name.log`` → ``.1`` → … → ``.N`` (the oldest
  unlinked) before a write would cross ``log_max_bytes``, cutting at a line end when one fits.
  A write that fails (ENOSPC) drops the data and counts it, never blocks the child nor raises;
  rotation goes on (unlinking the oldest frees space) and once writing works again one line
  ``[erpwatch] N bytes of output dropped (ENOSPC: ...)`` says what was lost.
- Each wake of the event loop reads at most `READ_CHUNK` bytes from a pipe, so a child
  writing 100 MB/s cannot starve the loop. On exit the pipes are drained (non-blocking,
  bounded) before the ExitInfo is built; a grandchild still holding them blocks nothing.
- The ExitInfo tail holds only this run's stderr, kept in memory: the last
  ``stderr_tail_lines`` lines, each cut at `TAIL_LINE_MAX` bytes plus "…". `stderr_tail()`
  reads the file.
- When the child exits on its own, what is left of its process group, any descendant seen
  before (by `stop` or `tree_pids`) and every escaped process is SIGKILLed at once, like
  systemd's KillMode=control-group, so an orphan cannot keep the backend's port for the next
  start; a sweep repeats that until nothing of the target is left (at most `_REAP_GRACE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal as signals
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from watchdog import reaper
from watchdog.clock import Clock, RealClock

log = logging.getLogger(__name__)

MiB = 1024 * 1024
READ_CHUNK = 256 * 1024  # at most this much is read from a pipe per wake of the loop
TAIL_LINE_MAX = 4096  # bytes of one stderr line kept for an exit tail; longer ones get "…"
_DRAIN_MAX = 4 * MiB  # read from the pipes at an exit, at most (a writing grandchild)
# A pipe found full is grown to this (once), for fewer wakes. Not more: pipe buffers count
# against the user's pipe-user-pages-soft (16384 pages by default), shared with the targets.
_PIPE_MAX = READ_CHUNK
_TAIL_BLOCK = 8192
_TAIL_MAX_BYTES = MiB  # never read more than this from the end of a log for a tail
_REAP_GRACE = 1.0  # seconds to wait for SIGKILLed descendants to disappear
_POLL = 0.01  # only while stopping: descendants are not our children, we cannot wait() on them
_EXIT_POLL = 0.05  # only when no pidfd could be opened for the child
_KILL_WAIT = 5.0  # a SIGKILLed child that is still not reaped after this is an error
_ESCAPED_MAX_AGE = 0.5  # seconds a scan for escaped processes serves `tree_pids`
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
# Never inherited: systemd's per-service variables and erpwatch's own settings (secrets).
_NOT_INHERITED = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
_OWN_PREFIX = "ERPWATCH_"
_ELLIPSIS = "…"


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


def inherited_environment() -> dict[str, str]:
    """erpwatch's environment without its own variables (secrets) and systemd's."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_OWN_PREFIX) and key not in _NOT_INHERITED
    }


def child_environment(name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What target ``name`` inherits: `inherited_environment`, then ``extra``, then
    ``ERPWATCH_TARGET=<name>`` (which nothing overrides: it is how escaped processes are
    proven to be this target's)."""
    env = inherited_environment()
    env.update(extra or {})
    env[reaper.MARKER] = name
    return env


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """``proc``'s exit status, told by a pidfd in the event loop: never by its pipes' EOF,
    which a process it left behind can hold open (gh-119710). Polls when no pidfd can be
    had (EMFILE, an old kernel)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        pidfd = None
    if pidfd is not None:
        try:
            readable: asyncio.Future[None] = loop.create_future()

            def told() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(pidfd, told)
            try:
                await readable
            finally:
                loop.remove_reader(pidfd)
        except (OSError, ValueError):
            pass  # not pollable here: fall back to polling below
        finally:
            os.close(pidfd)
    while proc.poll() is None:  # noqa: ASYNC110 - no pidfd: nothing to wait on
        await asyncio.sleep(_EXIT_POLL)
    return proc.returncode


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


def _read_small(path: str) -> bytes:
    """A whole /proc file, with bare os calls: half the CPU of ``open().read()``, and every
    monitor reads its child's tree on every round (1000 targets: thousands a second)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _walk(pid: int) -> list[tuple[int, int]]:
    """(descendant, its parent) pairs below ``pid``, breadth-first; raises
    psutil.NoSuchProcess if ``pid`` is gone."""
    if not _HAS_CHILDREN_FILE:
        return [(child.pid, child.ppid()) for child in psutil.Process(pid).children(True)]
    result: list[tuple[int, int]] = []
    seen: set[int] = set()
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
                found = _read_small(f"/proc/{parent}/task/{tid}/children").split()
            except OSError:
                continue
            for child in found:
                child_pid = int(child)
                if child_pid not in seen:
                    seen.add(child_pid)
                    result.append((child_pid, parent))
                    queue.append(child_pid)
    return result


def descendants(pid: int) -> list[int]:
    """The descendants of ``pid``, breadth-first; raises psutil.NoSuchProcess if it is gone.

    On Linux this reads ``/proc/<pid>/task/*/children``: it costs O(size of the tree), where
    psutil's ``children()`` scans every process on the host. Many targets each taking a
    snapshot made that scan dominate erpwatch's CPU (O(targets x host processes)).
    """
    return [child for child, _parent in _walk(pid)]


def is_alive(proc: psutil.Process) -> bool:
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


def _cap(line: str) -> str:
    encoded = line.encode("utf-8", errors="replace")
    if len(encoded) <= TAIL_LINE_MAX:
        return line
    return encoded[:TAIL_LINE_MAX].decode("utf-8", errors="replace") + _ELLIPSIS


# --- the bounded log writer ---------------------------------------------------------------


class LogFile:
    """An append-only log file bounded to ``max_bytes * (backups + 1)`` bytes, rotated by its
    writer; `write` never raises and never blocks on a full disk (see the module doc).

    ``report`` is told (once per episode) when writing starts failing and when it works
    again; erpwatch's own log handler passes none (it must not log about itself).
    Not thread-safe: one writer (the event loop, or a logging handler under its lock).
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        backups: int,
        *,
        report: Callable[[str], None] | None = None,
    ) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("need max_bytes >= 1 and backups >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped_total = 0  # bytes of data lost to write errors since creation
        self._report = report
        self._fd: int | None = None
        self._size = 0  # bytes in the current file
        self._used = 0  # those plus what was dropped since it was started: drives rotation
        self._pending = 0  # dropped and not yet reported in the file
        self._failing: str | None = None  # the error of the current episode
        self._at_line_start = True

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Open (create) the current file for appending; raises OSError. No-op when open."""
        if self._fd is not None:
            return
        fd = os.open(self.path, _APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size, self._used = fd, size, size
        self._at_line_start = True

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating first when it would cross ``max_bytes``; what cannot be
        written is dropped and counted."""
        if not data:
            return
        self._follow_path()
        if self._pending and (self._fd is not None or self._reopen()):
            count, self._pending = self._pending, 0
            if self._put(self._notice(count), counted=False):
                if self._report is not None:  # the same text each time: repeats are limited
                    self._report(f"{self.path}: writing again (the file says what was dropped)")
                self._failing = None
            else:
                self._pending += count
        self._put(data)
        if not self._pending:
            self._failing = None  # e.g. a failed rename: nothing was lost

    def _follow_path(self) -> None:
        """The open file was deleted (``rm -rf LOG_PATH``): writing on would fill a file
        nobody can read, holding its space, until ``max_bytes``. Close it (said once), so
        the write starts a new file at the path, making the directory again. One fstat a
        write, which is one read of the pipe (up to `READ_CHUNK` bytes)."""
        fd = self._fd
        if fd is None:
            return
        try:
            deleted = os.fstat(fd).st_nlink == 0
        except OSError:
            return
        if deleted:
            self.close()
            self._size = self._used = 0
            self._at_line_start = True
            if self._report is not None:
                self._report(f"{self.path}: deleted while open; writing a new file")

    def _notice(self, count: int) -> bytes:
        lead = "" if self._at_line_start else "\n"
        why = f" ({self._failing})" if self._failing else ""
        return f"{lead}[erpwatch] {count} bytes of output dropped{why}\n".encode()

    def _put(self, data: bytes, *, counted: bool = True) -> bool:
        """Write all of ``data`` (rotating on the way); False when some was dropped."""
        view = memoryview(data)
        pos, end, ok = 0, len(data), True
        while pos < end:
            room = self.max_bytes - self._used
            take = end - pos
            if take > room:
                cut = data.rfind(b"\n", pos, pos + room) if room > 0 else -1
                if cut >= 0:
                    take = cut + 1 - pos  # up to a line end, then rotate
                elif self._used > 0:
                    self._rotate()
                    if self._used > 0:  # could not start a fresh file: keep the bound
                        self._drop(end - pos, counted)
                        return False
                    continue
                else:
                    take = room  # one line longer than a whole file: cut it
            self._used += take
            ok = self._emit(view[pos : pos + take], counted) and ok
            pos += take
        return ok

    def _emit(self, chunk: memoryview, counted: bool) -> bool:
        if self._fd is None and not self._reopen():
            self._drop(len(chunk), counted)
            return False
        fd = self._fd
        assert fd is not None
        done = 0
        try:
            while done < len(chunk):
                written = self._raw_write(fd, chunk[done:])
                if written <= 0:
                    raise OSError(errno.EIO, "write returned nothing")
                done += written
        except OSError as exc:
            self._failed(exc)
        if done:
            self._size += done
            self._at_line_start = chunk[done - 1] == 0x0A
        if done < len(chunk):
            self._drop(len(chunk) - done, counted)
            return False
        return True

    @staticmethod
    def _raw_write(fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def _drop(self, count: int, counted: bool) -> None:
        if counted:
            self._pending += count
            self.dropped_total += count

    def _failed(self, exc: OSError) -> None:
        if self._failing is None:
            self._failing = _describe_os_error(exc)
            if self._report is not None:
                self._report(f"{self.path}: cannot write ({self._failing}); dropping output")

    def _reopen(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.open()
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _backup(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")

    def _rotate(self) -> None:
        """Start a fresh current file: unlink the oldest backup (that frees space even on a
        full disk), shift the others up, rename the current one to ``.1``. No backups: the
        file is emptied. Errors are recorded, never raised; the bound holds either way."""
        self._at_line_start = True
        if self.backups > 0:
            self.close()
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._backup(self.backups))
                for number in range(self.backups - 1, 0, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(self._backup(number), self._backup(number + 1))
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.path, self._backup(1))
            except OSError as exc:
                self._failed(exc)
            self._size = self._used = 0
            if not self._reopen() or self._size == 0:
                return
        # No backups, or the rename failed and the old file was opened again: empty it.
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                self._size = self._used = 0
                return
            except OSError as exc:
                self._failed(exc)
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._size = self._used = 0
        self._reopen()


class _LineTail:
    """The last ``lines`` lines fed to it, each cut at `TAIL_LINE_MAX` bytes (plus "…"): its
    size is bounded whatever the child prints."""

    def __init__(self, lines: int) -> None:
        self._want = max(lines, 0)
        self._lines: deque[tuple[bytes, bool]] = deque(maxlen=self._want)
        self._partial = bytearray()
        self._cut = False

    def feed(self, data: bytes) -> None:
        if self._want == 0 or not data:
            return
        first = data.find(b"\n")
        if first < 0:
            self._extend(data)
            return
        self._extend(memoryview(data)[:first])
        self._push()
        last = data.rfind(b"\n")
        if last > first:
            # Only the last `_want` lines can matter: split just those off the right.
            parts = data[first + 1 : last].rsplit(b"\n", self._want)
            if len(parts) > self._want:
                parts = parts[1:]
            for part in parts:
                self._lines.append(self._capped(part))
        self._extend(memoryview(data)[last + 1 :])

    def _extend(self, piece: bytes | memoryview) -> None:
        if self._cut or not len(piece):
            return
        room = TAIL_LINE_MAX - len(self._partial)
        if len(piece) > room:
            self._partial += piece[:room]
            self._cut = True
        else:
            self._partial += piece

    def _push(self) -> None:
        self._lines.append((bytes(self._partial), self._cut))
        self._partial = bytearray()
        self._cut = False

    @staticmethod
    def _capped(line: bytes) -> tuple[bytes, bool]:
        if len(line) > TAIL_LINE_MAX:
            return line[:TAIL_LINE_MAX], True
        return line, False

    def lines(self) -> list[str]:
        items = list(self._lines)
        if self._partial or self._cut:
            items.append((bytes(self._partial), self._cut))
        result = []
        for raw, cut in items[-self._want :] if self._want else []:
            text = raw.decode("utf-8", errors="replace")
            result.append(text + _ELLIPSIS if cut else text.removesuffix("\r"))
        return result


class _PipeReader:
    """Reads the parent's end of one of the child's output pipes in the event loop into a
    `LogFile` (and an exit tail): one bounded read per wake, never blocking, never raising
    into the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        sink: LogFile,
        tail: _LineTail | None,
        on_closed: Callable[[_PipeReader], None],
    ) -> None:
        self._loop = loop
        self._fd: int | None = fd
        self.sink = sink
        self.tail = tail
        self._on_closed = on_closed
        self._grown = False
        self._complained = False
        os.set_blocking(fd, False)
        try:
            self._capacity = fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032))
        except OSError:
            self._capacity = 65536
        loop.add_reader(fd, self._read_once)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _read_once(self) -> int:
        """One read: bytes read, 0 when nothing was waiting, -1 once closed (EOF)."""
        fd = self._fd
        if fd is None:
            return -1
        try:
            data = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self.close()
            return -1
        if not data:
            self.close()
            return -1
        try:
            self.sink.write(data)
            if self.tail is not None:
                self.tail.feed(data)
        except Exception:  # a bug here must not stop the reading: the child would block
            if not self._complained:
                self._complained = True
                log.exception("writing the output of %s failed", self.sink.path)
        if len(data) >= self._capacity and not self._grown:
            self._grow(fd)
        return len(data)

    def _grow(self, fd: int) -> None:
        """A full pipe: a busy writer. Fewer, larger reads from now on (best effort; only
        busy pipes grow, so the user's pipe-buffer quota is not spent on quiet ones)."""
        self._grown = True
        with contextlib.suppress(OSError):
            self._capacity = fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_MAX)

    def drain(self, limit: int) -> None:
        """Read what is waiting, up to ``limit`` bytes, without blocking."""
        total = 0
        while total < limit:
            got = self._read_once()
            if got <= 0:
                return
            total += got

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        self._on_closed(self)


# --- the managed process --------------------------------------------------------------------


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
        marker: str | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must name an executable")
        self.name = name
        # ERPWATCH_TARGET's value: the name, made unique per erpwatch instance by the caller
        # (two erpwatch on one host may both have a "backend").
        self.marker = marker or name
        self.argv = tuple(argv)
        self.log_dir = Path(log_dir)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None  # extra variables for this target
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
        self._sweeper: asyncio.Task[None] | None = None
        self._stop_lock = asyncio.Lock()
        self._stopping = False
        self._out_log = LogFile(self.stdout_path, log_max_bytes, log_backups, report=log.warning)
        self._err_log = LogFile(self.stderr_path, log_max_bytes, log_backups, report=log.warning)
        self._readers: list[_PipeReader] = []
        self._tail = _LineTail(stderr_tail_lines)
        # Descendants seen so far (by stop() or tree_pids()): those that left the group via
        # setsid cannot be found through the group once the child is gone.
        self._known: dict[int, psutil.Process] = {}
        # The inodes of the last run's output pipes: whoever holds one is this target's
        # (an escapee without the marker, see `reaper.holding`).
        self._pipes: frozenset[int] = frozenset()

    @property
    def running(self) -> bool:
        return self._exited is not None and not self._exited.done()

    @property
    def dropped_log_bytes(self) -> int:
        """Bytes of the child's output lost because they could not be written (ENOSPC)."""
        return self._out_log.dropped_total + self._err_log.dropped_total

    def uptime(self) -> float | None:
        if not self.running or self.started_at is None:
            return None
        return self._clock.now() - self.started_at

    async def start(self) -> int:
        """Spawn the child; any OSError (EMFILE, EACCES, a log it cannot open, ...) becomes a
        `ProcessStartError` naming what failed, and then no child is running."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        if self._sweeper is not None:
            # The previous run's leftovers go first (bounded by _REAP_GRACE).
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for reader in list(self._readers):
            reader.close()  # the previous run's pipes, held open by something it left
        try:
            self._open_logs()
        except OSError as exc:
            raise ProcessStartError(
                f"cannot open the log files of {self.name}: {_describe_os_error(exc)}"
            ) from exc
        tail = _LineTail(self.stderr_tail_lines)
        writers: list[int] = []
        try:
            try:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                writers.append(out_w)
                self._attach(out_r, self._out_log, None)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                writers.append(err_w)
                self._attach(err_r, self._err_log, tail)
                pipes = frozenset(os.fstat(fd).st_ino for fd in (out_r, err_r))
            except OSError as exc:
                raise ProcessStartError(
                    f"cannot create the output pipes of {self.name}: {_describe_os_error(exc)}"
                ) from exc
            # Popen, not asyncio's subprocess: no child watcher whose own failure (EMFILE
            # opening a pidfd) would leave a child nobody waits for, and the exit is seen
            # through a pidfd, never through the pipes' EOF (gh-119710).
            # (asyncio's create_subprocess_exec runs the same Popen on the loop's thread.)
            proc = subprocess.Popen(  # noqa: ASYNC220
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=self.cwd,
                env=child_environment(self.marker, self.env),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            self._abandon_start()
            # filename is the executable, or the cwd when that is what is missing
            what = exc.filename if exc.filename is not None else self.argv[0]
            raise ProcessStartError(
                f"cannot start {self.name}: {what!r}: {_describe_os_error(exc)}"
            ) from exc
        except (ValueError, subprocess.SubprocessError) as exc:
            self._abandon_start()
            raise ProcessStartError(f"cannot start {self.name}: {exc}") from exc
        except BaseException:
            self._abandon_start()
            raise
        finally:
            for fd in writers:
                os.close(fd)
        reaper.claim(proc.pid)  # before any await: the stray reaper must never take it
        self._popen = proc
        self.pid = proc.pid
        self.started_at = self._clock.now()
        self.exit_info = None
        self._known = {}
        self._pipes = pipes
        self._tail = tail
        self._exited = asyncio.get_running_loop().create_future()
        self._watch(proc, self._exited)
        return proc.pid

    def _open_logs(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._out_log.open()
        try:
            self._err_log.open()
        except OSError:
            self._out_log.close()
            raise

    def _attach(self, fd: int, sink: LogFile, tail: _LineTail | None) -> None:
        try:
            reader = _PipeReader(asyncio.get_running_loop(), fd, sink, tail, self._reader_closed)
        except BaseException:
            os.close(fd)
            raise
        self._readers.append(reader)

    def _abandon_start(self) -> None:
        for reader in list(self._readers):
            reader.close()
        self._close_logs_if_idle()

    def _reader_closed(self, reader: _PipeReader) -> None:
        with contextlib.suppress(ValueError):
            self._readers.remove(reader)
        self._close_logs_if_idle()

    def _close_logs_if_idle(self) -> None:
        """Between runs erpwatch holds no descriptor of the target's."""
        if not self._readers and not self.running:
            self._out_log.close()
            self._err_log.close()

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
        """The child is reaped: drain its pipes, end what is left of its tree, report.

        Whatever fails here (psutil, the log file), the exit is reported."""
        reaper.release(proc.pid)
        returncode = proc.returncode if proc.returncode is not None else -signals.SIGKILL
        tail: list[str] = []
        try:
            for reader in list(self._readers):
                reader.drain(_DRAIN_MAX)
            tail = self._tail.lines()
            if not self._stopping:
                self._kill_now(proc.pid, self._strays())
                self._sweeper = asyncio.get_running_loop().create_task(
                    self._sweep(time.monotonic() + _REAP_GRACE), name=f"erpwatch-sweep-{self.name}"
                )
        except Exception as exc:  # never lose the exit over a cleanup fault
            tail = [*tail, f"(cleanup after the exit failed: {exc})"]
        finally:
            for reader in self._readers:
                reader.tail = None  # this run's tail is final
            info = ExitInfo.from_returncode(proc.pid, returncode, tail)
            if self._popen is proc:
                self.exit_info = info
            if not exited.done():
                exited.set_result(info)
            self._close_logs_if_idle()

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
                if self._sweeper is not None:
                    await asyncio.gather(self._sweeper, return_exceptions=True)
                # Its group was killed when it exited; descendants seen before that left the
                # group, and escaped ones, may remain (psutil.Process objects are safe
                # against pid reuse).
                await self._kill_and_reap(None, self._strays())
                return StopReport(None, escalated=False, after=0.0)
            pid = self._popen.pid
            self._stopping = True
            began = time.monotonic()
            try:
                tree = self._snapshot(pid)
                deadline = began + grace
                self._signal_group(pid, signals.SIGTERM)
                for proc in tree:  # also those that left the group with setsid, and escapees
                    _send(proc, signals.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), grace)
                # Descendants get what is left of the grace period.
                await self._wait_gone(tree, deadline)
                # Look again: a daemon may have forked away during the grace.
                survivors = [p for p in self._snapshot(pid) if is_alive(p)]
                escalated = self.running or bool(survivors)
                await self._kill_and_reap(pid, survivors)
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
        """Every process of this target: its tree (only while the child is not reaped: its
        pid is ours until then), those seen before and the escaped ones."""
        if self.running:
            with contextlib.suppress(psutil.NoSuchProcess):
                self._remember(_walk(pid))
        return self._strays()

    def _strays(self) -> list[psutil.Process]:
        """Those seen before, still alive, with their descendants, and the escaped ones.

        A process found below one walked already is not walked again: its subtree is in.
        Walking each from scratch cost O(depth x tree): a 300-deep chain held the event
        loop for over a second on every crash, stop and sweep round."""
        for proc in self.escaped():
            self._known.setdefault(proc.pid, proc)
        walked: set[int] = set()
        for proc in list(self._known.values()):
            if proc.pid in walked or not is_alive(proc):
                continue
            with contextlib.suppress(psutil.Error):
                pairs = _walk(proc.pid)
                walked.update(pid for pid, _parent in pairs)
                self._remember(pairs)
        return list(self._known.values())

    def escaped(self, *, max_age: float = 0.0) -> list[psutil.Process]:
        """This target's processes that left its tree and were re-parented to erpwatch (when
        it is the subreaper): by the marker, or by one of its output pipes they hold (the
        marker dropped); with their descendants. ``max_age``: see `reaper.adopted`."""
        index = reaper.escapees(max_age=max_age)  # one scan for both ways of knowing them
        found = list(index.get(self.marker, ()))
        found += reaper.holding(self._pipes, index.get(reaper.UNMARKED, ()))
        result = list(found)
        for proc in found:
            with contextlib.suppress(psutil.Error):
                result.extend(self._verified(_walk(proc.pid)))
        return result

    @staticmethod
    def _verified(pairs: Sequence[tuple[int, int]]) -> list[psutil.Process]:
        """psutil.Process objects for (pid, parent) pairs, each checked to still have that
        parent once the object is made (its start time pinned): never a stranger that
        reused the pid of a descendant that just went away."""
        result: list[psutil.Process] = []
        for pid, parent in pairs:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.ppid() == parent:
                    result.append(proc)
        return result

    def _remember(self, pairs: Sequence[tuple[int, int]]) -> None:
        fresh = [
            (pid, parent)
            for pid, parent in pairs
            if pid not in self._known or not self._known[pid].is_running()
        ]
        for proc in self._verified(fresh):
            self._known[proc.pid] = proc

    @staticmethod
    def _signal_group(pgid: int, sig: signals.Signals) -> None:
        # pgid == the child's pid (start_new_session). The id stays reserved while any member
        # lives, so this is only called while the child is alive or has just been reaped.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def _kill_now(self, pgid: int | None, procs: list[psutil.Process]) -> list[psutil.Process]:
        """SIGKILL the group and every process given still alive; returns the ones signalled."""
        if pgid is not None:
            self._signal_group(pgid, signals.SIGKILL)
        alive = [p for p in procs if is_alive(p)]
        for proc in alive:
            _send(proc, signals.SIGKILL)
        return alive

    async def _kill_and_reap(self, pgid: int | None, procs: list[psutil.Process]) -> None:
        """`_kill_now`, then sweep until nothing of the target is left (bounded)."""
        self._kill_now(pgid, procs)
        await self._sweep(time.monotonic() + _REAP_GRACE)

    async def _sweep(self, deadline: float) -> None:
        """SIGKILL what is left of the target, look again (a process killed while it forked
        leaves children, re-parented to erpwatch as the subreaper), until a look finds
        nothing alive or ``deadline`` passes."""
        while True:
            alive = self._kill_now(None, self._strays())
            if not alive:
                self._known = {}
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "%s: %d process(es) still alive after SIGKILL: %s",
                    self.name,
                    len(alive),
                    [p.pid for p in alive][:20],
                )
                return
            await asyncio.sleep(_POLL)

    async def _wait_gone(self, procs: list[psutil.Process], deadline: float) -> None:
        # Polling, because they are not our children: no wait() and no exit notification.
        # Only runs while stopping, for a bounded time.
        while any(is_alive(p) for p in procs) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)

    def tree_pids(self, ppids: Mapping[int, int] | None = None) -> list[int]:
        """The child, its descendants and its escaped processes (for resource sampling);
        [] when not running."""
        if not self.running or self.pid is None:
            return []
        if ppids is None:
            try:
                pairs = _walk(self.pid)
            except psutil.NoSuchProcess:
                return []
            self._remember(pairs)
            result = [self.pid, *(pid for pid, _ in pairs)]
            seen = set(result)
            # Every round of every monitor comes here: a scan a moment old serves them all;
            # stopping and the clean-up after an exit scan afresh.
            for proc in self.escaped(max_age=_ESCAPED_MAX_AGE):
                self._known.setdefault(proc.pid, proc)
                if proc.pid not in seen:
                    seen.add(proc.pid)
                    result.append(proc.pid)
            return result
        by_parent: dict[int, list[int]] = {}
        for pid, parent in ppids.items():
            by_parent.setdefault(parent, []).append(pid)
        escaped = reaper.adopted(self.marker, by_parent.get(os.getpid(), ()))
        for proc in escaped:
            self._known.setdefault(proc.pid, proc)
        result = [self.pid, *(proc.pid for proc in escaped)]
        seen = set(result)
        for pid in result:  # breadth-first: the list grows while we walk it
            for child in by_parent.get(pid, ()):
                if child not in seen:
                    seen.add(child)
                    result.append(child)
        return result

    def stderr_tail(self, lines: int | None = None) -> list[str]:
        """The last lines of the stderr log (filled up from ``.1`` right after a rotation),
        each cut at `TAIL_LINE_MAX` bytes."""
        wanted = self.stderr_tail_lines if lines is None else lines
        result = tail_lines(self.stderr_path, wanted)
        if 0 < len(result) < wanted or (wanted > 0 and not result):
            backup = self.stderr_path.with_name(f"{self.stderr_path.name}.1")
            result = tail_lines(backup, wanted - len(result)) + result
        return [_cap(line) for line in result]

    def rotate_logs(self) -> None:
        """A no-op, kept for `ManagedProcessLike`: the writer rotates its files itself before a
        write would cross ``log_max_bytes`` (rename-based, so a full disk is freed too)."""
