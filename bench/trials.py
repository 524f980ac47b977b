"""The measured trials, the same for every watchdog (see bench/run_all.py for the rows).

The backend is `bench/seed_backend.py` (uvicorn + the health kit). Every trial starts from a
healthy backend that has run for ``settle`` seconds (supervisord
counts a process as started after ``startsecs=1``), then injects the fault from outside:

- crash: SIGKILL to the backend's PID;
- hang: ``POST /fault/hang`` (the backend's event loop blocks: /health stops answering and
  SIGTERM is ignored; in memory, so the new process is healthy), at a random phase of the
  watchdog's check period;

and times, from that moment, the new backend process appearing (`BackendFinder`, 1 ms /proc
poll) and our own client's first 200 from /health on it (1 ms poll).
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.measure import (
    BackendFinder,
    ResourceSampler,
    free_port,
    kill_and_wait,
    kill_pid,
    percentile,
    post,
    summary,
    tagged_processes,
    wait_healthy,
)
from bench.peers import Peer, Scenario

GRANDCHILD = b"time.sleep(3600)"


@dataclass
class Trials:
    restart: list[float] = field(default_factory=list)  # seconds to the new process
    healthy: list[float] = field(default_factory=list)  # seconds to the first 200
    healthy_wall: list[float] = field(default_factory=list)  # time.time() of those 200s
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "restart_s": summary(self.restart),
            "healthy_s": summary(self.healthy),
            "restart_each_s": [round(v, 4) for v in self.restart],
            "healthy_each_s": [round(v, 4) for v in self.healthy],
            "failures": self.failures,
        }


def new_scenario(**kwargs: Any) -> Scenario:
    return Scenario(port=free_port(), tag=uuid.uuid4().hex, **kwargs)


def _ready(peer: Peer, finder: BackendFinder, limit: float) -> list[int]:
    assert peer.scenario is not None
    deadline = time.monotonic() + limit
    if wait_healthy(peer.scenario.port, deadline) is None:
        return []
    return finder.current()


def _one(
    peer: Peer, finder: BackendFinder, inject: str, old: list[int], limit: float, out: Trials
) -> bool:
    """Inject a fault into the backend ``old`` and time the recovery; False on a miss."""
    assert peer.scenario is not None
    t0 = time.monotonic()
    if inject == "crash":
        kill_pid(old[0])
    elif not post(peer.scenario.port, "/fault/hang"):
        out.failures.append("could not switch the backend to hang")
        return False
    found = finder.wait_new(old, t0 + limit)
    if found is None:
        out.failures.append(f"no new process within {limit:g}s")
        return False
    healthy = wait_healthy(peer.scenario.port, t0 + limit)
    if healthy is None:
        out.failures.append(f"new process not healthy within {limit:g}s")
        return False
    out.restart.append(found[1] - t0)
    out.healthy.append(healthy - t0)
    out.healthy_wall.append(time.time() - (time.monotonic() - healthy))
    return True


def fault_trials(
    peer: Peer,
    scenario: Scenario,
    *,
    inject: str,
    count: int,
    settle: float = 1.2,
    jitter: float = 0.0,
    limit: float = 40.0,
    seed: int = 1,
) -> Trials:
    """``count`` crashes or hangs in a row under one running ``peer``."""
    rng = random.Random(seed)
    out = Trials()
    peer.start(scenario)
    finder = scenario.finder()
    try:
        for _ in range(count):
            old = _ready(peer, finder, limit)
            if not old:
                out.failures.append("backend not healthy before the trial")
                break
            time.sleep(settle + rng.uniform(0, jitter))
            old = finder.current()
            if not old:
                out.failures.append("backend vanished before the trial")
                continue
            _one(peer, finder, inject, old, limit, out)
    finally:
        peer.stop()
        kill_and_wait(tagged_processes(scenario.tag))
        peer.cleanup()
    return out


def hang_after_restart_trials(
    peer: Peer, scenario: Scenario, *, count: int, limit: float = 60.0
) -> Trials:
    """Crash the backend, and as soon as the new one answers, make it hang: time that hang."""
    out = Trials()
    peer.start(scenario)
    finder = scenario.finder()
    try:
        for _ in range(count):
            old = _ready(peer, finder, limit)
            if not old:
                out.failures.append("backend not healthy before the trial")
                break
            time.sleep(1.2)
            scratch = Trials()
            if not _one(peer, finder, "crash", finder.current() or old, limit, scratch):
                out.failures.extend(scratch.failures)
                continue
            _one(peer, finder, "hang", finder.current(), limit, out)
    finally:
        peer.stop()
        kill_and_wait(tagged_processes(scenario.tag))
        peer.cleanup()
    return out


def overhead(
    peer: Peer, scenario: Scenario, *, seconds: float, warmup: float = 5.0
) -> dict[str, Any]:
    """RSS and CPU of the watchdog's own processes while one healthy target is supervised."""
    peer.start(scenario)
    try:
        time.sleep(warmup)
        pids = peer.own_pids()
        result: dict[str, Any] = ResourceSampler(pids).run(seconds)
        result["processes"] = len(pids)
        return result
    finally:
        peer.stop()
        kill_and_wait(tagged_processes(scenario.tag))
        peer.cleanup()


