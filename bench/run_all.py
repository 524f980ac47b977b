"""erpwatch side by side with supervisord, monit, PM2 and circus: one command, one run, one
report.

    .venv/bin/python -m bench.run_all            # the full run (~50 min; needs a quiet machine)
    .venv/bin/python -m bench.run_all --quick    # a smoke run (~4 min), few trials
    .venv/bin/python -m bench.run_all --only crash --only hang   # some rows only

Installs the peers first (supervisor, superlance and circus into bench/.peers/venv from PyPI,
PM2 into bench/.peers/node_modules from npm, monit from Debian's packages when missing; what
cannot be installed is reported and skipped), runs every row against the same backend (the
seed's stack: `bench/seed_backend.py`, uvicorn + the health kit) on loopback, measures
erpwatch as users install it (``pip install .`` into bench/.peers/erpwatch: the project's
editable dev venv starts every interpreter ~20 ms slower) and its own footprint
(`bench/bench_footprint.py`), and writes bench/RESULTS.md, bench/results.json and
bench/README-table.md (``--out-dir`` to write elsewhere). Every process it starts is stopped
by its PID, also on Ctrl+C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `python bench/<this>.py` works as well as `python -m bench.<this>`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import trials
from bench.measure import summary
from bench.peers import (
    BENCH_DIR,
    PEERS,
    PYTHON,
    ROOT,
    Erpwatch,
    Peer,
    PeerUnavailable,
    Scenario,
    install_peers,
    installed_erpwatch,
)

TARGETS = {
    "crash_restart_median_s": 0.020,
    "rss_mib": 45.0,
    "rss_growth_mib": 3.0,
    "cpu_pct_core": 0.5,
    "version_vs_bare": 2.0,
    "history_ms": 300.0,
    "status_ms": 300.0,
    "scale_targets": 1000,
    "scale_cpu_pct_core": 100.0,
    "lag_pct": 10.0,
    "hang_stop_timeout_s": 3.0,  # erpwatch's ERPWATCH_HANG_STOP_TIMEOUT default
}
# Figures measured earlier (from the issue), for reference: stdlib backend, not uvicorn.
EARLIER = {
    "supervisord": {"crash_restart_median_s": 1.03, "rss_mib": 24.7},
    "monit": {
        "crash_restart_median_s": 0.52,
        "hang_healthy_median_s": 1.70,
        "rss_mib": 7.4,
        "cpu_pct_core": 0.75,
    },
}
# Columns of the comparison, in order: (key in PEERS, label).
TOOLS = [
    ("erpwatch", "erpwatch"),
    ("supervisord", "supervisord"),
    ("monit", "monit"),
    ("monit-default", "monit (default timeouts)"),
    ("pm2", "PM2"),
    ("circus", "circus"),
]
HANG_LABEL = {
    "supervisord": "supervisord + httpok (TICK_5)",
    "circus": "circus + watchdog plugin",
    "monit": "monit (start `with timeout 2 seconds`)",
}


class Plan:
    """How many trials of what; --quick keeps every code path but few, fast trials."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.crashes = 2 if quick else 12
        # Hang trials per tool; 0 = not run. circus and monit with its default timeouts take
        # ~35 s per hang by design (SIGTERM grace / 30 s timeouts): not in the smoke run.
        self.hangs = (
            {"erpwatch": 1, "monit": 1, "pm2": 1}
            if quick
            else {
                "erpwatch": 10,
                "supervisord": 8,
                "monit": 8,
                "monit-default": 4,
                "pm2": 1,
                "circus": 4,
                "monit-term-only": 1,
            }
        )
        self.undetected_limit = 4.0 if quick else 30.0  # PM2, monit with a SIGTERM-only stop
        self.after_restart = (
            {"erpwatch": 1}
            if quick
            else {"erpwatch": 5, "supervisord": 4, "monit": 5, "monit-default": 3, "circus": 3}
        )
        self.hang_variants = 1 if quick else 5
        self.variant_settings = [(1.0, 1.0)] if quick else [(1.0, 1.0), (1.0, 3.0), (0.5, 2.0)]
        self.overhead_s = 3.0 if quick else 60.0
        self.overhead_warmup_s = 2.0 if quick else 5.0
        self.scale = [10, 100] if quick else [10, 100, 500, 1000]
        self.scale_s = 5.0 if quick else 30.0
        self.store_events = 50_000 if quick else 1_000_000
        self.orphan_crashes = 1 if quick else 3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def guarded(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one measurement, ``fn(*args, **kwargs)``; an error is recorded, not fatal
    (KeyboardInterrupt still is)."""
    started = time.monotonic()
    log(f"{name} ...")
    try:
        result: dict[str, Any] = fn(*args, **kwargs)
    except PeerUnavailable as exc:
        log(f"{name}: skipped ({exc})")
        return {"skipped": str(exc)}
    except Exception as exc:
        log(f"{name}: ERROR {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    log(f"{name}: done in {time.monotonic() - started:.0f}s")
    return result


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": [round(x, 2) for x in load],
    }


# --- rows ---------------------------------------------------------------------------------


def row_crash(plan: Plan) -> dict[str, Any]:
    out = {}
    for name, _label in TOOLS:
        cls = PEERS[name]
        # supervisord's crash row without httpok: its restart does not depend on it.
        scenario = trials.new_scenario(http_check=name != "supervisord")
        out[name] = guarded(
            f"crash x{plan.crashes} {name}",
            _trials, trials.fault_trials, cls, scenario, inject="crash", count=plan.crashes,
            jitter=1.0,
        )  # fmt: skip
    return out


def _trials(
    run: Callable[..., trials.Trials], cls: type[Peer], scenario: Scenario, **kwargs: Any
) -> dict[str, Any]:
    """``run`` with a new ``cls`` peer, as the report's dict."""
    return run(cls(), scenario, **kwargs).to_dict()


def _hang_trials(
    cls: type[Peer], scenario: Scenario, *, limit: float, **kwargs: Any
) -> dict[str, Any]:
    return _trials(trials.fault_trials, cls, scenario, inject="hang", limit=limit, **kwargs) | {
        "limit_s": limit
    }


def _period(name: str) -> float:
    # httpok gets supervisord's shortest tick (TICK_5): checks every 5 s at best.
    return 5.0 if name == "supervisord" else 1.0


def row_hang(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in [*(n for n, _ in TOOLS), "monit-term-only"]:
        count = plan.hangs.get(name, 0)
        if not count:
            out[name] = {"skipped": "not in --quick" if plan.quick else "not run"}
            continue
        cls = PEERS[name]
        undetected = not cls.detects_hangs or name == "monit-term-only"
        limit = plan.undetected_limit if undetected else 90.0
        scenario = trials.new_scenario()
        out[name] = guarded(
            f"hang x{count} {name}",
            _hang_trials, cls, scenario, count=count, jitter=_period(name), limit=limit,
        )  # fmt: skip
    out["after_restart"] = {}
    for name, _label in TOOLS:
        count = plan.after_restart.get(name, 0)
        if not PEERS[name].detects_hangs:
            out["after_restart"][name] = {"skipped": "no health check: cannot see a hang"}
            continue
        if not count:
            out["after_restart"][name] = {"skipped": "not in --quick" if plan.quick else "not run"}
            continue
        cls = PEERS[name]
        scenario = trials.new_scenario()
        out["after_restart"][name] = guarded(
            f"hang right after a restart x{count} {name}",
            _trials, trials.hang_after_restart_trials, cls, scenario, count=count, limit=90.0,
        )  # fmt: skip
    out["erpwatch_settings"] = [
        guarded(
            f"erpwatch hang, interval {interval:g}s threshold {threshold:g}s",
            erpwatch_hang_variant,
            plan,
            interval,
            threshold,
        )
        for interval, threshold in plan.variant_settings
    ]
    return out


def erpwatch_hang_variant(plan: Plan, interval: float, threshold: float) -> dict[str, Any]:
    """Hang → healthy, and from the first failed probe's start (erpwatch's event log: the
    ``unhealthy`` event's time minus that probe's latency) → healthy, vs THRESHOLD +
    HANG_STOP_TIMEOUT + 0.5 s (a hung uvicorn ignores SIGTERM: SIGKILL after that grace)."""
    import sqlite3

    peer = Erpwatch()
    scenario = trials.new_scenario(interval=interval, threshold=threshold, timeout=1.0)
    keep: dict[str, Any] = {}
    original_cleanup = peer.cleanup

    def cleanup() -> None:
        db = peer.db_path
        if db is not None and db.exists():
            with sqlite3.connect(db) as conn:
                keep["rows"] = conn.execute(
                    "SELECT ts, kind, details FROM events WHERE target='backend' ORDER BY id"
                ).fetchall()
        original_cleanup()

    peer.cleanup = cleanup  # type: ignore[method-assign]
    result = trials.fault_trials(
        peer, scenario, inject="hang", count=plan.hang_variants, jitter=interval
    )
    starts = []
    for ts, kind, details in keep.get("rows", []):
        if kind == "unhealthy":
            when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
            latency = json.loads(details or "{}").get("latency_ms", 0) / 1000
            starts.append(when - latency)
    detect = []
    for start in starts:
        later = [h for h in result.healthy_wall if h > start]
        if later:
            detect.append(min(later) - start)
    data = result.to_dict()
    data.update(
        interval_s=interval,
        threshold_s=threshold,
        first_failed_probe_to_healthy_s=summary(detect),
        limit_s=threshold + TARGETS["hang_stop_timeout_s"] + 0.5,
    )
    return data


def row_overhead(plan: Plan) -> dict[str, Any]:
    configs: list[tuple[str, str, bool]] = [
        ("erpwatch", "erpwatch", True),
        ("supervisord", "supervisord", False),
        ("supervisord+httpok", "supervisord", True),
        ("monit", "monit", True),
        ("pm2", "pm2", False),
        ("circus", "circus", False),
        ("circus+watchdog", "circus", True),
    ]
    return {
        label: guarded(
            f"overhead {plan.overhead_s:g}s {label}",
            trials.overhead,
            PEERS[name](),
            trials.new_scenario(http_check=check),
            seconds=plan.overhead_s,
            warmup=plan.overhead_warmup_s,
        )
        for label, name, check in configs
    }


def row_scale(plan: Plan) -> dict[str, Any]:
    points = [
        guarded(f"scale {n} targets", trials.scale, n, seconds=plan.scale_s) for n in plan.scale
    ]
    good = [
        p["targets"]
        for p in points
        if "targets" in p
        and p["lag_p99_pct"] is not None
        and p["lag_p99_pct"] < TARGETS["lag_pct"]
        and p["targets_without_probe"] == 0
    ]
    return {"points": points, "largest_n_lag_under_10pct": max(good) if good else None}


def row_store(plan: Plan) -> dict[str, Any]:
    from bench import bench_history

    def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="erpwatch-bench-store-") as tmp:
            path = Path(tmp) / "bench.db"
            fill_s = bench_history.fill(path, plan.store_events)
            rows = bench_history.bench_queries(path, 10 if plan.quick else 50)
            seq, conc = asyncio.run(
                bench_history.bench_publish(Path(tmp) / "fresh.db", 1000 if plan.quick else 5000)
            )
        return {
            "events": plan.store_events,
            "fill_rows_per_s": round(plan.store_events / fill_s),
            "queries_ms": [
                {"query": label, "median_ms": round(med, 3), "p95_ms": round(p95, 3), "rows": n}
                for label, med, p95, n, _plan in rows
            ],
            "bus_events_per_s_sequential": round(seq),
            "bus_events_per_s_100_in_flight": round(conc),
        }

    return guarded(f"store at {plan.store_events:,} events (bench_history)", run)


def row_alerts(plan: Plan) -> dict[str, Any]:
    script = BENCH_DIR / "bench_alerting.py"
    if not script.exists():
        return {"skipped": "bench/bench_alerting.py is not there"}

    def run() -> dict[str, Any]:
        args = [PYTHON, str(script)]
        if plan.quick:
            args += ["--runs", "3", "--backlog", "200", "--storm", "200", "--waiting", "2000"]
        done = subprocess.run(
            args,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120 if plan.quick else 300,
            check=False,
        )
        return {"exit_code": done.returncode, "output": done.stdout[-3000:] + done.stderr[-800:]}

    return guarded("alerts (bench_alerting.py)", run)


def row_orphans(plan: Plan) -> dict[str, Any]:
    return {
        name: guarded(
            f"orphans {name}",
            trials.orphans,
            PEERS[name](),
            trials.new_scenario(backend_args=("--spawn-grandchild", "--grandchild-setsid")),
            crashes=plan.orphan_crashes,
        )
        for name, _label in TOOLS
        if name != "monit-default"  # the same process handling as monit
    }


def row_footprint(plan: Plan) -> dict[str, Any]:
    from bench import bench_footprint

    return guarded(
        "erpwatch footprint (bench_footprint)",
        lambda: bench_footprint.measure(plan.quick, log=lambda m: log(f"  {m}")),
    )


# --- report -------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10:
        return f"{value:.1f} s"
    if value >= 0.1:
        return f"{value * 1000:.0f} ms"
    return f"{value * 1000:.1f} ms"


def mmm(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{ms(s['min'])} / {ms(s['median'])} / {ms(s['max'])} (n={s['n']})"


def failed(result: dict[str, Any]) -> str | None:
    """Why there is no figure (skipped, error, no detection), or None."""
    if "skipped" in result:
        return f"not run: {result['skipped']}"
    if "error" in result:
        text = " ".join(str(result["error"]).split()).replace("|", "/")
        return f"error: {text if len(text) <= 180 else text[:70] + ' … ' + text[-100:]}"
    return None


def cell(result: dict[str, Any], key: str) -> str:
    why = failed(result)
    if why:
        return why
    summary = result.get(key)
    if (not summary or not summary.get("n")) and result.get("failures"):
        first = result["failures"][0]
        if "no new process within" in first:
            return f"**not restarted** within {result.get('limit_s', 0):g} s"
        return f"missed: {first}"
    text = mmm(summary)
    if result.get("failures"):
        text += f" ({len(result['failures'])} missed: {result['failures'][0]})"
    return text


def median_of(result: Any, key: str) -> float | None:
    if not isinstance(result, dict):
        return None
    node = result.get(key)
    return node.get("median") if isinstance(node, dict) else None


def g(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node


def targets_check(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    checks: list[tuple[str, str, str]] = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        checks.append((target, measured, "not measured" if ok is None else verdict(ok)))

    crash = median_of(g(results, "crash", "erpwatch"), "restart_s")
    add(
        "crash → new process ≤ 20 ms median",
        ms(crash),
        None if crash is None else crash <= TARGETS["crash_restart_median_s"],
    )
    ours = median_of(g(results, "hang", "erpwatch"), "healthy_s")
    theirs = median_of(g(results, "hang", "monit"), "healthy_s")
    add(
        "hang → healthy no slower than monit (its recommended config), median",
        f"{ms(ours)} vs monit {ms(theirs)}",
        None if ours is None or theirs is None else ours <= theirs,
    )
    variants = g(results, "hang", "erpwatch_settings") or []
    worst, ok = [], bool(variants)
    for v in variants:
        d = v.get("first_failed_probe_to_healthy_s", {}) if isinstance(v, dict) else {}
        if not d.get("n"):
            ok = False
            continue
        worst.append(f"{v['interval_s']:g}/{v['threshold_s']:g}: max {d['max']:.2f} s")
        ok = ok and d["max"] <= v["limit_s"]
    add(
        "first failed probe → healthy ≤ TIMEOUT_THRESHOLD + HANG_STOP_TIMEOUT (3 s) + 0.5 s",
        "; ".join(worst) or "-",
        ok if variants else None,
    )
    fp = g(results, "footprint")
    rss = g(fp, "rss").get("rss_mib_idle")
    served = g(fp, "rss").get("rss_mib_after_requests")
    imports = fp.get("imports") if isinstance(fp.get("imports"), list) else []
    floor = next(
        (row.get("rss_mib") for row in imports if "the floor" in str(row.get("module"))), None
    )
    needs = next(
        (row.get("rss_mib") for row in imports if "required set +" in str(row.get("module"))),
        None,
    )
    daemon = next(
        (row.get("rss_mib") for row in imports if "without pydantic" in str(row.get("module"))),
        None,
    )
    add(
        f"RSS ≤ {TARGETS['rss_mib']:g} MiB, 1 target + status server, after warm-up",
        f"{rss} MiB idle, {served} MiB after one request to each page"
        + ("" if floor is None else f" (the issue's floor, its required set: {floor} MiB")
        + ("" if needs is None else f"; with what else the run path needs: {needs} MiB")
        + ("" if daemon is None else f"; without pydantic-settings, as erpwatch run: {daemon} MiB")
        + ("" if floor is None else ")"),
        None if rss is None else rss <= TARGETS["rss_mib"],
    )
    growth = g(fp, "crash_growth").get("growth_mib")
    add(
        f"RSS flat (≤ {TARGETS['rss_growth_mib']:g} MiB growth) across "
        f"{g(fp, 'crash_growth').get('crashes', '?')} crash-restarts",
        f"{growth} MiB",
        None if growth is None else growth <= TARGETS["rss_growth_mib"],
    )
    sse = g(fp, "sse_churn").get("growth_mib")
    add(
        f"RSS flat (≤ {TARGETS['rss_growth_mib']:g} MiB growth) with SSE clients coming and "
        f"going ({g(fp, 'sse_churn').get('cycles', '?')} connections)",
        f"{sse} MiB",
        None if sse is None else sse <= TARGETS["rss_growth_mib"],
    )
    cpu = g(results, "overhead", "erpwatch").get("cpu_pct_core")
    add(
        "CPU ≤ 0.5 % of a core, 1 target, 1 s check",
        f"{cpu} %",
        None if cpu is None else cpu <= TARGETS["cpu_pct_core"],
    )
    cli = g(fp, "cli")
    bare = g(cli, "python -c pass").get("median_ms")
    version = g(cli, "erpwatch --version").get("median_ms")
    add(
        "`erpwatch --version` ≤ 2x bare `python -c pass`",
        f"{version} ms vs {bare} ms" + (f" ({version / bare:.1f}x)" if version and bare else ""),
        None if not (version and bare) else version <= TARGETS["version_vs_bare"] * bare,
    )
    history = g(cli, "erpwatch history")
    add(
        f"`erpwatch history` (filtered, 50 rows, {history.get('events', 0):,} events) ≤ 300 ms",
        f"{history.get('median_ms')} ms",
        None if history.get("median_ms") is None else history["median_ms"] <= 300,
    )
    status = g(cli, "erpwatch status").get("median_ms")
    add(
        "`erpwatch status` (whole process) ≤ 300 ms",
        f"{status} ms",
        None if status is None else status <= TARGETS["status_ms"],
    )
    points = g(results, "scale").get("points", [])
    big = next((p for p in points if p.get("targets") == TARGETS["scale_targets"]), None)
    if big is None:
        add("1000 targets at 1 s within one core, p99 lag < 10 %", "not measured", None)
    else:
        good = (
            big["lag_p99_pct"] is not None
            and big["lag_p99_pct"] < TARGETS["lag_pct"]
            and big["cpu_pct_core"] <= TARGETS["scale_cpu_pct_core"]
            and big["targets_without_probe"] == 0
        )
        add(
            "1000 targets at 1 s within one core, p99 lag < 10 %",
            f"CPU {big['cpu_pct_core']:.0f} % of a core, p99 lag {big['lag_p99_pct']} %",
            good,
        )
    orphans = g(results, "orphans", "erpwatch")
    left = (orphans.get("after_crash_restarts"), orphans.get("after_stop"))
    add(
        "zero orphans",
        f"after crash restarts {left[0]}, after stop {left[1]}",
        None if None in left else left == (0, 0),
    )
    return checks


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _tool_label(name: str) -> str:
    return dict(TOOLS).get(name) or PEERS[name].label


def method_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Method",
        "",
        "Every tool supervises the same backend, the seed's stack: `bench/seed_backend.py`, a "
        "Starlette app mounting erpwatch's health kit (`from watchdog.healthkit import "
        "HealthKit`) served by uvicorn (~0.3-0.5 s to start), on 127.0.0.1. Each tool runs "
        "with its configuration and state in a temp dir (PM2: PM2_HOME there) and is "
        "stopped as a user would, then by PID. Checks every 1 s with a 1 s timeout wherever "
        "the tool has a setting for it. How each tool is configured, and why:",
        "",
    ]
    seen = set()
    for name in PEERS:
        text = PEERS[name].describe()
        if text and text not in seen:
            seen.add(text)
            lines.append(f"- {text}")
    lines += [
        "",
        "- **Crash**: SIGKILL to the backend's PID after it answered and ran 1.2 s (+ up to "
        "1 s at random). **Hang**: `POST /fault/hang`: the handler answers, then blocks the "
        "event loop in a synchronous `time.sleep` (every request, /health included, stops "
        "answering, and uvicorn cannot act on SIGTERM), at a random phase of the check "
        "period. From that moment: *new process* = a new backend PID seen in /proc (polled "
        "every 1 ms, tool-independent); *healthy* = our own client's first HTTP 200 from "
        "/health on a fresh connection (polled every 1 ms). A tool that cannot see a hang "
        "(PM2) gets one trial that waits a bounded time for a restart that does not come.",
        "- **Hang right after a restart**: crash, and as soon as the new process answers, "
        "hang it (the start-up window where a tool may not yet be checking).",
        "- **Overhead**: one healthy target, 1 s check where the tool has one, a warm-up, "
        "then RSS (sum over the tool's own processes, backend excluded: supervisord + "
        "httpok, circusd + its plugin processes, PM2's God daemon) and CPU time / wall "
        "time, as % of one core.",
        "- **Scale** (erpwatch only): N targets that are `sleep` processes, each with its "
        "own health URL on one asyncio process listening on N ports (`bench/"
        "scale_backend.py`), which records when each probe arrives. Lag of a probe = time "
        "since that target's previous probe - interval (1 s), on the backends' side, after "
        "a warm-up of 8 s + N/50 s (28 s at 1000 targets). erpwatch runs via "
        "`bench/run_unchecked.py` = `erpwatch run` without "
        "its start-up preflight, which refuses health ports held by another process.",
        "- **Footprint** (erpwatch only, `bench/bench_footprint.py`): see its section.",
        "- **Orphans**: backend with `--spawn-grandchild --grandchild-setsid`; processes "
        "carrying the run's environment tag are counted after the crash restarts (grand"
        "children not belonging to the live backend) and after the tool was stopped as a "
        "user would (erpwatch, supervisord, circus: SIGTERM; monit: `monit stop all`, then "
        "SIGTERM; PM2: `pm2 kill`).",
    ]
    return lines


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    r = results
    m = r["machine"]
    lines = [
        "# erpwatch vs supervisord, monit, PM2 and circus",
        "",
        f"Produced by `{r['command']}` on {r['date']} in {r['duration_s'] / 60:.1f} min"
        + (" (**quick smoke run**: few trials, slow rows skipped)" if r["quick"] else "")
        + ". Machine-readable: `bench/results.json`; for the README: `bench/README-table.md`.",
        "",
        *(
            [
                " ".join(
                    f"{rows_are(group['rows'])} from the earlier run "
                    f"`{group['of']}` on {group['from']}, measured with the code of that run, "
                    "not re-measured since."
                    for group in kept_groups(r)
                ),
                "",
            ]
            if kept_groups(r)
            else []
        ),
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}; load average at start {m.get('loadavg_at_start')}",
        "- Versions: " + ", ".join(f"{k}: {v}" for k, v in r["versions"].items()),
        "- Peers: " + "; ".join(r["install_log"]),
        "",
        "Figures are min / median / max over n trials.",
        "",
        *method_lines(r),
        "",
        "## 1. Crash → new process, → first healthy answer",
        "",
        "| tool | crash → new process | crash → healthy |",
        "| --- | --- | --- |",
    ]
    for name, label in TOOLS:
        res = g(r, "crash", name)
        lines.append(f"| {label} | {cell(res, 'restart_s')} | {cell(res, 'healthy_s')} |")
    pm2 = g(r, "crash", "pm2").get("restart_each_s")
    if pm2:
        lines += [
            "",
            "PM2's restarts one after the other (its exponential backoff: 100 ms, x1.5 per "
            "restart, reset only after 30 s up; the trials crash it every ~2 s): "
            + ", ".join(ms(v) for v in pm2)
            + ".",
        ]
    lines += [
        "",
        "## 2. Hang → restarted, → healthy (1 s check, 1 s timeout)",
        "",
        "| tool | hang → new process | hang → healthy |",
        "| --- | --- | --- |",
    ]
    for name in [*(n for n, _ in TOOLS), "monit-term-only"]:
        res = g(r, "hang", name)
        label = HANG_LABEL.get(name) or _tool_label(name)
        if name == "pm2" and not failed(res):
            lines.append(f"| {label} | {cell(res, 'restart_s')} (no health check) | - |")
            continue
        lines.append(f"| {label} | {cell(res, 'restart_s')} | {cell(res, 'healthy_s')} |")
    lines += [
        "",
        "Hang right after a restart:",
        "",
        "| tool | hang → new process | hang → healthy |",
        "| --- | --- | --- |",
    ]
    for name, label in TOOLS:
        res = g(r, "hang", "after_restart", name)
        lines.append(f"| {label} | {cell(res, 'restart_s')} | {cell(res, 'healthy_s')} |")
    lines += [
        "",
        "erpwatch at other settings (first failed probe → healthy, from erpwatch's event log "
        "and our client; limit TIMEOUT_THRESHOLD + HANG_STOP_TIMEOUT + 0.5 s: a hung uvicorn "
        "ignores SIGTERM, so it is killed after the 3 s grace):",
        "",
        "| interval / threshold | hang → healthy | first failed probe → healthy | limit |",
        "| --- | --- | --- | --- |",
    ]
    for v in g(r, "hang").get("erpwatch_settings", []):
        if "interval_s" not in v:
            lines.append(f"| - | {cell(v, 'healthy_s')} | | |")
            continue
        lines.append(
            f"| {v['interval_s']:g} s / {v['threshold_s']:g} s | {cell(v, 'healthy_s')} | "
            f"{mmm(v['first_failed_probe_to_healthy_s'])} | {v['limit_s']:g} s |"
        )
    lines += [
        "",
        f"## 3. Overhead: one idle target, {r['plan']['overhead_s']:g} s after a "
        f"{r['plan']['overhead_warmup_s']:g} s warm-up",
        "",
        "| watchdog | RSS median / max (MiB) | CPU (% of a core) | processes |",
        "| --- | --- | --- | --- |",
    ]
    for label, res in g(r, "overhead").items():
        if "rss_mib_max" not in res:
            lines.append(f"| {label} | {failed(res) or '-'} | | |")
            continue
        lines.append(
            f"| {label} | {res['rss_mib_median']} / {res['rss_mib_max']} | "
            f"{res['cpu_pct_core']:.2f} | {res['processes']} |"
        )
    lines += [
        "",
        f"## 4. Scale: erpwatch, N targets, 1 s interval ({r['plan']['scale_s']:g} s window)",
        "",
        "| targets | CPU (% of a core) | RSS (MiB) | probe lag min / median / max | p99 lag "
        "| targets not probed in the window | all probed once after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in g(r, "scale").get("points", []):
        if "targets" not in p:
            lines.append(f"| ? | {failed(p) or '-'} | | | | | |")
            continue
        lines.append(
            f"| {p['targets']} | {p['cpu_pct_core']:.1f} | {p['rss_mib_max']} | "
            f"{mmm(p['lag_s'])} | {ms(p['lag_p99_s'])} ({p['lag_p99_pct']} %) | "
            f"{p['targets_without_probe']} | {p.get('all_first_probed_within_s')} s |"
        )
    lines += [
        "",
        "Largest N measured with p99 lag < 10 % of the interval: "
        f"{g(r, 'scale').get('largest_n_lag_under_10pct')}.",
        "",
        *footprint_lines(g(r, "footprint")),
        "",
        "## 7. Store (bench_history.py)",
        "",
    ]
    st = g(r, "store")
    if "events" in st:
        lines += [
            f"- {st['events']:,} events filled at {st['fill_rows_per_s']:,} rows/s.",
            f"- EventBus.publish → SQLite: {st['bus_events_per_s_sequential']:,} events/s "
            f"awaited one by one, {st['bus_events_per_s_100_in_flight']:,} events/s with 100 "
            "in flight.",
            "",
            "| query (in-process) | median ms | p95 ms | rows |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {q['query']} | {q['median_ms']} | {q['p95_ms']} | {q['rows']} |"
            for q in st["queries_ms"]
        ]
    else:
        lines.append(failed(st) or "-")
    lines += ["", "## 8. Alerts (bench_alerting.py)", ""]
    al = g(r, "alerts")
    if "output" in al:
        lines += ["```", al["output"].strip(), "```"]
    else:
        lines.append(failed(al) or "-")
    lines += [
        "",
        "## 9. Orphans (setsid grandchild), left behind",
        "",
        "| tool | after crash restarts | after stop |",
        "| --- | --- | --- |",
    ]
    for name, res in g(r, "orphans").items():
        label = _tool_label(name)
        if "after_stop" not in res:
            lines.append(f"| {label} | {failed(res) or '-'} | |")
            continue
        lines.append(
            f"| {label} | {res['after_crash_restarts']} (after {res['crashes']} crashes) | "
            f"{res['after_stop']} |"
        )
    lines += [
        "",
        "## erpwatch's targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in r["targets_check"]]
    lines += [
        "",
        "Earlier figures (from the issue, on the stdlib backend whose hang blocks one handler "
        "thread and which dies on SIGTERM), for reference: supervisord crash → restart "
        "median 1.03 s, RSS 24.7 MiB; monit (start `with timeout 2 seconds`) crash → "
        "restart 0.52 s, hang → healthy 1.70 s, RSS 7.4 MiB, CPU 0.75 % of a core.",
    ]
    notes = r.get("notes")
    if notes:
        lines += ["", "## Notes", "", *notes]
    (out_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (out_dir / "README-table.md").write_text(readme_table(r))


def footprint_lines(fp: dict[str, Any]) -> list[str]:
    lines = ["## 5. erpwatch's footprint (bench_footprint.py)", ""]
    why = failed(fp)
    if why:
        return [*lines, why]
    rss = fp.get("rss", {})
    if "rss_mib_idle" in rss:
        lines.append(
            f"- `erpwatch run`, one target (the seed backend, 1 s HTTP check) + status server, "
            f"after {rss['warmup_s']:g} s: **{rss['rss_mib_idle']} MiB** idle, "
            f"{rss['rss_mib_after_requests']} MiB after one request to each of /, /status, "
            f"/metrics and /events ({rss['threads']} threads)."
        )
    else:
        lines.append(f"- RSS after warm-up: {failed(rss) or '-'}")
    cg = fp.get("crash_growth", {})
    if "growth_mib" in cg:
        series = ", ".join(f"{n}: {v}" for n, v in cg["rss_mib_series"])
        lines.append(
            f"- Across {cg['crashes']} crash-restarts (SIGKILL, restart, healthy, again; the "
            f"stdlib sample backend, which starts in ~60 ms, so that they take "
            f"{cg['seconds']:g} s): RSS {cg['rss_mib_before']} → {cg['rss_mib_after']} MiB, "
            f"**growth {cg['growth_mib']} MiB**"
            + (f" ({cg['missed']} restarts missed)" if cg["missed"] else "")
            + f". Baseline taken after {cg['warmup_crashes']} warm-up crashes and "
            f"{cg['settle_s']:g} s (one-time costs such as the first crash-loop mail; before "
            f"any crash: {cg['rss_mib_before_any_crash']} MiB); the final figure "
            f"{cg['final_settle_s']:g} s after the last crash. Along the way (crashes: MiB): "
            f"{series}."
        )
    else:
        lines.append(f"- Crash-restart growth: {failed(cg) or '-'}")
    sse = fp.get("sse_churn", {})
    if "growth_mib" in sse:
        lines.append(
            f"- SSE clients coming and going: {sse['cycles']:,} connections to /events, "
            f"{sse['parallel']} at a time, each reading the stream's first bytes, staying "
            f"up to {sse['hold_max_s'] * 1000:.0f} ms and hanging up, with a backend crash "
            f"every 250 (events flowing), in "
            f"{sse['seconds']:g} s: as many connections as {sse['cycles'] / 1800:.1f} "
            "status-page tabs reconnecting every 2 s make in an hour, compressed. "
            f"RSS {sse['rss_mib_before']} → {sse['rss_mib_after']} MiB (peak "
            f"{sse['rss_mib_peak']}), **growth {sse['growth_mib']} MiB**, "
            f"{sse['failures']} failed connections."
        )
    else:
        lines.append(f"- SSE churn: {failed(sse) or '-'}")
    lines += [
        "",
        "## 6. Imports and CLI start-up (whole processes, medians)",
        "",
        "Each module imported alone in a fresh interpreter (erpwatch's venv, as installed "
        "by `pip install .`): its import time and the process's RSS afterwards. They overlap "
        "(pydantic, anyio, idna, ...), so the rows do not add up.",
        "",
        "| import | time (ms) | RSS (MiB) | over bare (MiB) | modules loaded |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in fp.get("imports", []) if isinstance(fp.get("imports"), list) else []:
        if "error" in row:
            lines.append(f"| {row['module']} | error: {row['error'][:80]} | | | |")
            continue
        lines.append(
            f"| {row['module']} | {row['import_ms']} | {row['rss_mib']} | "
            f"{row.get('rss_mib_over_bare', '-')} | {row['modules']} |"
        )
    own = fp.get("own_modules", {})
    if isinstance(own, dict) and "top" in own:
        lines += [
            "",
            "What `erpwatch run` imports beyond the libraries it loads (the required ones "
            "but pydantic-settings, whose validation runs in a child process), as Python "
            "memory (tracemalloc) each module's own import allocates, nested imports "
            f"excluded: erpwatch's {own['own_modules']} modules {own['own_mib']} MiB, "
            f"{own['others_modules']} other modules (sqlite3, ctypes, h11, anyio, ...) "
            f"{own['others_mib']} MiB. Native memory (SQLite, malloc's own overhead) is not "
            "in it: the RSS rows above hold it. The largest:",
            "",
            "| module | KiB |",
            "| --- | --- |",
            *(f"| {row['module']} | {row['kib']} |" for row in own["top"]),
        ]
    elif isinstance(own, dict) and "error" in own:
        lines += ["", f"Own modules' memory: error: {own['error'][:200]}"]
    cli = fp.get("cli", {})
    if isinstance(cli, dict) and "python -c pass" in cli:
        lines += [
            "",
            "| command (whole process) | median ms | min / max ms | runs |",
            "| --- | --- | --- | --- |",
        ]
        for label, res in cli.items():
            extra = ""
            if label == "erpwatch history":
                extra = f" {res['args']}, over {res['events']:,} events"
            if label == "erpwatch status":
                extra = " (against the running erpwatch, table)"
            codes = "" if res["exit_codes"] == [0] else f" (exit codes {res['exit_codes']})"
            lines.append(
                f"| `{label}`{extra}{codes} | {res['median_ms']} | {res['min_ms']} / "
                f"{res['max_ms']} | {res['runs']} |"
            )
    elif isinstance(cli, dict):
        lines.append(f"CLI timings: {failed(cli) or '-'}")
    return lines


def _med(result: Any, key: str) -> str:
    if not isinstance(result, dict):
        return "-"
    why = failed(result)
    if why:
        return "n/a" if "cannot see a hang" in why else "-"
    summary = result.get(key)
    if (not summary or not summary.get("n")) and result.get("failures"):
        if "no new process within" in result["failures"][0]:
            return "never (no health check)"
        return "missed"
    return ms(median_of(result, key))


def readme_table(r: dict[str, Any]) -> str:
    """A table for README's Performance section (medians; the full figures in RESULTS.md)."""
    cols = TOOLS
    head = "| | " + " | ".join(label for _, label in cols) + " |"
    sep = "| --- |" + " --- |" * len(cols)
    rows = []

    def line(title: str, values: list[str]) -> None:
        rows.append(f"| {title} | " + " | ".join(values) + " |")

    line("crash → healthy", [_med(g(r, "crash", n), "healthy_s") for n, _ in cols])
    line("hang → healthy", [_med(g(r, "hang", n), "healthy_s") for n, _ in cols])
    line(
        "hang right after a restart → healthy",
        [_med(g(r, "hang", "after_restart", n), "healthy_s") for n, _ in cols],
    )

    def orphans(name: str) -> str:
        res = g(r, "orphans", "monit" if name == "monit-default" else name)
        if "after_stop" not in res:
            return "-"
        return f"{res['after_crash_restarts']} / {res['after_stop']}"

    line("orphans left after crashes / after stop", [orphans(n) for n, _ in cols])
    over = g(r, "overhead")
    overhead_key = {
        "erpwatch": "erpwatch",
        "supervisord": "supervisord+httpok",
        "monit": "monit",
        "monit-default": "monit",
        "pm2": "pm2",
        "circus": "circus+watchdog",
    }

    def res_cell(name: str, key: str, fmt: str) -> str:
        value = g(over, overhead_key[name]).get(key)
        return "-" if value is None else format(value, fmt)

    line("RSS, one idle target (MiB)", [res_cell(n, "rss_mib_median", ".1f") for n, _ in cols])
    line(
        "CPU, one idle target (% of a core)", [res_cell(n, "cpu_pct_core", ".2f") for n, _ in cols]
    )
    points = g(r, "scale").get("points", [])
    big = next((p for p in points if p.get("targets") == TARGETS["scale_targets"]), None)
    text = [
        f"Produced by `{r['command']}` on {r['date'][:10]} ({r['machine']['cores']} cores, "
        f"{r['machine']['cpu']}); method, trials and every figure: `bench/RESULTS.md`. "
        "Medians. The backend is a uvicorn app with erpwatch's health kit; its hang blocks "
        "the event loop (and so ignores SIGTERM); checks every 1 s with a 1 s timeout where "
        "the tool allows (supervisord's httpok: every 5 s). Each tool is configured as its "
        "documentation recommends (RESULTS.md says how); each kills a hung backend after "
        "its own SIGTERM grace: erpwatch 3 s, monit 3 s (its stop program), supervisord "
        "10 s, circus 30 s. PM2 has no health check. RSS and CPU of supervisord and circus "
        "include their hang-detecting helper (httpok, the watchdog plugin). monit (default "
        "timeouts) differs from monit only in its timeouts: its orphan, RSS and CPU cells "
        "are monit's."
        + "".join(
            f" {rows_are(group['rows'])} from the earlier run of "
            f"{group['from'][:10]} (with that run's code)."
            for group in kept_groups(r)
        ),
        "",
        head,
        sep,
        *rows,
        "",
    ]
    fp = g(r, "footprint")
    cli = g(fp, "cli")
    extra = []
    if big is not None:
        extra.append(
            f"- erpwatch at 1000 targets, 1 s interval: {big['cpu_pct_core']:.0f} % of one "
            f"core, p99 probe lag {big['lag_p99_pct']} % of the interval."
        )
    rss = g(fp, "rss")
    if rss.get("rss_mib_idle") is not None:
        extra.append(
            f"- erpwatch RSS, one target + status server: {rss['rss_mib_idle']} MiB; growth "
            f"across {g(fp, 'crash_growth').get('crashes', '?')} crash-restarts: "
            f"{g(fp, 'crash_growth').get('growth_mib', '-')} MiB; with "
            f"{g(fp, 'sse_churn').get('cycles', '?')} SSE connections coming and going: "
            f"{g(fp, 'sse_churn').get('growth_mib', '-')} MiB."
        )
    if cli.get("erpwatch --version"):
        extra.append(
            f"- CLI, whole process: `erpwatch --version` {cli['erpwatch --version']['median_ms']}"
            f" ms (bare `python -c pass` {g(cli, 'python -c pass').get('median_ms')} ms), "
            f"`erpwatch history` over {g(cli, 'erpwatch history').get('events', 0):,} events "
            f"{g(cli, 'erpwatch history').get('median_ms')} ms, `erpwatch status` "
            f"{g(cli, 'erpwatch status').get('median_ms')} ms."
        )
    return "\n".join(text + extra) + "\n"


NOTES_FILE = BENCH_DIR / "NOTES.md"
ROWS = ["crash", "hang", "overhead", "scale", "footprint", "store", "alerts", "orphans"]


def kept_groups(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows ``results`` kept from earlier runs, one group per run (``rows``, ``from``,
    ``of``); an older results.json kept from one run only (a single group, not a list)."""
    kept = results.get("kept_rows") or []
    return [kept] if isinstance(kept, dict) else list(kept)


def rows_are(rows: list[str]) -> str:
    return f"Row {rows[0]} is" if len(rows) == 1 else f"Rows {', '.join(rows)} are"


def kept_from(earlier: dict[str, Any], rows: list[str]) -> list[dict[str, Any]]:
    """Where each of ``rows`` taken from ``earlier`` was measured: by ``earlier``'s own run,
    or, for a row that run had itself kept, by the run it was kept from."""
    origin = {row: (earlier["date"], earlier["command"]) for row in rows}
    for group in kept_groups(earlier):
        for row in group["rows"]:
            if row in origin:
                origin[row] = (group["from"], group["of"])
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        groups.setdefault(origin[row], []).append(row)
    return [{"rows": kept, "from": date, "of": command} for (date, command), kept in groups.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, few trials")
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="where to write the report (default: bench/, or for --quick a temp dir, so "
        "that a smoke run never overwrites the committed figures)",
    )
    parser.add_argument(
        "--only", action="append", default=[], choices=ROWS, help="run only these rows"
    )
    parser.add_argument(
        "--keep-others",
        type=Path,
        metavar="RESULTS_JSON",
        help="with --only: take the rows not run from this earlier results.json (the report "
        "says which rows come from which run)",
    )
    args = parser.parse_args(argv)
    if args.keep_others is not None and not args.only:
        parser.error("--keep-others needs --only")
    earlier = json.loads(args.keep_others.read_text()) if args.keep_others else None
    if args.out_dir is None:
        quick_dir = Path(tempfile.gettempdir()) / "erpwatch-bench-quick"
        args.out_dir = quick_dir if args.quick else BENCH_DIR
    plan = Plan(args.quick)
    started = time.monotonic()
    install_log: list[str] = []
    log("installing peers ...")
    install_peers(install_log)
    install_log.append(installed_erpwatch())  # erpwatch measured as users install it
    for line in install_log:
        log(f"  {line}")
    versions = {}
    for name, cls in PEERS.items():
        if name in ("monit-default", "monit-term-only"):
            continue
        peer = cls()
        why = peer.available()
        versions[name] = f"not available: {why}" if why else peer.version()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run_all"
        + (" --quick" if args.quick else "")
        + "".join(f" --only {row}" for row in args.only),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions,
        "install_log": install_log,
        "plan": vars(plan),
        "targets": TARGETS,
        "earlier": EARLIER,
    }
    rows: dict[str, Callable[[Plan], Any]] = {
        "crash": row_crash,
        "hang": row_hang,
        "overhead": row_overhead,
        "scale": row_scale,
        "footprint": row_footprint,
        "store": row_store,
        "alerts": row_alerts,
        "orphans": row_orphans,
    }
    empty: dict[str, Any] = {
        "crash": {},
        "hang": {"after_restart": {}, "erpwatch_settings": []},
        "overhead": {},
        "scale": {"points": [], "largest_n_lag_under_10pct": None},
        "footprint": {"skipped": "not run"},
        "store": {"skipped": "not run"},
        "alerts": {"skipped": "not run"},
        "orphans": {},
    }
    if earlier is not None:
        kept = [key for key in rows if key not in args.only]
        results["kept_rows"] = kept_from(earlier, kept)
        for key in kept:
            empty[key] = earlier.get(key, empty[key])
    try:
        for key, fn in rows.items():
            results[key] = fn(plan) if not args.only or key in args.only else empty[key]
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped; writing what was measured")
        for key in rows:
            results.setdefault(key, empty[key])
    results["duration_s"] = round(time.monotonic() - started, 1)
    if NOTES_FILE.exists():
        results["notes"] = NOTES_FILE.read_text().splitlines()
    results["targets_check"] = targets_check(results)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_report(results, args.out_dir)
    log(
        f"wrote {args.out_dir / 'RESULTS.md'}, results.json and README-table.md in "
        f"{results['duration_s']:.0f}s"
    )
    for target, measured, ok in results["targets_check"]:
        log(f"  {ok:6} {target}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
