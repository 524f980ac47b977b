"""Run in its own interpreter by test_reaper.py (a subreaper pytest would adopt every orphan
of the test run): erpwatch's Supervisor, as the subreaper with its stray reaper running,
supervises a target that forks 200 descendants of every kind (tests/watchdog/forker.py,
40 of them double-forked setsid daemons). The target crashes, is restarted, then stopped.

    python survivor_scenario.py WORK_DIR    → one JSON line: what was left after each
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.watchdog.scenario import Recorder, until
from watchdog import reaper
from watchdog.clock import RealClock
from watchdog.config import load_settings
from watchdog.supervisor import Supervisor

COUNT = 200
FORKER = Path(__file__).with_name("forker.py")


def read_pids(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(int(pid), kind) for pid, kind in rows]


def pin(rows: list[tuple[int, str]]) -> list[tuple[psutil.Process, str]]:
    """psutil.Process objects made while they run: later checks are safe from pid reuse."""
    return [(psutil.Process(pid), kind) for pid, kind in rows]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def zombie(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def remaining(
    procs: list[tuple[psutil.Process, str]], within: float = 10.0
) -> dict[str, object]:
    """Poll until none is alive nor a zombie (or the deadline); report what is left."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(alive(p) or zombie(p) for p, _ in procs):
            break
        await asyncio.sleep(0.02)
    left = [(p, kind) for p, kind in procs if alive(p)]
    return {
        "alive": len(left),
        "alive_kinds": dict(Counter(kind for _, kind in left)),
        "zombies": sum(1 for p, _ in procs if zombie(p)),
    }


async def main(work: Path) -> dict[str, object]:
    subreaper = reaper.become_subreaper()
    stray_reaper = asyncio.create_task(reaper.run(0.05))
    pidfile = work / "pids"
    log_dir = work / "logs"
    configs = load_settings(
        command=f"{sys.executable} {FORKER} {pidfile} {COUNT}",
        check_interval=0.05,
        restart_backoff=0.05,
        restart_backoff_max=0.2,
        max_restarts=1000,
        restart_window=60,
        stop_timeout=0.5,
        log_path=log_dir,
    ).targets_resolved()
    bus = Recorder()
    supervisor = Supervisor(configs, bus, log_dir=log_dir, clock=RealClock())
    pinned: list[tuple[psutil.Process, str]] = []
    try:
        await supervisor.start()
        monitor = supervisor.monitors[configs[0].name]
        process = monitor.process
        await until(lambda: len(read_pids(pidfile)) >= COUNT)
        first = pin(read_pids(pidfile)[:COUNT])
        pinned += first
        first_pid = process.pid
        assert first_pid is not None
        me = os.getpid()
        escaped_seen = len(getattr(process, "escaped")())  # noqa: B009 - not in the protocol
        adopted_daemons = sum(1 for p, kind in first if kind == "daemon" and p.ppid() == me)
        os.kill(first_pid, signal.SIGKILL)  # the crash
        after_crash = await remaining(first)
        await until(lambda: process.pid != first_pid and process.running)
        await until(lambda: len(read_pids(pidfile)) >= 2 * COUNT)
        second = pin(read_pids(pidfile)[COUNT : 2 * COUNT])
        pinned += second
        await supervisor.stop()
        after_stop = await remaining(second)
    finally:
        # Whatever failed, leave nothing behind (pinned: never a stranger).
        await supervisor.stop()
        for proc, _ in pinned:
            if alive(proc):
                proc.kill()
        stray_reaper.cancel()
    return {
        "subreaper": subreaper,
        "kinds": dict(Counter(kind for _, kind in first)),
        "adopted_daemons": adopted_daemons,
        "escaped_seen": escaped_seen,
        "after_crash": after_crash,
        "after_stop": after_stop,
        "events": [e.kind for e in bus.events],
    }


if __name__ == "__main__":
    outcome = asyncio.run(main(Path(sys.argv[1])))
    print(json.dumps(outcome, default=str))
