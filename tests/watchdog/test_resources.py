from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import wait_until
from watchdog import process, resources
from watchdog.config import load_settings
from watchdog.events import SYSTEM_TARGET, Event, Kind
from watchdog.resources import (
    HostSampler,
    ResourceMonitor,
    ThresholdTracker,
    Transition,
    TreeSampler,
    default_paths,
)

# A child whose memory the test controls: "alloc N" holds N more MiB (pages touched),
# "free" drops them, "spawn" starts a sleeping grandchild, "reap" kills and reaps the
# grandchildren; every command is answered.
HOG = r"""
import subprocess, sys
held, kids = [], []
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "alloc":
        held.append(b"x" * (int(arg[0]) * 1024 * 1024))
    elif cmd == "free":
        held.clear()
    elif cmd == "reap":
        for kid in kids:
            kid.kill()
            kid.wait()
        kids.clear()
    elif cmd == "spawn":
        kids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        print(kids[-1].pid, flush=True)
        continue
    print("ok", flush=True)
"""


class Hog:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        # Started (in its command loop): its descriptors and threads no longer change, so a
        # sample and a reading after it agree (a sample during its start-up once saw 4 fds
        # where the reading after it saw 3).
        assert self.send("free") == "ok"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send("reap")
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def hog() -> Iterator[Hog]:
    child = Hog()
    yield child
    child.close()


class ListBus:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> Event:
        committed = event.with_id(len(self.events) + 1)
        self.events.append(committed)
        return committed


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1024 / 1024


# --- ThresholdTracker, edge by edge ---------------------------------------------------------


def test_tracker_below_threshold_stays_quiet() -> None:
    tracker = ThresholdTracker(90, 5)
    assert [tracker.update(v) for v in (10, 50, 89.9, 90)] == [None, None, None, None]
    assert not tracker.active


def test_tracker_crossing_above_warns_once() -> None:
    tracker = ThresholdTracker(90, 5)
    assert tracker.update(90.1) is Transition.WARNING
    assert tracker.active
    assert tracker.update(99) is None


def test_tracker_hovering_at_the_line_does_not_flood() -> None:
    tracker = ThresholdTracker(90, 5)
    changes = [tracker.update(v) for v in (91, 89, 91, 86, 90.5, 85.1, 92)]
    assert changes == [Transition.WARNING, None, None, None, None, None, None]


def test_tracker_recovers_only_below_threshold_minus_hysteresis() -> None:
    tracker = ThresholdTracker(90, 5)
    tracker.update(95)
    assert tracker.update(85) is None  # exactly at the clear line: still warning
    assert tracker.update(84.9) is Transition.OK
    assert not tracker.active
    assert tracker.update(89) is None


def test_tracker_warns_again_after_recovery() -> None:
    tracker = ThresholdTracker(90, 5)
    assert [tracker.update(v) for v in (95, 80, 95, 80)] == [
        Transition.WARNING,
        Transition.OK,
        Transition.WARNING,
        Transition.OK,
    ]


def test_tracker_without_hysteresis_flips_at_the_line() -> None:
    tracker = ThresholdTracker(90, 0)
    assert [tracker.update(v) for v in (91, 90, 89.9)] == [Transition.WARNING, None, Transition.OK]


# --- samplers on real processes -----------------------------------------------------------


def test_host_sampler_shape(tmp_path: Path) -> None:
    sampler = HostSampler([tmp_path / "logs" / "not-yet", tmp_path])
    first = sampler.sample()
    assert first["cpu_percent"] is None
    assert 0 < first["ram_percent"] <= 100
    # Both paths are on one partition: reported once, under the first.
    assert list(first["disks"]) == [str(tmp_path / "logs" / "not-yet")]
    second = sampler.sample()
    assert 0.0 <= second["cpu_percent"] <= 100.0


def test_tree_sampler_sums_the_tree_and_tolerates_vanishing(hog: Hog) -> None:
    sampler = TreeSampler()
    grandchild = int(hog.send("spawn"))
    sample = sampler.sample([hog.pid])
    assert sample is not None
    assert sample["pids"] == sorted([hog.pid, grandchild])
    assert sample["processes"] == 2
    assert sample["threads"] >= 2
    assert sample["open_files"] >= 3
    alone = _rss_mb(hog.pid)
    assert sample["rss_mb"] > alone

    psutil.Process(grandchild).kill()  # not reaped yet: a zombie must be left out
    wait_until(
        lambda: (s := sampler.sample([hog.pid])) is not None and s["processes"] == 1,
        what="killed grandchild left out of the sample",
    )
    hog.send("reap")
    sample = sampler.sample([hog.pid])
    assert sample is not None and sample["pids"] == [hog.pid]
    hog.proc.kill()
    hog.proc.wait(5)
    assert sampler.sample([hog.pid]) is None


