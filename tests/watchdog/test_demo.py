"""The README's main job: `erpwatch demo`, and its backend built on the health kit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import free_port, wait_until


@pytest.fixture
def erp_app(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, fault = free_port(), tmp_path / "fault"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watchdog.demo.erp_app",
            "--port",
            str(port),
            "--fault-file",
            str(fault),
        ],
    )
    try:
        yield port, fault
    finally:
        proc.kill()
        proc.wait(10)


def get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2, trust_env=False)
    except httpx.HTTPError:
        return None


def test_demo_backend_serves_the_health_kit(erp_app: tuple[int, Path]) -> None:
    port, fault = erp_app
    health = wait_until(lambda: get(port, "/health"), timeout=20, what="erp_app up")
    assert health.json() == {"status": "ok"}
    status = get(port, "/status")
    assert status is not None and status.json()["status"] == "ok"
    assert status.json()["checks"]["database"]["status"] == "ok"
    fault.write_text("degrade")
    degraded = get(port, "/status")
    assert degraded is not None and degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert "replica lagging" in json.dumps(degraded.json()["checks"]["database"])


def test_demo_runs_the_whole_script_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "demo", "--dir", str(tmp_path), "--no-color"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in (
        "crashed",
        "restarted",
        "degraded",
        "unhealthy",
        "crash-loop",
        "restart-limit-reached",
        "alert-sent",
        "stopped",
    ):
        assert kind in result.stdout, kind
    mails = sorted((tmp_path / "logs" / "mail").glob("*.eml"))
    subjects = [m.read_text().split("Subject: ", 1)[1].splitlines()[0] for m in mails]
    assert any(s.startswith("[erpwatch] DOWN backend@") for s in subjects)
    assert any(s.startswith("[erpwatch] RECOVERED backend@") for s in subjects)
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path / "fault") in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
