"""Supervisor.reload and operate with real children: keep, add, remove, change, hold."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import await_until, free_port
from tests.watchdog.test_monitor import (
    Harness,
    alive,
    backend_command,
    monitor_of,
    start_faulty_backend,
)
from watchdog.states import TargetState
from watchdog.supervisor import Supervisor, UnknownTarget

SLEEP = f"{sys.executable} -c 'import time; time.sleep(120)'"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.close()


def targets(h: Harness, **commands: str) -> Any:
    return h.configs(targets={name: {"command": cmd} for name, cmd in commands.items()})


async def running(sup: Supervisor, *names: str) -> None:
    await await_until(
        lambda: all(sup.monitors[n].state is TargetState.HEALTHY for n in names),
        what=f"{names} healthy",
    )


async def test_reload_keeps_unchanged_adds_removes_and_restarts_changed(harness: Harness) -> None:
    sup = await harness.start(targets(harness, keep=SLEEP, change=SLEEP, drop=SLEEP))
    await running(sup, "keep", "change", "drop")
    pids = {name: sup.monitors[name].process.pid for name in ("keep", "change", "drop")}
    new = targets(harness, keep=SLEEP, change=SLEEP + " # v2", add=SLEEP)
    report = await sup.reload(new)
    assert report.unchanged == ["keep"]
    assert report.restarted == ["change"]
    assert report.removed == ["drop"]
    assert report.added == ["add"]
    await running(sup, "keep", "change", "add")
    assert sup.monitors["keep"].process.pid == pids["keep"]  # left alone: same process
    assert sup.monitors["change"].process.pid != pids["change"]
    assert pids["drop"] is not None and not alive(pids["drop"])
    assert pids["change"] is not None and not alive(pids["change"])
    assert "drop" not in sup.monitors


async def test_reload_applies_supervision_settings_in_place(harness: Harness) -> None:
    sup = await harness.start(targets(harness, app=SLEEP))
    await running(sup, "app")
    pid = sup.monitors["app"].process.pid
    new = harness.configs(targets={"app": {"command": SLEEP, "max_restarts": 9}})
    report = await sup.reload(new)
    assert report.updated == ["app"]
    assert sup.monitors["app"].process.pid == pid
    assert sup.monitors["app"].core.params.max_restarts == 9


async def test_a_reload_replacing_the_prober_mid_probe_probes_again_and_restarts_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    slow = {"probe_timeout": 2.0, "timeout_threshold": 1.0, "degraded_latency": 1.5}
    port, fault = await start_faulty_backend(harness, tmp_path, **slow)
    await harness.wait_kind("healthy")
    fault.write_text("slow:0.3")  # a probe is in flight most of the time
    mon = monitor_of(harness)
    pid = mon.process.pid
    await await_until(lambda: mon._probe_task is not None, what="a probe in flight")
    new = harness.configs(
        command=shlex.join(mon.config.argv),
        health_url=f"http://127.0.0.1:{port}/health",
        **{**slow, "probe_timeout": 2.5},  # a new prober, the same process
    )
    reloaded_at = mon._clock.now()
    report = await harness.supervisor.reload(new)  # type: ignore[union-attr]
    assert report.restarted == [] and mon.prober is not None
    # The cancelled probe's answer never comes: the new prober probes again, and the
    # target stays healthy, same process (it used to be restarted as hung).
    await await_until(
        lambda: mon.last_probe is not None and mon.last_probe.sent > reloaded_at,
        what="a probe answered after the reload",
    )
    assert mon.process.pid == pid and "unhealthy" not in harness.kinds("backend")


def hung_dependency(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """``a`` hangs on /health until its fault file is emptied; ``b`` starts AFTER it; ``c``
    is independent but listed last."""
    port, fault = free_port(), tmp_path / "fault"
    fault.write_text("hang")
    a = {
        "command": backend_command(port, "--fault-file", str(fault)),
        "health_url": f"http://127.0.0.1:{port}/health",
    }
    return fault, {"a": a, "b": {"command": SLEEP, "after": "a"}, "c": {"command": SLEEP}}


def configs_of(h: Harness, targets: dict[str, dict[str, str]]) -> Any:
    return h.configs(startup_grace=60.0, targets=targets)


async def test_an_independent_target_never_waits_for_anothers_dependency(
    harness: Harness, tmp_path: Path
) -> None:
    fault, targets = hung_dependency(tmp_path)
    sup = await asyncio.wait_for(harness.start(configs_of(harness, targets)), 30)
    await running(sup, "c")  # it waited for "a" (listed after "b", which waits for "a")
    assert not sup.monitors["a"].healthy.is_set() and "b" not in sup._started
    fault.write_text("")
    await running(sup, "a", "b")


async def test_a_reload_removing_a_waiting_target_leaves_the_others_starting(
    harness: Harness, tmp_path: Path
) -> None:
    fault, targets = hung_dependency(tmp_path)
    targets["d"] = {"command": SLEEP, "after": "a"}
    sup = await asyncio.wait_for(harness.start(configs_of(harness, targets)), 30)
    del targets["b"]
    report = await sup.reload(configs_of(harness, targets))
    assert report.removed == ["b"]
    fault.write_text("")
    await running(sup, "a", "c", "d")  # "d" never started: the start order had died
    assert sup.stalled(0.0) == []


async def test_a_reload_changing_a_waiting_target_starts_it_once_with_the_new_command(
    harness: Harness, tmp_path: Path
) -> None:
    fault, targets = hung_dependency(tmp_path)
    sup = await asyncio.wait_for(harness.start(configs_of(harness, targets)), 30)
    targets["b"] = {"command": SLEEP + " # v2", "after": "a"}
    report = await sup.reload(configs_of(harness, targets))
    assert report.restarted == ["b"]
    fault.write_text("")
    await running(sup, "a", "b", "c")
    assert sup.monitors["b"].config.argv[-2:] == ("#", "v2")
    assert sup.stalled(0.0) == []  # no failed start ("monitor:b is already running")


async def test_reload_with_a_cycle_changes_nothing(harness: Harness) -> None:
    sup = await harness.start(targets(harness, a=SLEEP))
    await running(sup, "a")
    pid = sup.monitors["a"].process.pid
    bad = harness.configs(
        targets={"a": {"command": SLEEP, "after": "b"}, "b": {"command": SLEEP, "after": "a"}}
    )
    with pytest.raises(ValueError, match="cycle"):
        await sup.reload(bad)
    assert list(sup.monitors) == ["a"] and sup.monitors["a"].process.pid == pid


async def test_operate_stop_start_restart_and_refuse_unknown(harness: Harness) -> None:
    sup = await harness.start(targets(harness, app=SLEEP))
    await running(sup, "app")
    first = sup.monitors["app"].process.pid
    (stopped,) = await sup.operate("stop", ["app"], reason="upgrade", actor="operator (t)")
    assert stopped.ok and "whole tree gone" in stopped.message
    assert first is not None and not alive(first)
    assert sup.monitors["app"].state is TargetState.STOPPED
    (started,) = await sup.operate("start", ["APP"], actor="operator (t)")
    assert started.ok and started.pid is not None and alive(started.pid)
    (restarted,) = await sup.operate("restart", [], reason="deploy", actor="operator (t)")
    assert restarted.ok and restarted.pid != started.pid
    with pytest.raises(UnknownTarget, match="unknown target 'nosuch'"):
        await sup.operate("restart", ["nosuch"])
    kinds = harness.kinds("app")
    assert "crashed" not in kinds and "restart-limit-reached" not in kinds