def test_tree_sampler_walks_each_subtree_once(hog: Hog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor passes the whole known tree (root and descendants): a pid already found
    under an earlier root is not walked again."""
    grandchild = int(hog.send("spawn"))
    walked: list[int] = []

    def counting(pid: int) -> list[int]:
        walked.append(pid)
        return process.descendants(pid)

    monkeypatch.setattr(resources, "descendants", counting)
    sample = TreeSampler().sample([hog.pid, grandchild])
    assert sample is not None and sample["pids"] == sorted([hog.pid, grandchild])
    assert walked == [hog.pid]
    assert TreeSampler().sample([grandchild, hog.pid]) is not None
    assert walked == [hog.pid, grandchild, hog.pid]  # the other order: both are roots


def test_tree_sampler_cpu_percent_needs_the_same_process_object() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        sampler = TreeSampler()
        assert sampler.sample([spinner.pid]) is not None
        wait_until(
            lambda: (s := sampler.sample([spinner.pid])) is not None and s["cpu_percent"] > 20,
            what="a busy child's CPU % measured between samples",
        )
    finally:
        spinner.kill()
        spinner.wait(5)


# --- ResourceMonitor.step ----------------------------------------------------------------


async def test_rss_limit_crossed_and_recovered_without_flood(hog: Hog, tmp_path: Path) -> None:
    limit = _rss_mb(hog.pid) + 40
    settings = load_settings(log_path=tmp_path, resource_hysteresis=5)
    bus = ListBus()
    monitor = ResourceMonitor(
        settings, bus, targets=lambda: {"erp": [hog.pid]}, rss_limits={"erp": limit}
    )
    assert await monitor.step() == [] or all(e.target == SYSTEM_TARGET for e in bus.events)
    rss_events = lambda: [e for e in bus.events if e.target == "erp"]  # noqa: E731

    hog.send("alloc 80")
    await monitor.step()
    assert [e.kind for e in rss_events()] == [Kind.RESOURCE_WARNING]
    warning = rss_events()[0]
    assert warning.details["limit_mb"] == limit
    assert warning.details["rss_mb"] > limit
    assert warning.severity == "warning"

    hog.send("alloc 1")
    await monitor.step()
    await monitor.step()
    assert len(rss_events()) == 1, "no flood while above the limit"

    hog.send("free")
    await monitor.step()
    assert [e.kind for e in rss_events()] == [Kind.RESOURCE_WARNING, Kind.RESOURCE_OK]
    latest = monitor.latest_target("erp")
    assert latest is not None and latest["rss_mb"] < limit and latest["pids"] == [hog.pid]
    assert monitor.latest_target("other") is None


async def test_rss_over_the_limit_is_a_warning_and_a_sample(hog: Hog, tmp_path: Path) -> None:
    settings = load_settings(log_path=tmp_path)
    monitor = ResourceMonitor(
        settings,
        ListBus(),
        targets=lambda: {"erp": [hog.pid]},
        rss_limits={"erp": 1.0},
    )
    events = await monitor.step()
    assert [e.kind for e in events if e.target == "erp"] == [Kind.RESOURCE_WARNING]
    sample = monitor.latest_target("erp")  # what the target's core reads for RESTART_ON_RSS
    assert sample is not None and sample["rss_mb"] > 1.0 and sample["pids"] == [hog.pid]


async def test_host_thresholds_publish_system_events_once(tmp_path: Path) -> None:
    settings = load_settings(
        log_path=tmp_path, ram_threshold=0.1, disk_threshold=0.1, cpu_threshold=100
    )
    bus = ListBus()
    monitor = ResourceMonitor(settings, bus, targets=dict, paths=default_paths(settings))
    first = await monitor.step()
    assert {e.details["resource"] for e in first} == {"ram", f"disk:{tmp_path}"}
    assert all(e.target == SYSTEM_TARGET and e.kind == Kind.RESOURCE_WARNING for e in first)
    assert await monitor.step() == []
    host = monitor.latest_host()
    assert host["cpu_percent"] is not None and str(tmp_path) in host["disks"] and "ts" in host


async def test_for_targets_takes_limits_from_target_configs(hog: Hog, tmp_path: Path) -> None:
    settings = load_settings(
        log_path=tmp_path,
        command="erp-server",
        targets={"worker": {"command": "erp-worker", "rss_limit_mb": 1, "restart_on_rss": True}},
    )
    monitor = ResourceMonitor.for_targets(
        settings,
        ListBus(),
        settings.targets_resolved(),
        targets=lambda: {"backend": [hog.pid], "worker": [hog.pid]},
    )
    events = await monitor.step()
    assert [(e.target, e.kind) for e in events if e.target != SYSTEM_TARGET] == [
        ("worker", Kind.RESOURCE_WARNING)
    ]
    assert monitor.latest_target("backend") is not None


# --- threads and open descriptors; failed reads left out ----------------------------------

# A child holding N extra threads and M extra open files, then answering "ready".
HOLDER = r"""
import os, sys, threading
threads, files = int(sys.argv[1]), int(sys.argv[2])
stop = threading.Event()
for _ in range(threads):
    threading.Thread(target=stop.wait, daemon=True).start()
held = [open(os.devnull, "rb") for _ in range(files)]
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "6", "40"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait(5)


def test_tree_sampler_counts_threads_and_open_files(holder: subprocess.Popen[str]) -> None:
    sample = TreeSampler().sample([holder.pid])
    assert sample is not None
    real = psutil.Process(holder.pid)
    assert sample["threads"] == real.num_threads() >= 7
    assert sample["open_files"] == real.num_fds() >= 40 + 3
    assert sample["rss_bytes"] == pytest.approx(real.memory_info().rss, rel=0.05)
    assert sample["rss_mb"] == round(sample["rss_bytes"] / 1024 / 1024, 1)


def test_tree_sampler_leaves_out_a_failed_read_only(
    holder: subprocess.Popen[str], hog: Hog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watchdog.resources as resources

    real_fds = resources._num_fds

    def fds_denied_for_the_holder(proc: psutil.Process) -> int:
        if proc.pid == holder.pid:
            raise psutil.AccessDenied(proc.pid)
        return real_fds(proc)

    def threads_out_of_descriptors(proc: psutil.Process) -> int:
        raise OSError(24, "Too many open files")  # EMFILE while reading /proc/<pid>/status

    monkeypatch.setattr(resources, "_num_fds", fds_denied_for_the_holder)
    monkeypatch.setattr(resources, "_num_threads", threads_out_of_descriptors)
    sample = TreeSampler().sample([holder.pid, hog.pid])
    assert sample is not None
    assert sample["pids"] == sorted([holder.pid, hog.pid])  # both still counted for RSS
    assert sample["rss_bytes"] > psutil.Process(holder.pid).memory_info().rss
    assert sample["open_files"] == psutil.Process(hog.pid).num_fds()  # the hog's only
    assert sample["threads"] is None  # nobody's could be read


def test_tree_sampler_leaves_out_a_process_whose_memory_is_denied(
    hog: Hog, holder: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # psutil's platform layer (psutil.Process memoizes its own methods inside oneshot()).
    platform = psutil._psplatform.Process  # type: ignore[attr-defined]
    real_memory_info = platform.memory_info

    def memory_info(self: Any) -> Any:
        if self.pid == holder.pid:
            raise psutil.AccessDenied(self.pid)
        return real_memory_info(self)

    monkeypatch.setattr(platform, "memory_info", memory_info)
    sample = TreeSampler().sample([hog.pid, holder.pid])
    assert sample is not None and sample["pids"] == [hog.pid]


# Run in its own interpreter: erpwatch runs out of descriptors (a real EMFILE) right after the
# tree was listed, so every read of the processes fails.
EMFILE_SAMPLE = r"""
import json, os, resource, subprocess, sys
sys.path.insert(0, sys.argv[1])
import watchdog.resources as resources

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
sampler = resources.TreeSampler()
before = sampler.sample([child.pid])
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
hogged = []
listed = resources.descendants


def descendants_then_out_of_descriptors(pid):
    found = listed(pid)
    try:
        while True:
            hogged.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    return found


resources.descendants = descendants_then_out_of_descriptors
try:
    during = sampler.sample([child.pid])
    error = None
except BaseException as exc:
    during, error = None, repr(exc)
resources.descendants = listed
for fd in hogged:
    os.close(fd)
after = sampler.sample([child.pid])
child.kill()
child.wait()
print(json.dumps({"hogged": len(hogged), "before": before, "during": during, "error": error,
                  "after": after}))
"""


def test_tree_sampler_never_raises_on_emfile() -> None:
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", EMFILE_SAMPLE, root],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["hogged"] > 0  # the descriptors really ran out
    assert result["error"] is None
    assert result["before"]["processes"] == 1
    assert result["during"] is None  # nothing could be read: no sample, no exception
    assert result["after"]["processes"] == 1 and result["after"]["open_files"] >= 3


async def test_many_targets_are_sampled_in_hops_spread_over_the_interval(tmp_path: Path) -> None:
    """45 targets: 3 hops of 20, with pauses between them summing to at most a quarter of
    RESOURCE_INTERVAL (on fake time, so the spreading is seen, not timed)."""
    import asyncio
    import os

    from watchdog.clock import FakeClock

    clock = FakeClock()
    settings = load_settings(log_path=tmp_path, resource_interval=10.0)
    targets = {f"t{i}": [os.getpid()] for i in range(45)}
    monitor = ResourceMonitor(settings, ListBus(), targets=lambda: targets, clock=clock)
    step = asyncio.ensure_future(monitor.step())
    paused = 0.0
    async with asyncio.timeout(60):
        while not step.done():
            await asyncio.sleep(0.01)  # poll: a hop runs in a worker thread, fake time stands
            pending = [deadline for deadline, future in clock._sleepers if not future.done()]
            if pending and not step.done():
                due = min(pending) - clock.now()
                clock.advance(due)
                paused += due
    await step
    assert all(monitor.latest_target(name) is not None for name in targets)
    assert 0 < paused <= settings.resource_interval / 4
