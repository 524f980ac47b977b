"""Test helpers: wait for a condition with a deadline instead of sleeping and hoping; run
code in a fresh interpreter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Async `wait_until`: ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (e.g. "4m") mounted at ``directory``, unmounted afterwards;
    the test is skipped where it cannot be mounted (it needs root and mount rights)."""
    import pytest

    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


REPO = Path(__file__).resolve().parents[1]


def run_fresh(code: str, cwd: Path) -> None:
    """Run ``code`` in a fresh interpreter (this checkout importable, none of our ERPWATCH_
    settings) and fail with its stderr unless it exits 0: for what a process imports."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=cwd,
        env={**base, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