def orphans(peer: Peer, scenario: Scenario, *, crashes: int) -> dict[str, Any]:
    """Leftover processes (the backend's setsid grandchildren) after crash restarts and stop."""
    peer.start(scenario)
    finder = scenario.finder()
    result: dict[str, Any] = {"crashes": 0}
    try:
        trials = Trials()
        for _ in range(crashes):
            old = _ready(peer, finder, 40)
            if not old:
                break
            time.sleep(1.2)
            if _one(peer, finder, "crash", finder.current() or old, 40, trials):
                result["crashes"] += 1
        _ready(peer, finder, 40)
        time.sleep(1.0)
        current = set(finder.current())
        grandchildren = tagged_processes(scenario.tag, GRANDCHILD)
        stray = [pid for pid in grandchildren if _ppid(pid) not in current]
        result["after_crash_restarts"] = len(stray)
        peer.stop()
        time.sleep(1.0)
        own = set(peer.own_pids())
        left = [pid for pid in tagged_processes(scenario.tag) if pid not in own]
        result["after_stop"] = len(left)
        result["failures"] = trials.failures
        return result
    finally:
        peer.stop()
        kill_and_wait(tagged_processes(scenario.tag))
        peer.cleanup()


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def scale(
    count: int, *, seconds: float, interval: float = 1.0, warmup: float = 8.0
) -> dict[str, Any]:
    """erpwatch supervising ``count`` targets (``sleep`` processes) whose health URLs are
    ``count`` listeners of one asyncio backend; the probe schedule's lag is measured there.

    lag of a probe = (time since the previous probe of the same target) - interval.
    """
    import json
    import shutil
    import signal
    import subprocess
    import tempfile
    from pathlib import Path

    from bench.peers import (
        BENCH_DIR,
        ERPWATCH_PYTHON,
        PYTHON,
        ROOT,
        installed_env,
        installed_erpwatch,
    )

    installed_erpwatch()
    tmp = Path(tempfile.mkdtemp(prefix="erpwatch-bench-scale-"))
    out_file = tmp / "arrivals.json"
    backend = subprocess.Popen(
        [PYTHON, "-m", "bench.scale_backend", "--count", str(count), "--out", str(out_file)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        start_new_session=True,
    )
    watchdog: subprocess.Popen[bytes] | None = None
    tag = uuid.uuid4().hex
    try:
        assert backend.stdout is not None
        ports = json.loads(backend.stdout.readline())
        env = installed_env()
        env.update(
            {
                "ERPWATCH_BENCH_TAG": tag,
                "ERPWATCH_CHECK_INTERVAL": str(interval),
                "ERPWATCH_PROBE_TIMEOUT": "1",
                "ERPWATCH_LOG_PATH": str(tmp / "logs"),
                "ERPWATCH_DB_PATH": str(tmp / "events.db"),
                "ERPWATCH_STATUS_PORT": str(free_port()),
            }
        )
        for index, port in enumerate(ports):
            env[f"ERPWATCH_TARGETS__T{index:04d}__COMMAND"] = "sleep 86400"
            env[f"ERPWATCH_TARGETS__T{index:04d}__HEALTH_URL"] = f"http://127.0.0.1:{port}/health"
        t_start = time.monotonic()
        watchdog = subprocess.Popen(
            # See there: the ports are held on purpose. Run as a script, so that its folder,
            # not this checkout, comes first on sys.path: `watchdog` is the installed one.
            [str(ERPWATCH_PYTHON), str(BENCH_DIR / "run_unchecked.py")],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=(tmp / "watchdog.out").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(warmup + count / 50)  # 1000 targets: 28 s to spawn and settle
        started_in = None
        sampler = ResourceSampler([watchdog.pid])
        window_start = time.monotonic()
        stats = sampler.run(seconds)
        window_end = time.monotonic()
        if watchdog.poll() is not None:
            tail = (tmp / "watchdog.out").read_text(errors="replace")[-800:]
            raise RuntimeError(f"erpwatch exited during the scale run: {tail}")
        backend.send_signal(signal.SIGTERM)
        backend.wait(timeout=30)
        data = json.loads(out_file.read_text())
        lags: list[float] = []
        probes = 0
        silent = 0
        for times in data["arrivals"]:
            inside = [t for t in times if window_start <= t <= window_end]
            probes += len(inside)
            if not inside:
                silent += 1
            lags.extend(b - a - interval for a, b in itertools.pairwise(inside))
        started = [t[0] for t in data["arrivals"] if t]
        if started:
            started_in = max(started) - t_start
        p99 = percentile(lags, 99) if lags else None
        return {
            "targets": count,
            "interval_s": interval,
            "window_s": stats["seconds"],
            "cpu_pct_core": stats["cpu_pct_core"],
            "rss_mib_max": stats["rss_mib_max"],
            "probes": probes,
            "targets_without_probe": silent,
            "lag_s": summary(lags),
            "lag_p99_s": None if p99 is None else round(p99, 4),
            "lag_p99_pct": None if p99 is None else round(100 * p99 / interval, 2),
            "all_first_probed_within_s": None if started_in is None else round(started_in, 2),
        }
    finally:
        if watchdog is not None and watchdog.poll() is None:
            watchdog.send_signal(signal.SIGTERM)
            try:
                watchdog.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill_and_wait([watchdog.pid])
        if backend.poll() is None:
            kill_and_wait([backend.pid])
        kill_and_wait(tagged_processes(tag))
        shutil.rmtree(tmp, ignore_errors=True)
