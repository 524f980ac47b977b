"""Tool-independent measuring helpers for the side-by-side benchmarks (stdlib + psutil).

Everything here observes from the outside, the same way for every watchdog:

- `BackendFinder` finds the backend's process (`bench/seed_backend.py`) by its command line
  in /proc (the ``--port P`` makes it unique) and notices a *new* one within ~1 ms of its ``exec``.
- `health_ok` is our own raw HTTP/1.0 client for ``GET /health`` (no keep-alive, so it never
  rides on a connection to the old process).
- `ResourceSampler` sums RSS and CPU time over a set of processes.
- `tagged_processes` finds processes by an environment tag (grandchildren, orphans).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil

TAG_VAR = "ERPWATCH_BENCH_TAG"
POLL = 0.001  # 1 ms


def summary(values: Sequence[float], digits: int = 4) -> dict[str, float | int | None]:
    """min / median / max (and n) of a sample; None figures for an empty one."""
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_ok(port: int, timeout: float = 0.5, path: str = "/health") -> bool:
    """One ``GET /health`` on a fresh connection; True on HTTP 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return False
    return head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


def post(port: int, path: str, timeout: float = 1.0) -> bool:
    """``POST path`` (a fault switch of the sample backend); True when it answered 200."""
    request = f"POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request.encode())
            head = sock.recv(64)
    except OSError:
        return False
    return head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


def wait_healthy(port: int, deadline: float) -> float | None:
    """Poll /health every ~1 ms until a 200; the monotonic time of it, or None."""
    while time.monotonic() < deadline:
        if health_ok(port, timeout=min(0.5, max(0.01, deadline - time.monotonic()))):
            return time.monotonic()
        time.sleep(POLL)
    return None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _is_zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


class BackendFinder:
    """The sample backend listening on ``port``, found by its command line."""

    def __init__(self, port: int, module: bytes = b"seed_backend.py") -> None:
        self.needle = module + b"\0--port\0" + str(port).encode() + b"\0"

    def matches(self, pid: int) -> bool:
        return self.needle in _read(f"/proc/{pid}/cmdline") and not _is_zombie(pid)

    def current(self) -> list[int]:
        return sorted(pid for pid in _pids() if self.matches(pid))

    def wait_new(self, old: Iterable[int], deadline: float) -> tuple[int, float] | None:
        """Poll /proc every ~1 ms for a backend pid not in ``old``: (pid, monotonic time).

        A forked child shows its parent's command line until it execs, so every new pid is
        re-read until it matches or disappears.
        """
        baseline = _pids() | set(old)
        candidates: set[int] = set()
        while True:
            now = time.monotonic()
            current = _pids()
            candidates |= current - baseline
            candidates &= current
            for pid in sorted(candidates):
                if self.matches(pid):
                    return pid, time.monotonic()
            if now >= deadline:
                return None
            time.sleep(POLL)

    def wait_any(self, deadline: float) -> int | None:
        while time.monotonic() < deadline:
            found = self.current()
            if found:
                return found[0]
            time.sleep(0.01)
        return None


def kill_pid(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def tagged_processes(tag: str, needle: bytes | None = None) -> list[int]:
    """Live (non-zombie) processes whose environment has ``ERPWATCH_BENCH_TAG=tag`` and, when
    given, whose command line contains ``needle``."""
    marker = f"{TAG_VAR}={tag}\0".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        if needle is not None and needle not in _read(f"/proc/{pid}/cmdline"):
            continue
        if marker in _read(f"/proc/{pid}/environ") and not _is_zombie(pid):
            found.append(pid)
    return sorted(found)


def kill_and_wait(pids: Iterable[int], timeout: float = 3.0) -> None:
    """SIGKILL these pids (only ones this bench started) and wait for them to go."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=timeout)


@dataclass
class ResourceSampler:
    """RSS and CPU of a fixed set of processes (a watchdog's own), sampled over a window."""

    pids: Sequence[int]
    rss_mib: list[float] = field(default_factory=list)
    _procs: list[psutil.Process] = field(default_factory=list)
    _cpu0: float = 0.0
    _t0: float = 0.0

    def start(self) -> None:
        self._procs = [psutil.Process(pid) for pid in self.pids]
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def sample(self) -> None:
        rss = 0
        for proc in self._procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                rss += proc.memory_info().rss
        self.rss_mib.append(rss / 2**20)

    def cpu_percent(self) -> float:
        """CPU time used since `start` as % of one core."""
        elapsed = time.monotonic() - self._t0
        return 100.0 * (self._cpu() - self._cpu0) / elapsed if elapsed > 0 else 0.0

    def run(self, seconds: float, every: float = 1.0) -> dict[str, float]:
        self.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(min(every, max(0.0, end - time.monotonic())))
        self.sample()
        return {
            "seconds": round(time.monotonic() - self._t0, 1),
            "cpu_pct_core": round(self.cpu_percent(), 3),
            "rss_mib_median": round(statistics.median(self.rss_mib), 1),
            "rss_mib_max": round(max(self.rss_mib), 1),
        }
