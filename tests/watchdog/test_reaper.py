"""The subreaper and the stray reaper. pytest itself must never become a subreaper (it would
adopt every orphan of the test run), so whatever needs one runs in its own interpreter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import wait_until
from watchdog import reaper

ROOT = Path(__file__).resolve().parents[2]


def zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for proc in made:
        if proc.returncode is None:
            try:
                proc.kill()
                proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                proc.returncode = -9  # reaped by the reaper under test


def spawn(made: list[subprocess.Popen[bytes]], code: int, *, new_session: bool) -> int:
    proc = subprocess.Popen(["sh", "-c", f"exit {code}"], start_new_session=new_session)
    made.append(proc)
    wait_until(lambda: zombie(proc.pid), timeout=5, what=f"{proc.pid} a zombie")
    return proc.pid


def test_reap_strays_reaps_an_unclaimed_zombie_of_another_session(
    children: list[subprocess.Popen[bytes]],
) -> None:
    pid = spawn(children, 4, new_session=True)
    reaped = dict(reaper.reap_strays())
    assert os.waitstatus_to_exitcode(reaped[pid]) == 4
    assert not psutil.pid_exists(pid) or not zombie(pid)
    children[-1].returncode = 4  # its Popen can no longer wait for it


def test_reap_strays_leaves_a_claimed_child_to_its_waiter(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """ManagedProcess claims its Popen child: Popen keeps the real exit status."""
    pid = spawn(children, 7, new_session=True)
    reaper.claim(pid)
    try:
        assert pid not in dict(reaper.reap_strays())
        assert pid in reaper.claimed()
        assert children[-1].wait(5) == 7
    finally:
        reaper.release(pid)
    assert pid not in reaper.claimed()


def test_reap_strays_leaves_protected_pids_and_our_own_session(
    children: list[subprocess.Popen[bytes]],
) -> None:
    """A child erpwatch spawns in its own session (e.g. an asyncio subprocess, whose
    watcher waits for it) is never a stray; nor a pid the caller protects."""
    same_session = spawn(children, 5, new_session=False)
    protected = spawn(children, 6, new_session=True)
    reaped = dict(reaper.reap_strays(protected=[protected]))
    assert same_session not in reaped and protected not in reaped
    assert children[0].wait(5) == 5
    assert children[1].wait(5) == 6


def test_not_a_subreaper_finds_no_adopted_process() -> None:
    assert reaper.is_subreaper() is False  # pytest must stay an ordinary parent
    assert reaper.adopted("erp") == []


def run_script(script: str, *args: str, timeout: float = 90) -> Any:
    done = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


ADOPTION = r"""
import asyncio, json, os, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
from watchdog import reaper
from watchdog.process import ManagedProcess, ppid_map

DAEMONIZE = r'''
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    os.write(1, b"DAEMON %d\n" % os.getpid())
    time.sleep(120)
    os._exit(0)
os.wait()
os.write(1, b"READY\n")
time.sleep(120)
'''


async def main(log_dir):
    result = {"subreaper": reaper.become_subreaper(), "is_subreaper": reaper.is_subreaper()}
    proc = ManagedProcess("erp", [sys.executable, "-c", DAEMONIZE], log_dir=log_dir,
                          stop_timeout=1.0)
    other = ManagedProcess("other", [sys.executable, "-c", DAEMONIZE], log_dir=log_dir,
                           stop_timeout=1.0)
    try:
        for p in (proc, other):
            await p.start()
        async def ready(p):
            def text():
                return p.stdout_path.read_text() if p.stdout_path.exists() else ""
            deadline = time.monotonic() + 20
            while "READY" not in text() or "DAEMON" not in text():
                if time.monotonic() > deadline:
                    raise SystemExit(f"{p.name} never got ready: {text()!r}")
                await asyncio.sleep(0.01)
            return int(p.stdout_path.read_text().split("DAEMON ")[1].split()[0])
        daemon = await ready(proc)
        other_daemon = await ready(other)
        result["daemon_parent_is_us"] = int(
            Path(f"/proc/{daemon}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
        result["escaped"] = [p.pid for p in proc.escaped()] == [daemon]
        result["tree"] = daemon in proc.tree_pids() and other_daemon not in proc.tree_pids()
        result["tree_shared_map"] = daemon in proc.tree_pids(ppid_map())
        result["other_escaped"] = [p.pid for p in other.escaped()] == [other_daemon]
        report = await proc.stop_tree()
        result["stopped"] = report.exit is not None
        result["daemon_gone_or_zombie"] = not os.path.exists(f"/proc/{daemon}") or (
            Path(f"/proc/{daemon}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
        result["reaped"] = daemon in [pid for pid, _ in reaper.reap_strays()]
        result["other_daemon_untouched"] = os.path.exists(f"/proc/{other_daemon}/environ") and (
            b"ERPWATCH_TARGET=other" in Path(f"/proc/{other_daemon}/environ").read_bytes())
    finally:  # nothing left behind, also when a check fails
        for p in (proc, other):
            await p.stop()
    # Popen keeps its child's real exit status while the stray reaper runs flat out.
    stray_reaper = asyncio.create_task(reaper.run(0))
    codes = []
    for n in range(20):
        quick = ManagedProcess(f"quick{n}", [sys.executable, "-c", f"raise SystemExit({n + 1})"],
                               log_dir=log_dir)
        await quick.start()
        codes.append((await quick.wait()).returncode)
    stray_reaper.cancel()
    result["exit_codes"] = codes
    return result


print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
"""


def test_subreaper_adopts_escaped_daemons_and_stops_only_its_targets(tmp_path: Path) -> None:
    script = tmp_path / "adoption.py"
    script.write_text(ADOPTION)
    result = run_script(str(script), str(tmp_path / "logs"))
    assert result == {
        "subreaper": True,
        "is_subreaper": True,
        "daemon_parent_is_us": True,
        "escaped": True,
        "tree": True,
        "tree_shared_map": True,
        "other_escaped": True,
        "stopped": True,
        "daemon_gone_or_zombie": True,
        "reaped": True,
        "other_daemon_untouched": True,
        "exit_codes": list(range(1, 21)),
    }


@pytest.mark.timeout(120)
async def test_no_descendant_survives_a_crash_or_a_stop(tmp_path: Path) -> None:
    """200 descendants of every kind (40 double-forked setsid daemons, half of everything
    ignoring SIGTERM): after the target crashes, and after it is stopped, none is left,
    alive or zombie."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("survivor_scenario.py")),
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["subreaper"] is True
    assert sum(result["kinds"].values()) == 200 and result["kinds"]["daemon"] == 40
    assert result["adopted_daemons"] == 40  # re-parented to erpwatch, not to init
    assert result["escaped_seen"] == 40  # found by their ERPWATCH_TARGET marker
    assert result["after_crash"] == {"alive": 0, "alive_kinds": {}, "zombies": 0}
    assert result["after_stop"] == {"alive": 0, "alive_kinds": {}, "zombies": 0}
    assert result["events"][:3] == ["started", "healthy", "crashed"]
    assert result["events"][-1] == "stopped"
