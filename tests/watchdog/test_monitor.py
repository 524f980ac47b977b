"""End to end: real child processes (the demo backend) probed over loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from erpwatch_healthkit import HealthKit
from tests.helpers import await_until, free_port
from tests.watchdog.test_probe import Postgres, serve_app
from watchdog.api import StatusServer
from watchdog.bus import EventBus
from watchdog.clock import RealClock
from watchdog.config import load_settings
from watchdog.demo.backend import CRASH_EXIT_CODE, CRASH_LINE
from watchdog.events import Event
from watchdog.settings import TargetConfig
from watchdog.states import TargetState
from watchdog.store import EventStore
from watchdog.supervisor import Supervisor, start_order

FAST = dict(
    check_interval=0.05,
    timeout_threshold=0.3,
    probe_timeout=0.2,
    startup_grace=5.0,
    restart_backoff=0.0,
    restart_window=60.0,
    degraded_latency=1.0,
    stop_timeout=2.0,
    down_after=60.0,
)


def backend_command(port: int, *extra: str) -> str:
    return " ".join([sys.executable, "-m", "watchdog.demo.backend", "--port", str(port), *extra])


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.store = EventStore(tmp_path / "events.db")
        self.bus = EventBus(self.store)
        self.events: list[Event] = []
        self.supervisor: Supervisor | None = None

    def configs(self, **settings: Any) -> list[TargetConfig]:
        values = {**FAST, "log_path": self.tmp_path / "logs", **settings}
        return load_settings(**values).targets_resolved()

    async def start(self, configs: list[TargetConfig]) -> Supervisor:
        subscription = self.bus.subscribe("test", maxsize=100_000)

        async def collect() -> None:
            async for event in subscription:
                self.events.append(event)

        self._collector = asyncio.create_task(collect())
        self.supervisor = Supervisor(
            configs, self.bus, log_dir=self.tmp_path / "logs", clock=RealClock()
        )
        await self.supervisor.start()
        return self.supervisor

    def kinds(self, target: str | None = None) -> list[str]:
        return [e.kind for e in self.events if target is None or e.target == target]

    async def wait_kind(self, kind: str, count: int = 1, within: float = 10.0) -> Event:
        await await_until(lambda: self.kinds().count(kind) >= count, within, what=kind)
        return [e for e in self.events if e.kind == kind][count - 1]

    async def close(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        await self.bus.close()
        self._collector.cancel()
        self.store.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.close()


def monitor_of(h: Harness, name: str = "backend") -> Any:
    assert h.supervisor is not None
    return h.supervisor.monitors[name]


async def post(port: int, path: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        # /fault/crash may drop the connection as the process dies
        with contextlib.suppress(httpx.HTTPError):
            await client.post(f"http://127.0.0.1:{port}{path}", timeout=2)


async def start_faulty_backend(
    harness: Harness, tmp_path: Path, **settings: Any
) -> tuple[int, Path]:
    """The demo backend under supervision, its faults switched through a fault file."""
    port, fault = free_port(), tmp_path / "fault"
    await harness.start(
        harness.configs(
            command=backend_command(port, "--fault-file", str(fault)),
            health_url=f"http://127.0.0.1:{port}/health",
            **settings,
        )
    )
    return port, fault


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_out_of_fds_itself_erpwatch_judges_no_target_and_says_so(
    harness: Harness, tmp_path: Path
) -> None:
    """EMFILE inside erpwatch (here: its soft RLIMIT_NOFILE lowered under the descriptors it
    holds) blinds the checks: the healthy target is not declared unhealthy nor restarted
    (it was, after TIMEOUT_THRESHOLD), and `Supervisor.blind` names it for /health."""
    port = free_port()
    await harness.start(
        harness.configs(
            command=shlex.join(
                [sys.executable, "-c", DYING_BACKEND, str(port), str(tmp_path / "never")]
            ),
            health_url=f"http://127.0.0.1:{port}/health",
        )
    )
    await harness.wait_kind("healthy")
    sup, mon = harness.supervisor, monitor_of(harness)
    assert sup is not None
    pid = mon.process.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        await await_until(lambda: mon.blind is not None, what="a check not made")
        assert sup.blind() == [f"backend ({mon.blind[1]})"] and "Errno 24" in mon.blind[1]
        blind_since = mon.blind[0]
        # Blind for several TIMEOUT_THRESHOLDs (0.3 s): each round a check is tried and not
        # made; before, the first threshold passed restarted the backend.
        await await_until(
            lambda: mon.blind is not None and mon.last_probe.checked_at > blind_since + 1.0,
            what="blind for a while",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await await_until(lambda: mon.blind is None and mon.last_probe.status == "ok", what="seeing")
    assert mon.process.pid == pid and sup.blind() == []
    assert "unhealthy" not in harness.kinds() and "restarted" not in harness.kinds()


async def test_started_then_healthy_once(harness: Harness) -> None:
    port = free_port()
    await harness.start(
        harness.configs(command=backend_command(port), health_url=f"http://127.0.0.1:{port}/health")
    )
    await harness.wait_kind("healthy")
    first_pid = monitor_of(harness).process.pid
    await await_until(lambda: monitor_of(harness).last_probe is not None)
    # Many good probes later there is still exactly one healthy event: events on change only.
    probes = monitor_of(harness)
    seen = probes.last_probe
    await await_until(
        lambda: (
            probes.last_probe is not seen and probes.last_probe.checked_at > seen.checked_at + 0.2
        )
    )
    assert harness.kinds() == ["started", "healthy"]
    assert monitor_of(harness).process.pid == first_pid


async def test_crash_to_restarted_immediately(harness: Harness) -> None:
    port = free_port()
    await harness.start(
        harness.configs(command=backend_command(port), health_url=f"http://127.0.0.1:{port}/health")
    )
    await harness.wait_kind("healthy")
    old_pid = monitor_of(harness).process.pid
    await post(port, "/fault/crash")
    crashed = await harness.wait_kind("crashed")
    restarted = await harness.wait_kind("restarted")
    assert crashed.details["exit_code"] == 3
    assert any("simulated crash" in line for line in crashed.details["stderr_tail"])
    assert crashed.severity == "warning"
    assert restarted.details["pid"] != old_pid
    assert restarted.message == "restarted (crashed: exit code 3)"
    await harness.wait_kind("healthy", count=2)
    assert harness.kinds() == ["started", "healthy", "crashed", "restarted", "healthy"]


# Serves /health (HTTP/1.0: a new connection, a new descriptor per check) until the trigger
# file appears, then closes its socket and exits 0.1 s later: a crash's sockets close
# before its exit shows (the kernel's window, widened).
DYING_BACKEND = """
import http.server, os, sys, threading, time
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
server.socket.close()
time.sleep(0.1)
os._exit(3)
"""


async def test_a_crash_refusing_checks_before_its_exit_shows_reads_crashed_only(
    harness: Harness, tmp_path: Path
) -> None:
    port, trigger = free_port(), tmp_path / "die"
    await harness.start(
        harness.configs(
            command=shlex.join([sys.executable, "-c", DYING_BACKEND, str(port), str(trigger)]),
            health_url=f"http://127.0.0.1:{port}/health",
        )
    )
    await harness.wait_kind("healthy")
    trigger.write_text("")
    await harness.wait_kind("crashed")
    assert harness.kinds()[:3] == ["started", "healthy", "crashed"]  # no "unhealthy" first


async def test_hang_to_restarted_after_threshold(harness: Harness, tmp_path: Path) -> None:
    _port, fault = await start_faulty_backend(harness, tmp_path)
    await harness.wait_kind("healthy")
    old_pid = monitor_of(harness).process.pid
    fault.write_text("hang")
    unhealthy = await harness.wait_kind("unhealthy")
    restarted = await harness.wait_kind("restarted")
    fault.write_text("")
    await harness.wait_kind("healthy", count=2)
    assert "timeout" in unhealthy.message or "no answer" in unhealthy.message
    assert "unhealthy too long" in restarted.message
    assert not alive(old_pid)
    assert "crashed" not in harness.kinds()


async def test_degraded_without_restart_then_healthy(harness: Harness, tmp_path: Path) -> None:
    _port, fault = await start_faulty_backend(harness, tmp_path)
    await harness.wait_kind("healthy")
    pid = monitor_of(harness).process.pid
    fault.write_text("degrade")
    degraded = await harness.wait_kind("degraded")
    assert "degraded" in degraded.message
    fault.write_text("")
    await harness.wait_kind("healthy", count=2)
    assert monitor_of(harness).process.pid == pid
    assert harness.kinds() == ["started", "healthy", "degraded", "healthy"]


async def test_slow_answer_is_degraded(harness: Harness, tmp_path: Path) -> None:
    _port, fault = await start_faulty_backend(
        harness, tmp_path, degraded_latency=0.05, probe_timeout=1.0
    )
    await harness.wait_kind("healthy")
    fault.write_text("slow:0.15")
    degraded = await harness.wait_kind("degraded")
    assert "slow" in degraded.message
    assert "restarted" not in harness.kinds()


async def test_restart_limit_reached_exactly_after_max_restarts(harness: Harness) -> None:
    # A command that dies at once: every start is a crash.
    command = f"{sys.executable} -c 'import sys; sys.exit(7)'"
    await harness.start(harness.configs(command=command, max_restarts=3, limit_retry=0))
    limit = await harness.wait_kind("restart-limit-reached")
    await await_until(lambda: monitor_of(harness).state is TargetState.FAILED)
    kinds = harness.kinds()
    assert kinds.count("restarted") == 3
    assert kinds.count("crashed") == 4
    assert kinds.count("restart-limit-reached") == 1
    assert limit.severity == "critical"
    assert kinds.index("restart-limit-reached") > max(
        i for i, k in enumerate(kinds) if k == "restarted"
    )
    status = monitor_of(harness).status()
    assert status.state is TargetState.FAILED and status.colour == "red"
    assert status.restarts_in_window == 3


async def test_crash_loop_event_once(harness: Harness) -> None:
    command = f"{sys.executable} -c 'import sys; sys.exit(1)'"
    await harness.start(harness.configs(command=command, max_restarts=5, limit_retry=0))
    await harness.wait_kind("restart-limit-reached")
    assert harness.kinds().count("crash-loop") == 1


async def test_backoff_between_successive_restarts(harness: Harness) -> None:
    command = f"{sys.executable} -c 'import sys; sys.exit(1)'"
    await harness.start(
        harness.configs(
            command=command,
            max_restarts=3,
            restart_backoff=0.1,
            restart_backoff_max=0.2,
            limit_retry=0,
        )
    )
    await harness.wait_kind("restart-limit-reached")
    # The backoff each restart waited, as decided by the core (not wall-clock gaps).
    backoffs = [e.details["backoff_s"] for e in harness.events if e.kind == "restarted"]
    assert backoffs == [0.0, 0.1, 0.2]


async def test_slow_retry_after_limit_brings_it_back(harness: Harness, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    script = (
        f"import pathlib,sys,time; "
        f"sys.exit(1) if not pathlib.Path({str(flag)!r}).exists() else time.sleep(60)"
    )
    command = f'{sys.executable} -c "{script}"'
    await harness.start(harness.configs(command=command, max_restarts=1, limit_retry=0.3))
    await harness.wait_kind("restart-limit-reached")
    flag.write_text("1")
    await await_until(lambda: monitor_of(harness).state is TargetState.HEALTHY, 5)
    restarted = [e for e in harness.events if e.kind == "restarted"]
    assert "slow retry" in restarted[-1].message
    assert harness.kinds().count("restart-limit-reached") == 1


async def test_down_event_when_down_longer_than_down_after(
    harness: Harness, tmp_path: Path
) -> None:
    command = f"{sys.executable} -c 'import sys; sys.exit(1)'"
    await harness.start(
        harness.configs(command=command, max_restarts=1, limit_retry=0, down_after=0.2)
    )
    down = await harness.wait_kind("down")
    assert down.severity == "critical" and down.details["down_for_s"] >= 0.2
    assert harness.kinds().count("down") == 1


async def test_no_health_url_supervised_by_liveness(harness: Harness) -> None:
    command = f"{sys.executable} -c 'import time; time.sleep(60)'"
    await harness.start(harness.configs(command=command))
    await harness.wait_kind("healthy")
    pid = monitor_of(harness).process.pid
    psutil.Process(pid).kill()
    crashed = await harness.wait_kind("crashed")
    assert crashed.details["signal"] == "SIGKILL"
    await harness.wait_kind("healthy", count=2)


async def test_missing_executable_is_reported_and_limited(harness: Harness) -> None:
    await harness.start(
        harness.configs(command="/nonexistent/erp-backend", max_restarts=1, limit_retry=0)
    )
    await harness.wait_kind("restart-limit-reached")
    crashed = [e for e in harness.events if e.kind == "crashed"]
    assert "could not start" in crashed[0].message


async def test_stop_leaves_no_process_behind(harness: Harness) -> None:
    port = free_port()
    await harness.start(
        harness.configs(
            command=backend_command(
                port, "--spawn-grandchild", "--grandchild-setsid", "--ignore-sigterm"
            ),
            health_url=f"http://127.0.0.1:{port}/health",
            stop_timeout=0.3,
        )
    )
    await harness.wait_kind("healthy")
    monitor = monitor_of(harness)
    pids = monitor.process.tree_pids()
    assert len(pids) >= 2
    assert harness.supervisor is not None
    await harness.supervisor.stop()
    harness.supervisor = None
    assert not any(alive(pid) for pid in pids)
    assert harness.kinds()[-1] == "stopped"


async def test_start_order_waits_for_dependency(harness: Harness) -> None:
    port = free_port()
    configs = harness.configs(
        targets={
            "frontend": {
                "command": f"{sys.executable} -c 'import time; time.sleep(60)'",
                "after": "backend",
            },
            "backend": {
                "command": backend_command(port),
                "health_url": f"http://127.0.0.1:{port}/health",
            },
        }
    )
    assert [c.name for c in start_order(configs)] == ["backend", "frontend"]
    await harness.start(configs)
    await await_until(
        lambda: "frontend" in [e.target for e in harness.events if e.kind == "healthy"]
    )
    order = [(e.target, e.kind) for e in harness.events if e.kind in ("started", "healthy")]
    assert order.index(("backend", "healthy")) < order.index(("frontend", "started"))
    assert harness.supervisor is not None
    await harness.supervisor.stop()
    harness.supervisor = None
    stopped = [e.target for e in harness.events if e.kind == "stopped"]
    assert stopped == ["frontend", "backend"]


# On SIGTERM: leave a mark, then exit only once every sibling got its SIGTERM too (a stop
# one target after the other would have to SIGKILL the first), and note whether the target
# it depends on had already exited.
_SIBLING = """
import pathlib, signal, sys, time
here, name, after, siblings = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
def term(*_):
    (here / f"{name}.term").touch()
    (here / f"{name}.saw").write_text(str((here / f"{after}.exited").exists()))
    while not all((here / f"{s}.term").exists() for s in siblings):
        time.sleep(0.01)
    (here / f"{name}.exited").touch()
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
(here / f"{name}.up").touch()
while True:
    time.sleep(1)
