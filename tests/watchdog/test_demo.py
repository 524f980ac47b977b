"""The README's main job: `erpwatch demo`, and its backend built on the health kit."""

from __future__ import annotations

import email
import email.utils
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import free_port, wait_until
from watchdog.demo.runner import STORY, mails_in_time_order
from watchdog.store import EventStore


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


def test_a_fault_file_that_says_crash_makes_every_start_die_at_once(tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    fault.write_text("crash")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "watchdog.demo.erp_app"),
            *("--port", str(free_port()), "--fault-file", str(fault)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "FATAL: simulated crash" in result.stderr


def _eml(path: Path, date: str, subject: str) -> None:
    path.write_text(f"Date: {date}\nSubject: {subject}\n\nbody\n")


def test_mails_are_listed_in_the_order_they_were_written(tmp_path: Path) -> None:
    # names sort the other way round; the Date header decides, then the mtime (whole seconds)
    _eml(tmp_path / "erpwatch-ccc.eml", "Tue, 01 Dec 2026 12:00:00 +0000", "first")
    _eml(tmp_path / "erpwatch-bbb.eml", "Tue, 01 Dec 2026 12:00:05 +0000", "second")
    _eml(tmp_path / "erpwatch-aaa.eml", "Tue, 01 Dec 2026 12:00:05 +0000", "third")
    os.utime(tmp_path / "erpwatch-bbb.eml", ns=(1_000_000_000, 1_000_000_000))
    os.utime(tmp_path / "erpwatch-aaa.eml", ns=(2_000_000_000, 2_000_000_000))
    (tmp_path / "notes.txt").write_text("not a mail")
    names = [m.name for m in mails_in_time_order(tmp_path)]
    assert names == ["erpwatch-ccc.eml", "erpwatch-bbb.eml", "erpwatch-aaa.eml"]
    assert mails_in_time_order(tmp_path / "none") == []


def _mail_list(stdout: str) -> list[tuple[str, str]]:
    """The demo's "Mails written" list: (file name, subject) in the order printed."""
    listed = stdout.split("Mails written", 1)[1].split("\nLogs and database", 1)[0]
    mails = []
    for line in listed.splitlines()[1:]:
        if line.strip():
            _, name, subject = line.split(maxsplit=2)
            mails.append((name.removesuffix(":"), subject.removeprefix("Subject: ")))
    return mails


def _sent_at(mail: Path) -> tuple[datetime, int]:
    message = email.message_from_string(mail.read_text())
    return email.utils.parsedate_to_datetime(message["Date"]), mail.stat().st_mtime_ns


def test_demo_tells_the_same_story_every_run_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """Two demos at once (each mostly waits on its timers, and a busy machine is when a race
    would show): the same event kinds in the same order, the mails in the order written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    runs = [tmp_path / "first", tmp_path / "second"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "watchdog.cli", "demo", "--dir", str(run), "--no-color"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run in runs
    ]
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=90)
            assert proc.returncode == 0, stdout + stderr
            outputs.append(stdout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    for run, stdout in zip(runs, outputs, strict=True):
        store = EventStore.open_readonly(run / "erpwatch.db")
        try:
            recorded = [e.kind for e in store.query(limit=None, newest_first=False)]
        finally:
            store.close()
        assert recorded == list(STORY), f"{run.name}: {recorded}"
        printed = [
            line.split()[3] for line in stdout.splitlines() if re.match(r"\s+\d+\.\d\ds ", line)
        ]
        assert printed == list(STORY), f"{run.name}: {printed}"
        mails = _mail_list(stdout)
        assert [subject.split(" backend@")[0] for _, subject in mails] == [
            "[erpwatch] DOWN",
            "[erpwatch] RECOVERED",
        ]
        assert "crash loop, restart limit reached, down" in mails[0][1]
        sent = [_sent_at(run / "logs" / "mail" / name) for name, _ in mails]
        assert sent == sorted(sent)
        assert {name for name, _ in mails} == {m.name for m in (run / "logs/mail").glob("*.eml")}
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(str(run / "fault") in " ".join(p.info["cmdline"] or []) for run in runs)
    ]
    assert leftovers == []
