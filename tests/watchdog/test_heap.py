"""erpwatch's own heap tuning, each case in a fresh interpreter: mallopt changes the process
for good, and pytest's own heap would blur what malloc_trim gives back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc malloc only",
)

ARENAS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from watchdog import heap
    if sys.argv[1] == "one":
        assert heap.one_arena()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    kept = []
    barrier = threading.Barrier(4)
    def allocate():
        barrier.wait()  # all four alive at once: none can inherit another's arena
        kept.extend(libc.malloc(4096) for _ in range(100))
        barrier.wait()
    threads = [threading.Thread(target=allocate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    libc.malloc_stats()  # to stderr: one "Arena N:" block per arena
    """
)


def run(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def arenas(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if line.startswith("Arena "))


def test_one_arena_keeps_every_thread_on_the_main_arena() -> None:
    assert arenas(run(ARENAS, "default").stderr) > 1  # glibc's default: an arena per thread
    assert arenas(run(ARENAS, "one").stderr) == 1


def test_one_arena_leaves_the_operators_choice_alone() -> None:
    script = "from watchdog import heap; print(heap.one_arena())"
    assert run(script, env={"MALLOC_ARENA_MAX": "4"}).stdout.strip() == "False"
    assert run(script).stdout.strip() == "True"


TRIM = textwrap.dedent(
    """
    import ctypes
    from watchdog import heap
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def anon_kib():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:"))
    blocks = [libc.malloc(16384) for _ in range(3000)]  # below the mmap threshold: the heap
    guard = libc.malloc(16384)  # in use after them: free() alone cannot shrink the heap's top
    for block in blocks:
        ctypes.memset(block, 1, 16384)
    for block in blocks:
        libc.free(block)
    before = anon_kib()
    trimmed = heap.trim()
    print(trimmed, before - anon_kib())
    """
)


def test_trim_hands_the_free_pages_back() -> None:
    trimmed, freed_kib = run(TRIM).stdout.split()
    assert trimmed == "True"
    assert int(freed_kib) > 32 * 1024  # of the ~47 MiB freed inside the heap
