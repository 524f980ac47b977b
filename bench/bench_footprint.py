"""erpwatch's own footprint (a script, not a test; loopback only, bounded in time):

- RSS of ``erpwatch run`` with one target (the seed backend, 1 s HTTP check) and the status
  server, after a warm-up: idle, and after one request to each of /, /status, /metrics and
  /events (what the status page costs once someone has looked at it);
- RSS growth across N crash-restarts (SIGKILL to the backend, wait for the new one to answer
  and erpwatch to see it healthy, again), sampled along the way;
- RSS growth with SSE clients coming and going: K clients at a time open ``/events``, read
  the stream's first bytes, hang up, reconnect, M times in all, with events flowing (a crash
  every few hundred cycles): an hour of status-page tabs compressed into a minute or two;
- a per-module import table: RSS and import time of each of erpwatch's heavy dependencies,
  each in a fresh interpreter (median over R runs);
- CLI timings, whole process (median over R runs): ``python -c pass`` vs ``erpwatch
  --version``, ``erpwatch history`` (filtered, 50 rows) over 200,000 events, ``erpwatch
  status`` against the running erpwatch.

    .venv/bin/python -m bench.bench_footprint            # full figures, as JSON
    .venv/bin/python -m bench.bench_footprint --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `python bench/<this>.py` works as well as `python -m bench.<this>`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench.measure import (
    kill_and_wait,
    kill_pid,
    tagged_processes,
    wait_healthy,
)
from bench.peers import (
    ERPWATCH,
    ERPWATCH_PYTHON,
    Erpwatch,
    Scenario,
    installed_env,
    installed_erpwatch,
)
from bench.trials import new_scenario

# (label, import statement) for the import table; each runs in a fresh interpreter.
IMPORTS: list[tuple[str, str]] = [
    ("(bare interpreter)", "pass"),
    ("pydantic_settings", "import pydantic_settings"),
    ("httpx", "import httpx"),
    ("sqlite_utils", "import sqlite_utils"),
    ("uvicorn + starlette", "import uvicorn, starlette.applications, starlette.routing"),
    ("jinja2", "import jinja2"),
    ("prometheus_client", "import prometheus_client"),
    ("psutil", "import psutil"),
    (
        "all of the above",
        "import pydantic_settings, httpx, sqlite_utils, uvicorn, "
        "starlette.applications, starlette.routing, jinja2, prometheus_client, psutil",
    ),
    (
        "the run path's required set (pydantic_settings, httpx, uvicorn + starlette, "
        "prometheus_client, psutil): the floor",
        "import pydantic_settings, httpx, uvicorn, starlette.applications, starlette.routing, "
        "prometheus_client, psutil",
    ),
    (
        "the required set + what the run path needs beside it (sqlite3, ctypes, h11, anyio, "
        "starlette's app and uvicorn's h11 protocol): erpwatch's own code is the rest",
        "import pydantic_settings, httpx, uvicorn, starlette.applications, starlette.routing, "
        "prometheus_client, psutil, sqlite3, ctypes, h11, anyio, "
        "uvicorn.protocols.http.h11_impl, uvicorn.lifespan.off",
    ),
    (
        "what `erpwatch run` loads of them: the needs without pydantic-settings (its settings "
        "are validated by a short-lived child process)",
        "import httpx, uvicorn, starlette.applications, starlette.routing, prometheus_client, "
        "psutil, sqlite3, ctypes, h11, anyio, uvicorn.protocols.http.h11_impl, "
        "uvicorn.lifespan.off",
    ),
    ("watchdog.cli (`erpwatch` before a command)", "import watchdog.cli"),
    ("watchdog.app + watchdog.api (`erpwatch run`)", "import watchdog.app, watchdog.api"),
]
IMPORT_PROBE = """
import time, sys
t0 = time.perf_counter()
{stmt}
dt = time.perf_counter() - t0
rss = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
print(dt, rss, len(sys.modules))
"""


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _get(port: int, path: str, read: int = 65536, timeout: float = 5.0, hold: float = 0.0) -> bytes:
    """GET ``path``; for /events the stream's first bytes, then ``hold`` seconds, hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        total = 0
        while total < read:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if path == "/events":
                break  # the stream never ends: its first bytes are enough
        if hold:
            time.sleep(hold)
        return b"".join(chunks)


