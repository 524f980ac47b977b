"""psutil samples of the host and of each target's process tree, and thresholds on them.

    host_snapshot(paths) -> dict            # one-off sample (CPU % since psutil's last call)
    HostSampler(paths).sample() -> dict     # same shape; CPU % since *its* previous sample
    TreeSampler().sample(pids) -> dict|None # CPU %, RSS, threads, open fds summed over a tree
                                            # (a reading that fails is left out, never raised)
    ThresholdTracker(threshold, hysteresis).update(value) -> Transition | None   (pure)
    ResourceMonitor(settings, bus, targets=..., rss_limits=..., ...)
        await step()      # one sample (psutil in a worker thread) + decide + publish changes
        await run()       # step every RESOURCE_INTERVAL until cancelled
        latest_host() -> dict; latest_target(name) -> dict | None   # for /status

Host thresholds (CPU, RAM, disk of each partition holding LOG_PATH / the database) publish
``resource-warning`` / ``resource-ok`` with target ``erpwatch``; a target's RSS cap publishes
them with the target's name; with RESTART_ON_RSS the target's core restarts it, reading the
sample (`latest_target`) as an observation.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import psutil

from watchdog.clock import Clock, RealClock
from watchdog.events import SYSTEM_TARGET, Event, Kind, utcnow
from watchdog.process import descendants
from watchdog.settings import Settings, TargetConfig

logger = logging.getLogger(__name__)

_MB = 1024 * 1024
_GB = 1024**3


# --- host ----------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disks(paths: Sequence[Path]) -> dict[str, dict[str, float]]:
    """Usage of the partition holding each path (a missing path: its nearest ancestor);
    a partition already reported under an earlier path is not repeated."""
    disks: dict[str, dict[str, float]] = {}
    seen_devices: set[int] = set()
    for path in paths:
        existing = _existing(path)
        device = existing.stat().st_dev
        if device in seen_devices:
            continue
        seen_devices.add(device)
        usage = psutil.disk_usage(str(existing))
        disks[str(path)] = {"percent": usage.percent, "free_gb": round(usage.free / _GB, 2)}
    return disks


def _memory() -> dict[str, float]:
    memory = psutil.virtual_memory()
    return {
        "ram_percent": memory.percent,
        "ram_used_mb": round((memory.total - memory.available) / _MB, 1),
        "ram_total_mb": round(memory.total / _MB, 1),
    }


def host_snapshot(paths: Sequence[Path] = ()) -> dict[str, Any]:
    """A cheap, non-blocking sample (CPU % since the previous call)."""
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        **_memory(),
        "disks": _disks(paths),
    }


def _busy_and_total(times: Any) -> tuple[float, float]:
    # psutil's own arithmetic: guest time is already counted in user time on Linux.
    total = float(sum(times))
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class HostSampler:
    """Host samples whose CPU % covers exactly the time since this sampler's last sample
    (``psutil.cpu_percent`` shares its baseline with every other caller in the process).
    ``cpu_percent`` is None on the first sample."""

    def __init__(self, paths: Sequence[Path] = ()) -> None:
        self.paths = tuple(paths)
        self._last: tuple[float, float] | None = None

    def sample(self) -> dict[str, Any]:
        busy, total = _busy_and_total(psutil.cpu_times())
        cpu: float | None = None
        if self._last is not None:
            busy_delta, total_delta = busy - self._last[0], total - self._last[1]
            cpu = 0.0
            if total_delta > 0:
                cpu = round(min(100.0, max(0.0, 100.0 * busy_delta / total_delta)), 1)
        self._last = (busy, total)
        return {"cpu_percent": cpu, **_memory(), "disks": _disks(self.paths)}


# --- process trees ------------------------------------------------------------------------


def _fd_count_from_stat() -> bool:
    """Linux 6.2+ reports a process's number of open descriptors as the size of
    ``/proc/<pid>/fd``: one stat, whatever the count. Older kernels report 0."""
    try:
        return os.stat(f"/proc/{os.getpid()}/fd").st_size > 0
    except OSError:
        return False


_FD_COUNT_FROM_STAT = _fd_count_from_stat()


def _num_fds(proc: psutil.Process) -> int:
    """Open descriptors of ``proc`` at a bounded cost where the kernel allows (one stat, not
    a directory listing of possibly a million entries); psutil's listing otherwise."""
    if _FD_COUNT_FROM_STAT:
        try:
            return os.stat(f"/proc/{proc.pid}/fd").st_size
        except FileNotFoundError:
            raise psutil.NoSuchProcess(proc.pid) from None
        except PermissionError:
            raise psutil.AccessDenied(proc.pid) from None
    return int(proc.num_fds())


