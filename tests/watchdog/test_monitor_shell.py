"""The monitor shell on fake time, with a fake process, prober and bus: every edge of the I/O
around the core, without real time or real children (those are in test_monitor.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from watchdog.clock import FakeClock
from watchdog.config import load_settings
from watchdog.core import Hold, Release, RestartRequest
from watchdog.events import Event
from watchdog.monitor import EXIT_SETTLE_S, LATENCY_HISTORY, TargetMonitor
from watchdog.probe import CheckResult, ProbeResult, ProbeStatus
from watchdog.process import ExitInfo, ProcessStartError, StopReport
from watchdog.settings import TargetConfig
from watchdog.states import TargetState
from watchdog.tasks import TaskSupervisor

CONFIG = dict(
    command="backend --port 1",
    health_url="http://127.0.0.1:1/health",
    check_interval=0.2,
    timeout_threshold=1.0,
    probe_timeout=5.0,  # longer than the threshold on purpose
    startup_grace=2.0,
    restart_backoff=0.5,
    restart_window=60.0,
    stop_timeout=10.0,
    hang_stop_timeout=0.5,
    down_after=30.0,
    max_restarts=3,
)


def target(**overrides: Any) -> TargetConfig:
    return load_settings(**{**CONFIG, **overrides}).targets_resolved()[0]


class FakeProcess:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.stop_timeout = 10.0
        self.starts = 0
        self.start_errors: list[Exception] = []
        self.stops: list[tuple[float, float]] = []  # (clock time, grace)
        self.ignore_sigterm = False
        self.stop_errors: list[Exception] = []
        self.stop_gate: asyncio.Event | None = None  # while unset, a stop is under way
        self._exit: asyncio.Future[ExitInfo] | None = None
        self.clock: FakeClock | None = None

    @property
    def running(self) -> bool:
        return self._exit is not None and not self._exit.done()

    async def start(self) -> int:
        if self.start_errors:
            raise self.start_errors.pop(0)
        self.starts += 1
        self.pid = 1000 + self.starts
        self._exit = asyncio.get_running_loop().create_future()
        return self.pid

    async def wait(self) -> ExitInfo:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    def exit(self, code: int) -> None:
        assert self._exit is not None and self.pid is not None
        self._exit.set_result(ExitInfo(self.pid, code, None, ("boom",)))

    async def stop_tree(self, grace: float | None = None) -> StopReport:
        assert self.clock is not None and grace is not None
        self.stops.append((self.clock.now(), grace))
        if self.stop_errors:
            raise self.stop_errors.pop(0)
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        if not self.running:
            return StopReport(None, escalated=False, after=0.0)
        self.exit(-9 if self.ignore_sigterm else -15)
        assert self._exit is not None
        return StopReport(
            self._exit.result(),
            escalated=self.ignore_sigterm,
            after=grace if self.ignore_sigterm else 0.01,
        )

    def tree_pids(self) -> list[int]:
        return [self.pid] if self.running and self.pid else []

    def rotate_logs(self) -> None:
        pass


class FakeProber:
    """Answers OK at once, or hangs (never answers) while ``hang`` is set."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.hang = False
        self.status = ProbeStatus.OK
        self.status_code: int | None = 200
        self.reason = "HTTP 200"
        self.checks: tuple[CheckResult, ...] = ()
        self.sent: list[float] = []

    async def check(self) -> ProbeResult:
        self.sent.append(self.clock.now())
        if self.hang:
            await asyncio.Event().wait()
        now = self.clock.now()
        return ProbeResult(
            self.status, 0.001, self.status_code, self.reason, now, checks=self.checks
        )


class FakeBus:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.gate: asyncio.Event | None = None  # while set to an unset Event, publish waits
        self.fail = False

    async def publish(self, event: Event) -> Event:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError(28, "No space left on device")
        self.events.append(event)
        return event

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


class Rig:
    def __init__(self, resources: Any = None, **overrides: Any) -> None:
        self.clock = FakeClock(start=0.0)
        self.process = FakeProcess()
        self.process.clock = self.clock
        self.prober = FakeProber(self.clock)
        self.bus = FakeBus()
        self.monitor = TargetMonitor(
            target(**overrides),
            self.bus,
            clock=self.clock,
            process=self.process,
            prober=self.prober,
            resources=resources,
        )
        self.task: asyncio.Task[None] | None = None

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move fake time in small steps, letting the loop run after each."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            await self.settle()

    async def start(self) -> None:
        self.task = asyncio.create_task(self.monitor.run())
        await self.settle()

    async def close(self) -> None:
        self.monitor.stop()
        await self.settle()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    yield r
    await r.close()


