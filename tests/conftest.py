from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _clean_erpwatch_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Tests never read the developer's ERPWATCH_* variables or a stray .env file."""
    for name in list(os.environ):
        if name.startswith("ERPWATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield


@pytest.fixture
def runs() -> Iterator[list[Any]]:
    """The `erpwatch run` processes a test started (objects with a ``proc`` Popen): each
    still running is stopped with SIGTERM, so it stops its own children too (SIGKILL only
    when it does not stop in time)."""
    started: list[Any] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
            try:
                run.proc.wait(20)
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait(10)