def _num_threads(proc: psutil.Process) -> int:
    return int(proc.num_threads())


def _optional(proc: psutil.Process, read: Callable[[psutil.Process], int]) -> int | None:
    """One reading that may fail on its own (AccessDenied, EMFILE, ...): None then. A
    process that went away (NoSuchProcess) is the caller's business."""
    try:
        return read(proc)
    except psutil.NoSuchProcess:
        raise
    except (psutil.AccessDenied, OSError) as exc:
        logger.debug("cannot read %s of pid %d: %r; left out", read.__name__, proc.pid, exc)
        return None


class TreeSampler:
    """Samples of one target's process tree, summed over its live processes.

    The `psutil.Process` objects are kept between samples, so ``cpu_percent`` means "since the
    previous sample" (it is 0.0 for a process seen for the first time). Processes that vanish
    or turn zombie between listing and reading are left out of the sums, and so is a process
    whose CPU or memory cannot be read (AccessDenied, or an OSError such as EMFILE while
    erpwatch is out of descriptors). Threads and open descriptors are read on their own: one
    that fails is left out of its own sum only (``threads`` / ``open_files`` then count the
    processes that could be read, and are None when none could). Sampling never raises for
    such failures; with nothing readable at all the sample is None.
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None or not proc.is_running():  # is_running() also catches a reused pid
            proc = psutil.Process(pid)
            self._procs[pid] = proc
        return proc

    def _tree(self, pids: Sequence[int]) -> list[psutil.Process]:
        tree: dict[int, psutil.Process] = {}
        for root in pids:
            if root in tree:  # a descendant of an earlier root: its subtree is in already
                continue
            try:
                members = [root, *descendants(root)]
            except (psutil.Error, OSError):  # gone, or unreadable (EMFILE): skipped
                continue
            for pid in members:
                if pid in tree:
                    continue
                try:
                    # Our cached object keeps its cpu_percent baseline between samples.
                    tree[pid] = self._process(pid)
                except (psutil.Error, OSError):
                    continue
        return list(tree.values())

    def sample(self, pids: Sequence[int]) -> dict[str, Any] | None:
        """Sums over ``pids`` and all their descendants; None when none of them is alive."""
        procs = self._tree(pids)
        seen: list[int] = []
        cpu = 0.0
        rss = 0
        threads: int | None = None
        open_fds: int | None = None
        for proc in procs:
            try:
                with proc.oneshot():
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue
                    proc_cpu = proc.cpu_percent(interval=None)
                    proc_rss = proc.memory_info().rss
                    proc_threads = _optional(proc, _num_threads)
                    proc_fds = _optional(proc, _num_fds)
            except psutil.NoSuchProcess:  # includes ZombieProcess: it went away mid-read
                continue
            except (psutil.AccessDenied, OSError) as exc:
                logger.debug("cannot sample pid %d: %r; left out", proc.pid, exc)
                continue
            cpu += proc_cpu
            rss += proc_rss
            if proc_threads is not None:
                threads = (threads or 0) + proc_threads
            if proc_fds is not None:
                open_fds = (open_fds or 0) + proc_fds
            seen.append(proc.pid)
        for pid in list(self._procs):
            if pid not in seen:
                del self._procs[pid]
        if not seen:
            return None
        return {
            "pids": sorted(seen),
            "processes": len(seen),
            "cpu_percent": round(cpu, 1),
            "rss_mb": round(rss / _MB, 1),
            "rss_bytes": rss,
            "threads": threads,
            "open_files": open_fds,
        }


# --- thresholds (pure) --------------------------------------------------------------------


class Transition(StrEnum):
    WARNING = "warning"
    OK = "ok"


@dataclass
class ThresholdTracker:
    """Hysteresis on one value: above ``threshold`` → WARNING; back only once the value falls
    below ``threshold - hysteresis`` → OK. Anything in between keeps the current state, so a
    value hovering at the line reports once, not on every sample."""

    threshold: float
    hysteresis: float = 0.0
    active: bool = False

    @property
    def clear_below(self) -> float:
        return self.threshold - self.hysteresis

    def update(self, value: float) -> Transition | None:
        if not self.active and value > self.threshold:
            self.active = True
            return Transition.WARNING
        if self.active and value < self.clear_below:
            self.active = False
            return Transition.OK
        return None


# --- the monitor --------------------------------------------------------------------------


class Publisher(Protocol):
    async def publish(self, event: Event) -> Event: ...


TargetPids = Callable[[], Mapping[str, Sequence[int]]]


def default_paths(settings: Settings) -> list[Path]:
    """The directories whose partitions are watched: LOG_PATH and the database's."""
    paths = [settings.log_path, settings.event_db_path.parent]
    return list(dict.fromkeys(Path(os.path.abspath(path)) for path in paths))