async def test_started_then_healthy(rig: Rig) -> None:
    await rig.start()
    assert rig.bus.kinds() == ["started", "healthy"]
    assert rig.monitor.state is TargetState.HEALTHY


async def test_exit_while_the_started_event_is_committed_is_a_crash() -> None:
    rig = Rig()
    rig.bus.gate = asyncio.Event()
    await rig.start()
    assert rig.bus.kinds() == []  # "started" is being committed
    rig.process.exit(3)  # ... and the child dies meanwhile
    rig.bus.gate.set()
    await rig.settle()
    assert rig.bus.kinds()[:3] == ["started", "crashed", "restarted"]
    assert rig.process.starts == 2
    await rig.close()


async def test_spawn_emfile_is_recorded_and_retried_until_it_works(rig: Rig) -> None:
    emfile = ProcessStartError("cannot start backend: 'backend': EMFILE: Too many open files")
    rig.process.start_errors = [emfile, emfile]
    await rig.start()
    assert rig.bus.kinds()[0] == "crashed"
    assert "EMFILE" in rig.bus.events[0].message
    await rig.advance(2.0)
    assert rig.process.starts == 1
    assert rig.bus.kinds()[-2:] == ["restarted", "healthy"]


async def test_any_exception_from_spawn_is_an_observation(rig: Rig) -> None:
    rig.process.start_errors = [PermissionError(13, "Permission denied")]
    await rig.start()
    assert rig.bus.kinds()[0] == "crashed"
    await rig.advance(1.0)
    assert rig.monitor.state is TargetState.HEALTHY


async def test_hang_is_restarted_within_threshold_whatever_probe_timeout(rig: Rig) -> None:
    await rig.start()
    await rig.advance(0.5)
    last_ok = rig.prober.sent[-1]
    rig.prober.hang = True
    await rig.advance(2.0)
    assert rig.process.stops, "a hang must be restarted"
    stopped_at, grace = rig.process.stops[0]
    config = rig.monitor.config
    assert stopped_at - last_ok <= config.timeout_threshold + config.check_interval + 0.3
    assert grace == config.hang_stop_timeout
    assert "unhealthy" in rig.bus.kinds()


async def test_sigkill_escalation_is_recorded(rig: Rig) -> None:
    rig.process.ignore_sigterm = True
    await rig.start()
    await rig.advance(0.5)
    rig.prober.hang = True
    await rig.advance(2.0)
    rig.prober.hang = False
    await rig.advance(1.0)
    restarted = next(e for e in rig.bus.events if e.kind == "restarted")
    assert restarted.details["previous_stop"]["signal"] == "SIGKILL"
    assert "SIGKILL after 0.5s" in restarted.details["previous_stop"]["escalation"]


async def test_failing_stop_is_reported_and_retried_never_two_children(rig: Rig) -> None:
    await rig.start()
    rig.process.stop_errors = [PermissionError(1, "Operation not permitted")] * 2
    rig.monitor.request_restart("test")
    await rig.advance(3.0)
    assert rig.bus.kinds().count("stop-failed") == 1
    assert len(rig.process.stops) == 3  # failed, failed, done
    assert rig.process.starts == 2  # the new child only after the old one was gone


async def test_store_failure_does_not_stop_supervision(rig: Rig) -> None:
    await rig.start()
    rig.bus.fail = True
    rig.process.exit(1)
    await rig.advance(1.0)
    assert rig.process.starts == 2  # restarted although no event could be recorded
    assert rig.monitor.state is TargetState.HEALTHY


