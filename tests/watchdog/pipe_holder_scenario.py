"""Run in its own interpreter by test_unmarked_pipe_holder.py (it becomes a subreaper): a
target whose grandchild double-forks, calls setsid and drops its whole environment
(``setsid env -i ...``, so no ERPWATCH_TARGET marker) but keeps the target's output pipes.
The target then exits on its own (MODE exit) or is stopped and does it on SIGTERM (MODE
stop). Prints one JSON line: whether the holder was still alive afterwards.

    python pipe_holder_scenario.py WORK_DIR MODE
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import await_until
from watchdog import reaper
from watchdog.process import ManagedProcess, is_alive

# The holder: `sleep` exec'd with an empty environment, stdout/stderr still the pipes.
TARGET = """
import os, signal, sys, time
def holder():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execve("/bin/sleep", ["sleep", "120"], {})
        os._exit(0)
    os.wait()
if sys.argv[1] == "exit":
    holder()
    print("HOLDER", flush=True)
    time.sleep(0.3)
    sys.exit(3)
def on_term(*_):
    holder()
    print("HOLDER", flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
print("READY", flush=True)
while True:
    time.sleep(3600)
"""


def holders(me: int) -> list[psutil.Process]:
    found = []
    for pid in reaper.own_children():
        try:
            proc = psutil.Process(pid)
            if proc.name() == "sleep" and proc.ppid() == me and is_alive(proc):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def main(work: Path, mode: str) -> dict[str, object]:
    subreaper = reaper.become_subreaper()
    stray_reaper = asyncio.create_task(reaper.run(0.05))
    me = psutil.Process().pid
    process = ManagedProcess(
        "erp", [sys.executable, "-c", TARGET, mode], log_dir=work / "logs", stop_timeout=2.0
    )
    out = process.stdout_path
    try:
        await process.start()
        if mode == "exit":
            info = await asyncio.wait_for(process.wait(), 20)
        else:
            await await_until(lambda: b"READY" in _read(out), 20, what="the target's READY")
            info = await process.stop()
        # The holder printed HOLDER on the pipe it holds: its line is in the log by the time
        # the pipe closes (the holder ended), or the holder was never made.
        made = await await_until(lambda: b"HOLDER" in _read(out), 20, what="the holder")
        # The clean-up after an exit is bounded (_REAP_GRACE); give it that and more.
        deadline = time.monotonic() + 5
        while holders(me) and time.monotonic() < deadline:  # noqa: ASYNC110 - not ours
            await asyncio.sleep(0.02)
        left = holders(me)
        return {
            "subreaper": subreaper,
            "made": made,
            "exit": None if info is None else info.describe(),
            "left": len(left),
        }
    finally:
        for proc in holders(me):
            proc.kill()
        await process.stop()
        stray_reaper.cancel()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))))