SAMPLE_CHUNK = 20  # targets sampled per worker-thread hop
SPREAD_MAX_PAUSE = 0.1  # seconds between hops at most


@dataclass
class _Sample:
    host: dict[str, Any]
    targets: dict[str, dict[str, Any] | None] = field(default_factory=dict)


class ResourceMonitor:
    """Samples host and targets every ``resource_interval``; publishes only on change."""

    def __init__(
        self,
        settings: Settings,
        bus: Publisher,
        *,
        targets: TargetPids,
        rss_limits: Mapping[str, float | None] | None = None,
        paths: Sequence[Path] = (),
        clock: Clock | None = None,
    ) -> None:
        """``targets()`` maps each target name to the pids of its tree (descendants are found
        too). Restarting a target over its cap is its supervision core's decision: it reads
        `latest_target` as an observation."""
        self._settings = settings
        self._bus = bus
        self._targets = targets
        self._rss_limits = dict(rss_limits or {})
        self._clock = clock or RealClock()
        self._host_sampler = HostSampler(paths)
        self._tree_samplers: dict[str, TreeSampler] = {}
        hysteresis = settings.resource_hysteresis
        self._host_trackers: dict[str, ThresholdTracker] = {
            "cpu": ThresholdTracker(settings.cpu_threshold, hysteresis),
            "ram": ThresholdTracker(settings.ram_threshold, hysteresis),
        }
        self._rss_trackers: dict[str, ThresholdTracker] = {}
        self._latest_host: dict[str, Any] = {}
        self._latest_targets: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_targets(
        cls,
        settings: Settings,
        bus: Publisher,
        configs: Sequence[TargetConfig],
        *,
        targets: TargetPids,
        clock: Clock | None = None,
    ) -> ResourceMonitor:
        """Limits and restart choices from each target's config; LOG_PATH's and the
        database's partitions."""
        return cls(
            settings,
            bus,
            targets=targets,
            rss_limits={config.name: config.rss_limit_mb for config in configs},
            paths=default_paths(settings),
            clock=clock,
        )

    def apply_settings(self, settings: Settings, configs: Sequence[TargetConfig]) -> None:
        """A configuration reload: new thresholds, hysteresis, interval and RSS caps from the
        next sample on (a value already over a threshold stays reported once)."""
        self._settings = settings
        for key, tracker in self._host_trackers.items():
            threshold = {"cpu": settings.cpu_threshold, "ram": settings.ram_threshold}.get(
                key, settings.disk_threshold
            )
            tracker.threshold, tracker.hysteresis = threshold, settings.resource_hysteresis
        self._rss_limits = {config.name: config.rss_limit_mb for config in configs}
        self._rss_trackers = {
            name: tracker
            for name, tracker in self._rss_trackers.items()
            if self._rss_limits.get(name) == tracker.threshold
        }

    def latest_host(self) -> dict[str, Any]:
        return dict(self._latest_host)

    def latest_target(self, name: str) -> dict[str, Any] | None:
        sample = self._latest_targets.get(name)
        return None if sample is None else dict(sample)

    async def run(self) -> None:
        """`step` every ``resource_interval`` until cancelled; a failed step is logged."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("resource sampling failed; trying again next interval")
            await self._clock.sleep(self._settings.resource_interval)

    async def step(self) -> list[Event]:
        """Sample (in a worker thread), compare with thresholds, publish the changes.
        Returns the events published."""
        pids = {name: list(tree) for name, tree in self._targets().items()}
        sample = await self._sample(pids)
        stamp = utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._latest_host = {**sample.host, "ts": stamp}
        for name, target_sample in sample.targets.items():
            if target_sample is None:
                self._latest_targets.pop(name, None)
            else:
                self._latest_targets[name] = {**target_sample, "ts": stamp}
        events: list[Event] = []
        for event in self._host_events(sample.host):
            events.append(await self._bus.publish(event))
        for name, target_sample in sample.targets.items():
            rss_event = None if target_sample is None else self._rss_event(name, target_sample)
            if rss_event is None:
                continue
            events.append(await self._bus.publish(rss_event))
        return events

    async def _sample(self, pids: Mapping[str, Sequence[int]]) -> _Sample:
        """psutil calls run in a worker thread, a few targets per hop: one long burst of
        Python in a thread would hold the GIL against the event loop and delay probes."""
        for gone in set(self._tree_samplers) - set(pids):
            del self._tree_samplers[gone]
        sample = _Sample(host=await asyncio.to_thread(self._host_sampler.sample))
        names = list(pids)
        # Many targets: the hops are spread over a quarter of the interval (~1 ms of CPU a
        # target; 1000 at once held the GIL for a second against the event loop).
        hops = max(1, -(-len(names) // SAMPLE_CHUNK))
        pause = min(SPREAD_MAX_PAUSE, self._settings.resource_interval / 4 / hops)
        for start in range(0, len(names), SAMPLE_CHUNK):
            if start:
                await self._clock.sleep(pause)
            chunk = {name: pids[name] for name in names[start : start + SAMPLE_CHUNK]}
            sample.targets.update(await asyncio.to_thread(self._sample_targets, chunk))
        return sample

    def _sample_targets(
        self, pids: Mapping[str, Sequence[int]]
    ) -> dict[str, dict[str, Any] | None]:
        samples: dict[str, dict[str, Any] | None] = {}
        for name, tree in pids.items():
            sampler = self._tree_samplers.setdefault(name, TreeSampler())
            samples[name] = sampler.sample(tree) if tree else None
        return samples

    def _host_events(self, host: Mapping[str, Any]) -> list[Event]:
        readings: list[tuple[str, str, float | None, ThresholdTracker]] = [
            ("cpu", "CPU", host.get("cpu_percent"), self._host_trackers["cpu"]),
            ("ram", "RAM", host.get("ram_percent"), self._host_trackers["ram"]),
        ]
        for path, disk in host.get("disks", {}).items():
            tracker = self._host_trackers.setdefault(
                f"disk:{path}",
                ThresholdTracker(self._settings.disk_threshold, self._settings.resource_hysteresis),
            )
            readings.append((f"disk:{path}", f"disk of {path}", disk["percent"], tracker))
        events = []
        for key, label, value, tracker in readings:
            if value is None:
                continue
            change = tracker.update(value)
            if change is None:
                continue
            if change is Transition.WARNING:
                kind, message = Kind.RESOURCE_WARNING, f"{label} at {value:.1f}%"
                message += f" (threshold {tracker.threshold:g}%)"
            else:
                kind, message = Kind.RESOURCE_OK, f"{label} back to {value:.1f}%"
                message += f" (below {tracker.clear_below:g}%)"
            events.append(
                Event.of(
                    SYSTEM_TARGET,
                    kind,
                    message,
                    resource=key,
                    value=value,
                    threshold=tracker.threshold,
                )
            )
        return events

    def _rss_event(self, name: str, sample: Mapping[str, Any]) -> Event | None:
        limit = self._rss_limits.get(name)
        if limit is None:
            return None
        # RESOURCE_HYSTERESIS is in percentage points; for an RSS cap, percent of the cap.
        hysteresis = limit * self._settings.resource_hysteresis / 100
        tracker = self._rss_trackers.setdefault(name, ThresholdTracker(limit, hysteresis))
        rss = float(sample["rss_mb"])
        change = tracker.update(rss)
        if change is None:
            return None
        if change is Transition.WARNING:
            kind = Kind.RESOURCE_WARNING
            message = f"memory (RSS) {rss:.0f} MB over the {limit:g} MB limit"
        else:
            kind = Kind.RESOURCE_OK
            message = f"memory (RSS) back to {rss:.0f} MB (below {tracker.clear_below:g} MB)"
        return Event.of(
            name,
            kind,
            message,
            resource="rss",
            rss_mb=rss,
            limit_mb=limit,
            processes=sample.get("processes"),
            pids=list(sample.get("pids", [])),
        )