async def test_monitor_fault_is_contained_and_it_resumes_without_a_second_child() -> None:
    rig = Rig()
    faults: list[str] = []

    async def on_fault(name: str, exc: BaseException) -> None:
        faults.append(f"{name}: {exc}")

    tasks = TaskSupervisor(clock=rig.clock, on_fault=on_fault, backoff=0.1)
    tasks.spawn("monitor:backend", rig.monitor.run)
    await rig.settle()
    assert rig.monitor.state is TargetState.HEALTHY
    original = rig.monitor.core.decide
    calls = 0

    def broken(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the core")
        return original(*args)

    rig.monitor.core.decide = broken  # type: ignore[method-assign,assignment]
    await rig.advance(0.3)
    assert faults == ["monitor:backend: a bug in the core"]
    await rig.advance(1.0)
    assert tasks.dead() == []
    assert rig.process.starts == 1  # resumed watching the same child
    rig.process.exit(1)
    await rig.advance(1.0)
    assert rig.process.starts == 2  # and still acts on a crash
    rig.monitor.stop()
    await rig.settle()
    await tasks.stop()


async def test_stalled_when_the_loop_stops_going_round(rig: Rig) -> None:
    await rig.start()
    now = rig.clock.now()
    assert not rig.monitor.stalled(now)
    limit = 3 * rig.monitor.max_tick + 1.0
    assert rig.monitor.stalled(rig.monitor.last_tick + limit + 0.01)


async def test_shutdown_stops_the_child_and_ends_the_loop(rig: Rig) -> None:
    await rig.start()
    rig.monitor.stop()
    await rig.settle()
    assert rig.task is not None and rig.task.done()
    assert rig.bus.kinds()[-1] == "stopped"
    assert rig.process.stops[-1][1] == rig.monitor.config.stop_timeout


async def test_rss_sample_over_the_cap_restarts_the_current_child() -> None:
    samples: dict[str, dict[str, Any]] = {}
    rig = Rig(resources=samples.get, rss_limit_mb=100, restart_on_rss=True)
    await rig.start()
    pid = rig.process.pid
    samples["backend"] = {"pids": [pid], "rss_mb": 50.0, "ts": "t1"}
    await rig.advance(0.5)
    assert rig.process.starts == 1
    samples["backend"] = {"pids": [pid], "rss_mb": 150.0, "ts": "t2"}
    await rig.advance(0.5)
    assert rig.process.starts == 2
    restarted = next(e for e in rig.bus.events if e.kind == "restarted")
    assert "memory (RSS) 150 MB over the 100 MB limit" in restarted.message
    await rig.advance(1.0)  # the same (stale) sample never restarts the new child
    assert rig.process.starts == 2
    await rig.close()


# --- operator requests -------------------------------------------------------------------


async def _operate(rig: Rig, obs: Any) -> Any:
    task = asyncio.create_task(rig.monitor.operate(obs))
    for _ in range(40):
        await rig.advance(0.05)
        if task.done():
            break
    assert task.done(), "the request was never carried out"
    return task.result()


async def test_operator_stop_holds_then_start_releases(rig: Rig) -> None:
    holds: list[Any] = []

    async def on_hold(name: str, held: Any) -> None:
        holds.append(held)

    rig.monitor._on_hold = on_hold
    await rig.start()
    outcome = await _operate(rig, Hold("operator (ops)", "upgrade", "2026-12-01T10:00:00Z"))
    assert outcome.ok and outcome.message.startswith("stopped, whole tree gone")
    assert rig.monitor.state is TargetState.STOPPED and not rig.process.running
    assert holds[-1]["actor"] == "operator (ops)"
    rig.process.start_errors = []
    await rig.advance(2.0)
    assert rig.process.starts == 1  # held: never restarted
    outcome = await _operate(rig, Release("operator (ops)"))
    assert outcome.ok and outcome.message == f"started, pid {rig.process.pid}"
    assert holds[-1] is None
    assert rig.bus.kinds()[-2:] == ["started", "healthy"]
    assert rig.bus.events[-2].message == "started by operator (ops)"


async def test_operator_restart_is_immediate_uncounted_and_names_the_actor(rig: Rig) -> None:
    await rig.start()
    old = rig.process.pid
    outcome = await _operate(rig, RestartRequest("deploy", counted=False, actor="operator (ops)"))
    assert outcome.ok and outcome.pid != old
    restarted = next(e for e in rig.bus.events if e.kind == "restarted")
    assert restarted.message == "restarted (by operator (ops): deploy)"
    assert restarted.details["actor"] == "operator (ops)"
    assert rig.monitor.core_state is not None and rig.monitor.core_state.restarts == ()


async def test_start_of_a_running_target_says_so(rig: Rig) -> None:
    await rig.start()
    outcome = await _operate(rig, Release("operator"))
    assert outcome.ok and outcome.message == f"already running, pid {rig.process.pid}"


async def test_a_failing_start_is_reported_as_failed(rig: Rig) -> None:
    await rig.start()
    await _operate(rig, Hold("operator"))
    rig.process.start_errors = [ProcessStartError("cannot start backend: 'x': ENOENT")]
    outcome = await _operate(rig, Release("operator"))
    assert not outcome.ok and "ENOENT" in outcome.message


async def test_a_hold_kept_in_the_store_is_not_started() -> None:
    rig = Rig()
    rig.monitor.held_at_start = {"actor": "operator", "reason": "", "since": "x"}
    await rig.start()
    assert rig.process.starts == 0 and rig.monitor.state is TargetState.STOPPED
    assert rig.bus.kinds() == ["stopped"]
    await rig.close()


# --- what the status shows: probes, the stop under way, the next retry, the cause ----------


async def test_latency_history_is_bounded_and_an_unanswered_probe_has_no_ms(rig: Rig) -> None:
    await rig.start()
    await rig.advance(8.0)  # check_interval 0.2: ~40 probes
    history = rig.monitor.status().latencies
    assert len(history) == LATENCY_HISTORY
    ages = [age for age, _ms, _status in history]
    assert ages == sorted(ages, reverse=True)  # oldest first
    assert {(ms, status) for _age, ms, status in history} == {(1.0, "ok")}
    rig.prober.status, rig.prober.status_code = ProbeStatus.FAILED, None
    rig.prober.reason = "connection refused"
    await rig.advance(0.2 + EXIT_SETTLE_S)  # refused while running: it waits for an exit first
    _age, ms, status = rig.monitor.status().latencies[-1]
    assert (ms, status) == (None, "failed")
    entry = rig.monitor.status().to_dict()["latencies"][-1]
    assert (entry["ms"], entry["ok"], entry["status"]) == (None, False, "failed")


async def test_the_pid_being_stopped_is_shown_while_restarting(rig: Rig) -> None:
    await rig.start()
    old = rig.process.pid
    rig.process.stop_gate = asyncio.Event()
    rig.monitor.request_restart("test")
    await rig.settle()
    status = rig.monitor.status()
    assert status.state is TargetState.RESTARTING and status.stopping_pid == old
    rig.process.stop_gate.set()
    await rig.advance(1.0)
    status = rig.monitor.status()
    assert status.stopping_pid is None and status.pid == rig.process.pid != old


async def test_limit_events_and_status_carry_the_next_retry_and_down_since() -> None:
    rig = Rig(max_restarts=0, limit_retry=120.0, down_after=5.0)
    await rig.start()
    await rig.advance(1.0)
    rig.process.exit(1)  # stderr tail ("boom",)
    await rig.settle()
    limit = next(e for e in rig.bus.events if e.kind == "restart-limit-reached")
    assert limit.details["next_retry_in_s"] == 120.0
    retry_at = datetime.fromisoformat(limit.details["next_retry_at"])
    assert limit.details["next_retry_at"].endswith("Z")
    assert retry_at - limit.ts == pytest.approx(timedelta(seconds=120), abs=timedelta(seconds=1))
    crashed = next(e for e in rig.bus.events if e.kind == "crashed")
    assert crashed.details["cause"] == "exit code 1: boom"
    await rig.advance(6.0)
    down = next(e for e in rig.bus.events if e.kind == "down")
    assert down.details["next_retry_in_s"] == pytest.approx(115.0, abs=0.1)  # at crash + 5 s
    status = rig.monitor.status()
    assert status.state is TargetState.FAILED
    assert status.next_retry_in == pytest.approx(114.0, abs=0.2)
    assert status.down_for == pytest.approx(6.0, abs=0.2)
    assert status.cause is not None and status.cause["kind"] == "limit"
    assert status.cause["exit_code"] == 1 and status.cause["stderr_line"] == "boom"
    await rig.close()


async def test_failing_checks_reach_the_event_and_the_status(rig: Rig) -> None:
    await rig.start()
    error = "ConnectionError: could not connect to postgres"
    rig.prober.status, rig.prober.reason = ProbeStatus.DEGRADED, "body status: degraded"
    rig.prober.checks = (CheckResult("database", "failed", error, 3.5),)
    await rig.advance(0.4)
    degraded = next(e for e in rig.bus.events if e.kind == "degraded")
    assert degraded.message == f"degraded: database failed ({error})"
    check = {"name": "database", "status": "failed", "error": error, "latency_ms": 3.5}
    assert degraded.details["checks"] == [check]
    status = rig.monitor.status()
    assert status.checks == [check]
    assert status.cause is not None and status.cause["checks"] == [check]
    assert status.down_for is None  # degraded counts as up
    rig.prober.status, rig.prober.reason, rig.prober.checks = ProbeStatus.OK, "HTTP 200", ()
    await rig.advance(0.4)
    assert rig.monitor.status().cause is None and rig.monitor.status().checks == []