class Running:
    """``erpwatch run`` (via the bench's Erpwatch peer) and its status port."""

    def __init__(self, scenario: Scenario) -> None:
        self.peer = Erpwatch()
        self.scenario = scenario

    def __enter__(self) -> Running:
        self.peer.start(self.scenario)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.peer.stop()
        finally:
            kill_and_wait(tagged_processes(self.scenario.tag))
            self.peer.cleanup()

    @property
    def pid(self) -> int:
        assert self.peer.proc is not None
        return self.peer.proc.pid

    @property
    def env(self) -> dict[str, str]:
        return self.peer.env

    @property
    def status_port(self) -> int:
        return int(self.peer.env["ERPWATCH_STATUS_PORT"])


def _sample(pid: int, seconds: float, every: float = 0.5) -> float:
    values = []
    end = time.monotonic() + seconds
    while True:
        values.append(rss_mib(pid))
        if time.monotonic() >= end:
            break
        time.sleep(every)
    return round(statistics.median(values), 1)


def rss_after_warmup(warmup: float, window: float) -> dict[str, Any]:
    with Running(new_scenario()) as run:
        time.sleep(warmup)
        idle = _sample(run.pid, window)
        for path in ("/", "/status", "/metrics", "/events"):
            _get(run.status_port, path)
        time.sleep(1.0)
        served = _sample(run.pid, window)
        return {
            "warmup_s": warmup,
            "rss_mib_idle": idle,
            "rss_mib_after_requests": served,
            "threads": psutil.Process(run.pid).num_threads(),
        }


def crash_and_wait(scenario: Any, finder: Any) -> bool:
    """SIGKILL the backend, wait for its successor to answer; False if that did not come."""
    old = finder.current()
    if not old:
        wait_healthy(scenario.port, time.monotonic() + 10)
        return False
    kill_pid(old[0])
    if finder.wait_new(old, time.monotonic() + 10) is None:
        return False
    wait_healthy(scenario.port, time.monotonic() + 10)
    time.sleep(0.25)  # erpwatch probes every 0.1 s while starting: let it see healthy
    return True