"""


async def test_stop_takes_independent_targets_together_and_dependants_first(
    harness: Harness, tmp_path: Path
) -> None:
    script = tmp_path / "sibling.py"
    script.write_text(_SIBLING)
    workers = ["w1", "w2", "w3"]

    def command(name: str, after: str, *siblings: str) -> str:
        return shlex.join([sys.executable, str(script), str(tmp_path), name, after, *siblings])

    targets: dict[str, dict[str, str]] = {
        name: {"command": command(name, "-", *[w for w in workers if w != name])}
        for name in workers
    }
    targets["db"] = {"command": command("db", "app")}
    targets["app"] = {"command": command("app", "-"), "after": "db"}
    await harness.start(harness.configs(targets=targets, stop_timeout=20.0))
    names = [*workers, "db", "app"]
    await await_until(lambda: all((tmp_path / f"{name}.up").exists() for name in names))
    assert harness.supervisor is not None
    await harness.supervisor.stop()
    harness.supervisor = None
    stops = {e.target: e.details["stop"]["signal"] for e in harness.events if e.kind == "stopped"}
    assert stops == dict.fromkeys(names, "SIGTERM")  # none needed SIGKILL
    assert (tmp_path / "db.saw").read_text() == "True"  # app had exited before db's SIGTERM


_SLOW_TO_STOP = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))\n"
    "time.sleep(60)\n"
)


async def test_stop_finishes_every_target_when_one_stop_fails(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault in one target's stop must not leave another running, nor hide the fault."""
    script = tmp_path / "slow_to_stop.py"
    script.write_text(_SLOW_TO_STOP)
    command = shlex.join([sys.executable, str(script)])
    targets = {"broken": {"command": command}, "sound": {"command": command}}
    supervisor = await harness.start(harness.configs(targets=targets))
    await await_until(lambda: all(m.process.pid for m in supervisor.monitors.values()))
    sound_pid = supervisor.monitors["sound"].process.pid
    real_stop_one = supervisor._stop_one

    async def stop_one(name: str) -> None:
        if name == "broken":
            raise RuntimeError("stop failed")
        await real_stop_one(name)

    monkeypatch.setattr(supervisor, "_stop_one", stop_one)
    with pytest.raises(RuntimeError, match="stop failed"):
        await supervisor.stop()
    assert not alive(sound_pid)  # stop() returned only once the sound target was down
    assert any(e.kind == "stopped" and e.target == "sound" for e in harness.events)
    await real_stop_one("broken")
    harness.supervisor = None


