"""Run in its own interpreter by test_monitor.py: erpwatch's process runs out of file
descriptors (EMFILE) while its backend crashes, then gets them back.

    python emfile_scenario.py LOG_DIR PORT   → one JSON line: what the monitor did
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.watchdog.scenario import Recorder, until
from watchdog.clock import RealClock
from watchdog.config import load_settings
from watchdog.states import TargetState
from watchdog.supervisor import Supervisor


async def main(log_dir: Path, port: int) -> dict[str, object]:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    command = f"{sys.executable} -m watchdog.demo.backend --port {port}"
    configs = load_settings(
        command=command,
        health_url=f"http://127.0.0.1:{port}/health",
        check_interval=0.05,
        timeout_threshold=0.5,
        probe_timeout=0.3,
        restart_backoff=0.05,
        restart_backoff_max=0.2,
        max_restarts=1000,
        restart_window=60,
        log_path=log_dir,
    ).targets_resolved()
    bus = Recorder()
    supervisor = Supervisor(configs, bus, log_dir=log_dir, clock=RealClock())
    await supervisor.start()
    monitor = supervisor.monitors["backend"]
    await until(lambda: monitor.state is TargetState.HEALTHY)
    first_pid = monitor.process.pid
    assert first_pid is not None
    hog: list[int] = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass  # EMFILE: not one descriptor left
    os.kill(first_pid, signal.SIGKILL)
    await until(lambda: any("EMFILE" in e.message for e in bus.events))
    failed_starts = sum(1 for e in bus.events if "EMFILE" in e.message)
    for fd in hog:
        os.close(fd)
    await until(lambda: monitor.state is TargetState.HEALTHY and monitor.process.pid != first_pid)
    result = {
        "kinds": [e.kind for e in bus.events],
        "emfile_messages": [e.message for e in bus.events if "EMFILE" in e.message][:3],
        "failed_starts_seen": failed_starts,
        "stalled": supervisor.stalled(time.monotonic()),
        "dead": supervisor.tasks.dead(),
        "state": str(monitor.state),
    }
    await supervisor.stop()
    return result


if __name__ == "__main__":
    outcome = asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    print(json.dumps(outcome))