def crash_growth(
    crashes: int, warmup_crashes: int = 20, settle: float = 12.0, final_settle: float = 12.0
) -> dict[str, Any]:
    """RSS across ``crashes`` crash-restarts of a fast backend (the stdlib sample backend).

    ``warmup_crashes`` first, then ``settle`` seconds (longer than ALERT_GROUP_WAIT, 10 s:
    the crash-loop mail is rendered), so one-time costs (lazy imports, templates, caches)
    are paid before the baseline; ``final_settle`` seconds before the final figure."""
    # The stdlib sample backend starts in ~60 ms (uvicorn: ~0.5 s): 300 restarts in minutes.
    scenario = new_scenario(backend="stdlib")
    finder = scenario.finder()
    series: list[tuple[int, float]] = []
    every = max(1, crashes // checkpoints_for(crashes))
    misses = 0

    def crash_once() -> bool:
        return crash_and_wait(scenario, finder)

    with Running(scenario) as run:
        time.sleep(3.0)
        first = rss_mib(run.pid)
        for _ in range(warmup_crashes):
            crash_once()
        time.sleep(settle)
        baseline = rss_mib(run.pid)
        series.append((0, baseline))
        started = time.monotonic()
        for i in range(1, crashes + 1):
            if not crash_once():
                misses += 1
            if i % every == 0 or i == crashes:
                series.append((i, rss_mib(run.pid)))
        elapsed = time.monotonic() - started
        time.sleep(final_settle)
        final = rss_mib(run.pid)
    return {
        "crashes": crashes,
        "warmup_crashes": warmup_crashes,
        "settle_s": settle,
        "final_settle_s": final_settle,
        "missed": misses,
        "seconds": round(elapsed, 1),
        "rss_mib_before_any_crash": round(first, 1),
        "rss_mib_series": [(n, round(v, 1)) for n, v in series],
        "rss_mib_before": round(baseline, 1),
        "rss_mib_after": round(final, 1),
        "growth_mib": round(final - baseline, 1),
    }


def checkpoints_for(crashes: int) -> int:
    return 6 if crashes >= 6 else 1


def sse_churn(
    cycles: int, parallel: int = 4, crash_every: int = 250, hold: float = 0.02
) -> dict[str, Any]:
    """RSS while SSE clients connect to /events, read its first bytes, stay up to ``hold``
    seconds, hang up and reconnect; a backend crash every ``crash_every`` connections makes
    events flow to the open streams.

    The baseline is taken after the one-time costs the crashes bring, as in `crash_growth`:
    4 crashes (a crash loop) and 12 s (longer than ALERT_GROUP_WAIT: its mail is rendered,
    jinja2 and the mail modules load), then a few hundred streams. Without that, the first
    alert's ~2.3 MiB (measured) would count as growth of the SSE path."""
    scenario = new_scenario()
    finder = scenario.finder()
    with Running(scenario) as run:
        port = run.status_port
        for _ in range(4):
            crash_and_wait(scenario, finder)
        time.sleep(12.0)
        warm = min(200, cycles // 10)
        for _ in range(warm):
            _get(port, "/events")
        time.sleep(2.0)
        before = rss_mib(run.pid)
        done = 0
        failures = 0
        lock = threading.Lock()
        stop = threading.Event()

        def client() -> None:
            nonlocal done, failures
            while not stop.is_set():
                with lock:
                    if done >= cycles:
                        return
                    done += 1
                    n = done
                try:
                    head = _get(port, "/events", hold=random.uniform(0, hold))
                    if b"200" not in head[:20]:
                        with lock:
                            failures += 1
                except OSError:
                    with lock:
                        failures += 1
                if n % crash_every == 0:  # events flow to the streams: a crash and restart
                    pids = finder.current()
                    if pids:
                        kill_pid(pids[0])

        started = time.monotonic()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(parallel)]
        for t in threads:
            t.start()
        peak = before
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mib(run.pid))
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        wait_healthy(scenario.port, time.monotonic() + 10)
        time.sleep(2.0)
        after = rss_mib(run.pid)
        hold_s = hold
    return {
        "cycles": cycles,
        "parallel": parallel,
        "hold_max_s": hold_s,
        "failures": failures,
        "seconds": round(elapsed, 1),
        "rss_mib_before": round(before, 1),
        "rss_mib_peak": round(peak, 1),
        "rss_mib_after": round(after, 1),
        "growth_mib": round(after - before, 1),
    }


# Python memory (tracemalloc) each module's own import allocates, nested imports excluded:
# a loader wrapper measures around exec_module and subtracts what imports inside it took.
OWN_MODULES_PROBE = """
import importlib.abc, json, sys, tracemalloc
tracemalloc.start()
own, stack = {}, []
class Measured(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner
    def create_module(self, spec):
        return self.inner.create_module(spec)
    def exec_module(self, module):
        before = tracemalloc.get_traced_memory()[0]
        stack.append(0)
        try:
            self.inner.exec_module(module)
        finally:
            nested = stack.pop()
            total = tracemalloc.get_traced_memory()[0] - before
            own[module.__name__] = own.get(module.__name__, 0) + total - nested
            if stack:
                stack[-1] += total
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = Measured(spec.loader)
                return spec
        return None
sys.meta_path.insert(0, Finder())
import httpx, uvicorn, starlette.applications, starlette.routing, prometheus_client, psutil
before = set(own)
import watchdog.app, watchdog.api
print(json.dumps({k: v for k, v in own.items() if k not in before}))
"""


def own_modules_table(top: int = 15) -> dict[str, Any]:
    """What ``erpwatch run`` imports beyond the libraries it loads (the required ones but
    pydantic-settings, whose validation runs in a child), per module (traced Python memory;
    native memory such as SQLite's is not in it)."""
    done = subprocess.run(
        [str(ERPWATCH_PYTHON), "-c", OWN_MODULES_PROBE],
        env=installed_env(),
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-300:]}
    sizes: dict[str, int] = json.loads(done.stdout)
    ours = {k: v for k, v in sizes.items() if k.split(".")[0] in ("watchdog", "alerting")}
    mib = 2**20
    return {
        "own_mib": round(sum(ours.values()) / mib, 2),
        "own_modules": len(ours),
        "others_mib": round((sum(sizes.values()) - sum(ours.values())) / mib, 2),
        "others_modules": len(sizes) - len(ours),
        "top": [
            {"module": k, "kib": round(v / 1024, 1)}
            for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
        ],
    }