def test_start_order_cycle_is_an_error() -> None:
    def cfg(name: str, after: tuple[str, ...]) -> TargetConfig:
        base = load_settings(command="x").targets_resolved()[0]
        return dataclasses.replace(base, name=name, after=after)

    with pytest.raises(ValueError, match="cycle"):
        start_order([cfg("a", ("b",)), cfg("b", ("a",))])


async def test_hang_right_after_restart_is_not_hidden_by_start_grace(
    harness: Harness, tmp_path: Path
) -> None:
    port, fault = await start_faulty_backend(harness, tmp_path, startup_grace=30.0)
    await harness.wait_kind("healthy")
    fault.write_text("hang")  # persists across restarts: the new process hangs at once
    await post(port, "/fault/crash")
    await harness.wait_kind("restarted")
    # Within a deadline far below the 30 s grace: the grace did not hide the hang.
    second = await harness.wait_kind("restarted", count=2, within=15)
    assert "unhealthy too long" in second.message


async def test_not_listening_yet_is_forgiven_during_start_grace(harness: Harness) -> None:
    port = free_port()  # nothing will ever listen there
    command = f"{sys.executable} -c 'import time; time.sleep(60)'"
    await harness.start(
        harness.configs(
            command=command,
            health_url=f"http://127.0.0.1:{port}/health",
            startup_grace=0.5,
        )
    )
    pid = monitor_of(harness).process.pid
    unhealthy = await harness.wait_kind("unhealthy", within=5)
    assert "connection refused" in unhealthy.message
    # Counted from the spawn, not from the first refused probe (the grace is the core's
    # unit test: test_core.py::test_failed_probe_in_grace_is_forgiven).
    assert "unhealthy_for_s" in unhealthy.details
    await harness.wait_kind("restarted", within=5)
    assert pid != monitor_of(harness).process.pid


