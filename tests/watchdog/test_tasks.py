"""TaskSupervisor on a FakeClock: faults are logged once, reported, restarted with backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from tests.helpers import await_until
from watchdog.clock import FakeClock
from watchdog.tasks import TaskSupervisor


async def reaches(count: Callable[[], int], n: int, what: str) -> None:
    await await_until(lambda: count() == n, what=what)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run (no time passes: this is not a sleep-and-hope)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Flaky:
    """A worker factory that raises ``fail`` times, then runs until cancelled."""

    def __init__(self, fail: int = 1_000_000, *, clock: FakeClock | None = None) -> None:
        self.fail = fail
        self.starts = 0
        self.clock = clock
        self.forever = asyncio.Event()

    async def __call__(self) -> None:
        self.starts += 1
        if self.starts <= self.fail:
            raise ValueError(f"boom {self.starts}")
        await self.forever.wait()


async def test_fault_restarts_with_doubling_backoff_capped() -> None:
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock, backoff=0.1, backoff_max=0.3)
    worker = Flaky()
    tasks.spawn("flaky", worker)
    await await_until(lambda: tasks.dead() == ["flaky"], what="first fault")
    for starts, delay in enumerate((0.1, 0.2, 0.3, 0.3), start=1):
        assert worker.starts == starts
        clock.advance(delay - 0.01)
        await settle()
        assert worker.starts == starts, f"restarted before its {delay}s backoff"
        assert tasks.dead() == ["flaky"] and not tasks.running("flaky")
        clock.advance(0.01)
        await reaches(lambda: worker.starts, starts + 1, what=f"restart {starts}")
    assert tasks.faults() == {"flaky": 5}
    await tasks.stop()


async def test_backoff_starts_over_after_a_stable_run() -> None:
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock, backoff=1.0, backoff_max=8.0, stable_after=60.0)
    starts = 0

    async def worker() -> None:
        nonlocal starts
        starts += 1
        if starts == 4:
            await clock.sleep(60.0)  # a long, healthy run before the next fault
        raise RuntimeError("again")

    tasks.spawn("w", worker)
    for run, delay in enumerate((1.0, 2.0, 4.0), start=1):
        await await_until(lambda: tasks.dead() == ["w"], what="fault")
        assert starts == run
        clock.advance(delay)
        await reaches(lambda: starts, run + 1, what=f"restart {run}")
    assert tasks.running("w")
    clock.advance(60.0)
    await await_until(lambda: tasks.dead() == ["w"], what="fault after the stable run")
    clock.advance(1.0)  # back to the first backoff, not 8 s
    await await_until(lambda: starts == 5, what="quick restart")
    await tasks.stop()


async def test_on_fault_gets_name_and_exception() -> None:
    clock = FakeClock()
    reported: list[tuple[str, BaseException]] = []

    async def on_fault(name: str, exc: BaseException) -> None:
        reported.append((name, exc))

    tasks = TaskSupervisor(clock=clock, on_fault=on_fault)
    tasks.spawn("flaky", Flaky(fail=1))
    await await_until(lambda: reported, what="the fault report")
    ((name, exc),) = reported
    assert name == "flaky" and isinstance(exc, ValueError) and str(exc) == "boom 1"
    await settle()
    clock.advance(0.1)
    await await_until(lambda: tasks.running("flaky"), what="restarted")
    assert tasks.dead() == [] and len(reported) == 1
    await tasks.stop()


async def test_raising_on_fault_is_logged_and_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    calls = 0

    async def on_fault(name: str, exc: BaseException) -> None:
        nonlocal calls
        calls += 1
        raise OSError("bus is gone")

    tasks = TaskSupervisor(clock=clock, on_fault=on_fault)
    worker = Flaky(fail=2)
    tasks.spawn("flaky", worker)
    for run, delay in enumerate((0.1, 0.2), start=1):
        await await_until(lambda: tasks.dead() == ["flaky"], what="fault")
        await settle()
        clock.advance(delay)
        await reaches(lambda: worker.starts, run + 1, what=f"restart {run}")
    await await_until(lambda: tasks.running("flaky"), what="running after two faults")
    assert calls == 2
    failures = [r for r in caplog.records if "reporting its fault failed" in r.getMessage()]
    assert len(failures) == 2 and failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], OSError)
    await tasks.stop()


async def test_normal_return_is_done_not_restarted() -> None:
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock)
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    tasks.spawn("once", once)
    await asyncio.wait_for(tasks.join("once"), timeout=5)
    clock.advance(3600)
    await settle()
    assert runs == 1
    assert not tasks.running("once") and tasks.dead() == []
    assert tasks.faults() == {"once": 0}


async def test_join_waits_for_the_worker_and_unknown_returns_at_once() -> None:
    tasks = TaskSupervisor(clock=FakeClock())
    await asyncio.wait_for(tasks.join("nobody"), timeout=1)
    worker = Flaky(fail=0)
    tasks.spawn("w", worker)
    joined = asyncio.create_task(tasks.join("w"))
    await settle()
    assert not joined.done() and tasks.running("w")
    joined.cancel()  # cancelling a joiner leaves the worker alone
    await settle()
    assert tasks.running("w")
    worker.forever.set()
    await asyncio.wait_for(tasks.join("w"), timeout=5)
    assert not tasks.running("w")


async def test_cancel_one_worker_is_not_a_fault() -> None:
    tasks = TaskSupervisor(clock=FakeClock())
    tasks.spawn("a", Flaky(fail=0))
    tasks.spawn("b", Flaky(fail=0))
    await await_until(lambda: tasks.running("a") and tasks.running("b"), what="both running")
    await asyncio.wait_for(tasks.cancel("a"), timeout=5)
    assert not tasks.running("a") and tasks.running("b")
    assert tasks.faults() == {"a": 0, "b": 0} and tasks.dead() == []
    await asyncio.wait_for(tasks.cancel("unknown"), timeout=1)
    await tasks.stop()


async def test_stop_cancels_all_including_one_waiting_for_its_restart() -> None:
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock)
    tasks.spawn("steady", Flaky(fail=0))
    flaky = Flaky()
    tasks.spawn("flaky", flaky)
    await await_until(lambda: tasks.dead() == ["flaky"], what="fault")
    await asyncio.wait_for(tasks.stop(), timeout=5)
    assert not tasks.running("steady") and not tasks.running("flaky")
    assert tasks.dead() == []
    clock.advance(60)
    await settle()
    assert flaky.starts == 1


async def test_faults_counted_per_worker() -> None:
    clock = FakeClock()
    tasks = TaskSupervisor(clock=clock)
    one, three = Flaky(fail=1), Flaky(fail=3)
    tasks.spawn("one", one)
    tasks.spawn("three", three)
    tasks.spawn("none", Flaky(fail=0))
    while one.starts < 2 or three.starts < 4:
        await await_until(lambda: tasks.dead(), what="a worker waiting for its restart")
        clock.advance(30.0)
        await settle()
    assert tasks.running("one") and tasks.running("three") and tasks.running("none")
    assert tasks.faults() == {"one": 1, "three": 3, "none": 0}
    await tasks.stop()


async def test_each_fault_logs_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    seen: list[BaseException] = []

    async def on_fault(name: str, exc: BaseException) -> None:
        seen.append(exc)

    tasks = TaskSupervisor(clock=clock, on_fault=on_fault)
    worker = Flaky(fail=3)
    tasks.spawn("flaky", worker)
    while not tasks.running("flaky") or worker.starts < 4:
        await await_until(lambda: tasks.dead() or tasks.running("flaky"), what="progress")
        await settle()
        clock.advance(1.0)
        await settle()
    with_traceback = [r for r in caplog.records if r.exc_info is not None]
    assert [r.exc_info[1] for r in with_traceback if r.exc_info] == seen
    assert [str(e) for e in seen] == ["boom 1", "boom 2", "boom 3"]
    for n in (1, 2, 3):
        assert caplog.text.count(f"ValueError: boom {n}") == 1
    assert all(r.levelno == logging.ERROR and "flaky" in r.getMessage() for r in with_traceback)
    await tasks.stop()


async def test_worker_name_is_the_task_name_and_reusable_once_done() -> None:
    tasks = TaskSupervisor(clock=FakeClock())
    worker = Flaky(fail=0)
    tasks.spawn("named", worker)
    await settle()
    assert "named" in {t.get_name() for t in asyncio.all_tasks()}
    with pytest.raises(ValueError, match="already running"):
        tasks.spawn("named", Flaky(fail=0))
    worker.forever.set()
    await tasks.join("named")
    again = Flaky(fail=0)
    tasks.spawn("named", again)
    await await_until(lambda: tasks.running("named"), what="reused name")
    await tasks.stop()