def import_table(runs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, stmt in IMPORTS:
        times, rsses, mods = [], [], []
        for _ in range(runs):
            done = subprocess.run(
                [str(ERPWATCH_PYTHON), "-c", IMPORT_PROBE.format(stmt=stmt)],
                env=installed_env(),
                cwd=tempfile.gettempdir(),  # not this checkout: its modules would come first
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                rows.append({"module": label, "error": done.stderr.strip()[-300:]})
                break
            dt, rss, nmods = done.stdout.split()
            times.append(float(dt))
            rsses.append(int(rss) / 2**20)
            mods.append(int(nmods))
        else:
            rows.append(
                {
                    "module": label,
                    "import_ms": round(statistics.median(times) * 1000, 1),
                    "rss_mib": round(statistics.median(rsses), 1),
                    "modules": int(statistics.median(mods)),
                }
            )
    bare = next((r for r in rows if r["module"] == "(bare interpreter)" and "rss_mib" in r), None)
    for row in rows:
        if bare is not None and "rss_mib" in row:
            row["rss_mib_over_bare"] = round(row["rss_mib"] - bare["rss_mib"], 1)
    return rows


def _timed(
    cmd: list[str], runs: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    def once() -> tuple[float, int]:
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd, capture_output=True, env=env or installed_env(), cwd=cwd, timeout=60, check=False
        )
        return (time.perf_counter() - t0) * 1000, done.returncode

    once()  # warm the page cache
    samples, codes = [], set()
    for _ in range(runs):
        ms, code = once()
        samples.append(ms)
        codes.add(code)
    return {
        "median_ms": round(statistics.median(samples), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
        "runs": runs,
        "exit_codes": sorted(codes),
    }


def cli_timings(runs: int, events: int) -> dict[str, Any]:
    from bench import bench_history

    out: dict[str, Any] = {}
    out["python -c pass"] = _timed([str(ERPWATCH_PYTHON), "-c", "pass"], runs)
    out["erpwatch --version"] = _timed([str(ERPWATCH), "--version"], runs)
    with tempfile.TemporaryDirectory(prefix="erpwatch-bench-cli-") as tmp:
        db = Path(tmp) / "events.db"
        bench_history.fill(db, events)
        cmd = [
            str(ERPWATCH),
            "history",
            "--db",
            str(db),
            "--target",
            "backend",
            "--kind",
            "crashed",
        ]
        out["erpwatch history"] = _timed(cmd, runs)
        out["erpwatch history"]["events"] = events
        out["erpwatch history"]["args"] = "--target backend --kind crashed (50 rows, table)"
    with Running(new_scenario()) as run:
        time.sleep(2.0)
        out["erpwatch status"] = _timed(
            [str(ERPWATCH), "status"], runs, env=dict(run.env), cwd=run.peer.tmp
        )
    return out


def measure(quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every figure of this script; ``log`` hears about each step."""
    installed_erpwatch()  # measured as installed: a wheel, byte-compiled, no dev extras
    results: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("rss", lambda: rss_after_warmup(5.0 if quick else 30.0, 3.0 if quick else 10.0)),
        (
            "crash_growth",
            lambda: (
                crash_growth(20, warmup_crashes=5, settle=11.0, final_settle=3.0)
                if quick
                else crash_growth(300)
            ),
        ),
        ("sse_churn", lambda: sse_churn(400 if quick else 20_000)),
        ("imports", lambda: import_table(2 if quick else 7)),
        ("own_modules", own_modules_table),
        ("cli", lambda: cli_timings(3 if quick else 10, 20_000 if quick else 200_000)),
    ]
    for key, fn in steps:
        started = time.monotonic()
        log(f"footprint: {key} ...")
        try:
            results[key] = fn()
        except Exception as exc:  # recorded, not fatal: the other figures still count
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"footprint: {key} done in {time.monotonic() - started:.0f}s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.quick, log=lambda m: print(m, file=sys.stderr)), indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