async def test_crash_leaves_no_orphan_even_one_that_left_the_group(
    harness: Harness, tmp_path: Path
) -> None:
    port = free_port()
    await harness.start(
        harness.configs(
            command=backend_command(port, "--spawn-grandchild", "--grandchild-setsid"),
            health_url=f"http://127.0.0.1:{port}/health",
        )
    )
    await harness.wait_kind("healthy")
    out_log = tmp_path / "logs" / "backend.out.log"
    line = await await_until(
        lambda: next((x for x in out_log.read_text().splitlines() if "GRANDCHILD" in x), None)
    )
    grandchild = int(line.split()[1])
    assert alive(grandchild)
    # A monitor round since the grandchild started (every round reads the tree): without a
    # subreaper, one that left the group and is orphaned before any round is not findable
    # (a crash within one check of its start; CI under load crashed it in that window).
    process = harness.supervisor.monitors["backend"].process
    await await_until(lambda: grandchild in process._known, 5, what="the grandchild seen")
    await post(port, "/fault/crash")
    await harness.wait_kind("restarted")
    await await_until(lambda: not alive(grandchild), 5, what="orphan killed")


# --- named faults: each left a target unsupervised before the supervision core ---------


@pytest.mark.parametrize(
    ("command", "code", "probed"),
    [("sh -c 'exit 3'", 3, False), ("/bin/false", 1, False), ("sh -c 'exit 3'", 3, True)],
    ids=["sh-exit-3", "bin-false", "sh-exit-3-probed"],
)
async def test_command_that_exits_at_once_is_crashed_limited_and_down(
    harness: Harness, command: str, code: int, probed: bool
) -> None:
    extra = {"health_url": f"http://127.0.0.1:{free_port()}/health"} if probed else {}
    await harness.start(
        harness.configs(command=command, max_restarts=2, limit_retry=0, down_after=0.3, **extra)
    )
    await harness.wait_kind("restart-limit-reached")
    await harness.wait_kind("down")
    crashed = [e for e in harness.events if e.kind == "crashed"]
    assert len(crashed) == 3  # the first start and both restarts
    assert all(e.details["exit_code"] == code for e in crashed)
    assert "healthy" not in harness.kinds()
    assert monitor_of(harness).state is TargetState.FAILED


