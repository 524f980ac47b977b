"""`erpwatch run` as a real process: signals stop every target cleanly and leave nothing."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import free_port, wait_until


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def history(tmp_path: Path, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "watchdog.cli",
            "history",
            "--db",
            str(tmp_path / "events.db"),
            "--json",
            "--limit",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(result.stdout))


class Run:
    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
        self.tmp_path = tmp_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog.cli", "run"],
            env={
                **base,
                "ERPWATCH_LOG_PATH": str(tmp_path / "logs"),
                "ERPWATCH_DB_PATH": str(tmp_path / "events.db"),
                "ERPWATCH_CHECK_INTERVAL": "0.05",
                "ERPWATCH_STATUS_PORT": "0",
                **env,
            },
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def kinds(self) -> list[tuple[str, str]]:
        if not (self.tmp_path / "events.db").exists():
            return []
        return [(str(e["target"]), str(e["kind"])) for e in reversed(history(self.tmp_path))]

    def pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_all_targets_with_grandchildren_and_exits_0(
    tmp_path: Path, runs: list[Run], signum: signal.Signals
) -> None:
    port = free_port()
    backend = (
        f"{sys.executable} -m watchdog.demo.backend --port {port} "
        "--spawn-grandchild --grandchild-setsid"
    )
    stubborn = f"{sys.executable} -m watchdog.demo.backend --port {free_port()} --ignore-sigterm"
    run = Run(
        tmp_path,
        {
            "ERPWATCH_TARGETS__BACKEND__COMMAND": backend,
            "ERPWATCH_TARGETS__BACKEND__HEALTH_URL": f"http://127.0.0.1:{port}/health",
            "ERPWATCH_TARGETS__STUBBORN__COMMAND": stubborn,
            "ERPWATCH_STOP_TIMEOUT": "0.5",
        },
    )
    runs.append(run)
    wait_until(
        lambda: {("backend", "healthy"), ("stubborn", "healthy")} <= set(run.kinds()),
        timeout=20,
        what="both targets healthy",
    )
    # The backend's grandchild (which left the group with setsid) must be up too.
    wait_until(lambda: len(run.pids()) >= 3, timeout=10, what="grandchild started")
    pids = run.pids()
    run.proc.send_signal(signum)
    assert run.proc.wait(20) == 0
    assert not [pid for pid in pids if alive(pid)]
    kinds = run.kinds()
    assert ("backend", "stopped") in kinds and ("stubborn", "stopped") in kinds
    assert kinds[-1] == ("erpwatch", "watchdog-stopped")


def test_crash_recorded_while_history_reads_concurrently(tmp_path: Path, runs: list[Run]) -> None:
    port = free_port()
    run = Run(
        tmp_path,
        {
            "ERPWATCH_COMMAND": f"{sys.executable} -m watchdog.demo.backend --port {port}",
            "ERPWATCH_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        },
    )
    runs.append(run)
    wait_until(lambda: ("backend", "healthy") in run.kinds(), timeout=20, what="healthy")
    (child,) = [p for p in psutil.Process(run.proc.pid).children() if p.pid in run.pids()]
    child.kill()
    wait_until(lambda: run.kinds().count(("backend", "healthy")) >= 2, timeout=20)
    crashed = history(tmp_path, "--kind", "crashed")
    assert crashed[0]["details"]["signal"] == "SIGKILL"  # type: ignore[index]
    run.proc.terminate()
    assert run.proc.wait(20) == 0


def test_hup_usr1_usr2_pipe_never_stop_it_then_sigterm_stops_cleanly(
    tmp_path: Path, runs: list[Run]
) -> None:
    port, status_port = free_port(), free_port()
    run = Run(
        tmp_path,
        {
            "ERPWATCH_COMMAND": f"{sys.executable} -m watchdog.demo.backend --port {port}",
            "ERPWATCH_HEALTH_URL": f"http://127.0.0.1:{port}/health",
            "ERPWATCH_STATUS_PORT": str(status_port),
        },
    )
    runs.append(run)
    wait_until(lambda: ("backend", "healthy") in run.kinds(), timeout=20, what="healthy")
    (backend,) = psutil.Process(run.proc.pid).children()
    log_file = tmp_path / "logs" / "erpwatch.log"

    def logged(text: str) -> bool:
        return log_file.exists() and text in log_file.read_text(errors="replace")

    for signum, line in [
        (signal.SIGHUP, "SIGHUP received: configuration reload is not supported yet; ignoring"),
        (signal.SIGPIPE, None),
        (signal.SIGUSR1, "SIGUSR1 received"),
        (signal.SIGUSR2, "SIGUSR2 received"),
        (signal.SIGHUP, None),  # a second one too
    ]:
        run.proc.send_signal(signum)
        if line is not None:
            wait_until(functools.partial(logged, line), timeout=10, what=f"{signum.name} logged")
        assert run.proc.poll() is None, f"erpwatch died of {signum.name}"
    wait_until(
        lambda: log_file.read_text().count("SIGHUP received") == 2,
        timeout=10,
        what="the second SIGHUP logged",
    )
    assert run.proc.poll() is None

    # The backend was left alone and is still supervised: same pid, probed just now.
    base = f"http://127.0.0.1:{status_port}"

    def fresh_status() -> dict[str, Any] | None:
        document = httpx.get(f"{base}/status", params={"fresh": "1"}, timeout=5).json()
        (target,) = document["targets"]
        age = (target.get("last_probe") or {}).get("age_s")
        return target if age is not None and age < 1.0 else None

    target = wait_until(fresh_status, timeout=10, what="a fresh probe after the signals")
    assert target is not None
    assert target["pid"] == backend.pid and target["state"] == "healthy"
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    assert alive(backend.pid)
    kinds = run.kinds()
    assert kinds.count(("backend", "started")) == 1
    assert ("backend", "stopped") not in kinds and ("backend", "crashed") not in kinds

    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(20) == 0
    wait_until(lambda: not alive(backend.pid), timeout=5, what="the backend gone")
    kinds = run.kinds()
    assert ("backend", "stopped") in kinds
    assert kinds[-1] == ("erpwatch", "watchdog-stopped")