async def test_unopenable_child_log_is_a_failed_start_then_recovers(
    harness: Harness, tmp_path: Path
) -> None:
    blocker = tmp_path / "logs" / "backend.err.log"
    blocker.mkdir(parents=True)  # EISDIR when erpwatch opens it (root ignores chmod)
    port = free_port()
    await harness.start(
        harness.configs(
            command=backend_command(port),
            health_url=f"http://127.0.0.1:{port}/health",
            restart_backoff=0.05,
            restart_backoff_max=0.1,
            max_restarts=1000,
        )
    )
    crashed = await harness.wait_kind("crashed")
    assert "EISDIR" in crashed.message and "log files" in crashed.message
    blocker.rmdir()
    await harness.wait_kind("healthy")
    assert harness.supervisor is not None
    assert harness.supervisor.stalled(RealClock().now()) == []


async def test_emfile_while_the_backend_crashes_is_survived(tmp_path: Path) -> None:
    """In its own interpreter (it exhausts that process's descriptors on purpose)."""
    script = Path(__file__).with_name("emfile_scenario.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(tmp_path / "logs"),
        str(free_port()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["failed_starts_seen"] >= 1
    assert all("EMFILE" in m for m in result["emfile_messages"])
    # A probe may also fail for want of a descriptor before the kill ("unhealthy"): fine.
    assert result["kinds"][:2] == ["started", "healthy"] and "crashed" in result["kinds"], result
    assert result["kinds"][-2:] == ["restarted", "healthy"], result
    assert result["state"] == "healthy" and result["dead"] == [] and result["stalled"] == []
    # Repeated identical failures are bounded by the restart policy, not a flood.
    assert len(result["kinds"]) < 50


async def test_hang_restarted_within_threshold_although_probe_timeout_is_longer(
    harness: Harness, tmp_path: Path
) -> None:
    _port, fault = await start_faulty_backend(
        harness, tmp_path, check_interval=0.2, timeout_threshold=1.0, probe_timeout=30.0
    )
    await harness.wait_kind("healthy")
    fault.write_text("hang")
    unhealthy = await harness.wait_kind("unhealthy")
    restarted = await harness.wait_kind("restarted")
    fault.write_text("")
    # Decided by the core while the 30 s probe was still in flight, not by its timeout.
    assert "no answer for" in unhealthy.message
    assert "unhealthy too long" in restarted.message


async def test_hung_uvicorn_ignoring_sigterm_is_killed_after_the_hang_grace(
    harness: Harness, tmp_path: Path
) -> None:
    port, fault = free_port(), tmp_path / "fault"
    command = f"{sys.executable} -m watchdog.demo.erp_app --port {port} --fault-file {fault}"
    await harness.start(
        harness.configs(
            command=command,
            health_url=f"http://127.0.0.1:{port}/health",
            startup_grace=20.0,
            stop_timeout=60.0,  # a restart waiting for this would miss the deadline below
            hang_stop_timeout=0.5,
        )
    )
    await harness.wait_kind("healthy", within=20)
    fault.write_text("hang")  # blocks uvicorn's event loop: its SIGTERM handler never runs
    restarted = await harness.wait_kind("restarted", within=30)
    fault.write_text("")
    previous = restarted.details["previous_stop"]
    assert previous["signal"] == "SIGKILL"
    assert "SIGTERM ignored, SIGKILL after" in previous["escalation"]
    await harness.wait_kind("healthy", count=2, within=30)


# --- the cause reaches the events and /status ----------------------------------------------


async def test_failing_health_kit_check_names_itself_in_the_event_and_on_status(
    harness: Harness, tmp_path: Path
) -> None:
    """A backend's health kit (real, on uvicorn) whose database check fails like a driver."""
    postgres = Postgres()
    kit = HealthKit(checks={"database": postgres}, cache_ttl=0.0)
    async with serve_app(kit.app) as port:
        supervisor = await harness.start(
            harness.configs(
                command=f"{sys.executable} -c 'import time; time.sleep(600)'",
                health_url=f"http://127.0.0.1:{port}/status",
            )
        )
        await harness.wait_kind("healthy")
        postgres.down = True
        degraded = await harness.wait_kind("degraded")
        error = "ConnectionError: could not connect to postgres at 10.0.0.5:5432"
        assert degraded.message == f"degraded: database failed ({error})"
        (check,) = degraded.details["checks"]
        assert (check["name"], check["status"], check["error"]) == ("database", "failed", error)
        assert isinstance(check["latency_ms"], float)
        settings = load_settings(status_port=0, log_path=tmp_path / "logs", status_cache_ttl=0)
        server = StatusServer(settings, source=supervisor, store=harness.store, bus=harness.bus)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
                document = (await client.get("/status", params={"fresh": "1"})).json()
                incidents = (await client.get("/api/incidents")).json()["incidents"]
        finally:
            await server.stop()
    (target,) = document["targets"]
    assert target["label"] == "Degraded" and target["down_since"] is None
    assert target["cause"]["kind"] == "checks"
    assert target["cause"]["summary"] == f"database failed ({error})"
    assert [c["name"] for c in target["cause"]["checks"]] == ["database"]
    assert target["checks"][0]["error"] == error
    assert target["latencies"] and all(p["ms"] is not None for p in target["latencies"])
    assert target["latencies"][-1]["at"].endswith("Z")
    assert 0.0 < target["availability"]["24h"] <= 1.0  # starting counts as down
    assert target["silence"] is None and target["next_retry_at"] is None
    (incident,) = incidents
    assert incident["ended_at"] is None and incident["cause"]["kind"] == "checks"


async def test_crash_cause_is_the_backends_last_stderr_line(harness: Harness) -> None:
    port = free_port()
    await harness.start(
        harness.configs(
            command=backend_command(port),
            health_url=f"http://127.0.0.1:{port}/health",
            restart_backoff=30.0,
        )
    )
    await harness.wait_kind("healthy")
    await post(port, "/fault/crash")
    await harness.wait_kind("healthy", count=2)  # the first restart has no backoff
    await post(port, "/fault/crash")
    crashed = await harness.wait_kind("crashed", count=2)
    assert crashed.details["cause"] == f"exit code {CRASH_EXIT_CODE}: {CRASH_LINE}"
    status = await await_until(
        lambda: (s := monitor_of(harness).status()).state is TargetState.RESTARTING and s
    )
    assert status.cause is not None and status.cause["stderr_line"] == CRASH_LINE
    assert status.cause["exit_code"] == CRASH_EXIT_CODE and status.cause["kind"] == "crash"
    assert status.next_retry_in is not None and 0 < status.next_retry_in <= 30.0
    assert status.down_for is not None
