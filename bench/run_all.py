"""erpwatch side by side with supervisord and monit: one command, one run, one report.

    .venv/bin/python -m bench.run_all            # the full run (~15 min)
    .venv/bin/python -m bench.run_all --quick    # a smoke run (~3 min), fewer trials

Installs the peers first (supervisor + superlance into bench/.peers/venv from PyPI, monit from
Debian's packages when missing; what cannot be installed is reported and skipped), runs every
row against the same sample backend on loopback, and writes bench/RESULTS.md and
bench/results.json (``--out-dir`` to write elsewhere). Every process it starts is stopped by
its PID, also on Ctrl+C.
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
from bench.peers import BENCH_DIR, PEERS, PYTHON, ROOT, Erpwatch, Peer, install_peers

TARGETS = {
    "crash_restart_median_s": 0.020,
    "rss_mib": 40.0,
    "cpu_pct_core": 0.5,
    "scale_targets_per_core": 500,
    "lag_pct": 10.0,
}
# Figures measured earlier on the same kind of backend (from the issue), for reference.
EARLIER = {
    "supervisord": {"crash_restart_median_s": 1.03, "rss_mib": 24.7},
    "monit": {
        "crash_restart_median_s": 0.52,
        "hang_healthy_median_s": 1.70,
        "rss_mib": 7.4,
        "cpu_pct_core": 0.75,
    },
}


class Plan:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.crashes = 3 if quick else 12
        self.hangs = 3 if quick else 10
        self.hangs_monit = 2 if quick else 5
        self.hang_variants = 2 if quick else 5
        self.after_restart = 1 if quick else 5
        self.after_restart_monit = 1 if quick else 3
        self.overhead_s = 10.0 if quick else 60.0
        self.scale = [10, 100] if quick else [10, 100, 500]
        self.scale_s = 8.0 if quick else 30.0
        self.store_events = 100_000 if quick else 1_000_000
        self.orphan_crashes = 2 if quick else 3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def guarded(name: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; an error is recorded, not fatal (KeyboardInterrupt still is)."""
    started = time.monotonic()
    log(f"{name} ...")
    try:
        result = fn()
    except trials_unavailable() as exc:
        log(f"{name}: skipped ({exc})")
        return {"skipped": str(exc)}
    except Exception as exc:
        log(f"{name}: ERROR {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    log(f"{name}: done in {time.monotonic() - started:.0f}s")
    return result


def trials_unavailable() -> type[Exception]:
    from bench.peers import PeerUnavailable

    return PeerUnavailable


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
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


# --- rows ---------------------------------------------------------------------------------


def row_crash(plan: Plan) -> dict[str, Any]:
    out = {}
    for name, cls in PEERS.items():
        scenario = trials.new_scenario(http_check=name != "supervisord")
        out[name] = guarded(
            f"crash x{plan.crashes} {name}",
            lambda cls=cls, scenario=scenario: trials.fault_trials(
                cls(), scenario, inject="crash", count=plan.crashes, jitter=1.0
            ).to_dict(),
        )
    return out


def row_hang(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cls in PEERS.items():
        # httpok gets supervisord's shortest tick (TICK_5): checks every 5 s at best.
        period = 5.0 if name == "supervisord" else 1.0
        # monit takes ~30 s per hang here (see the notes): fewer trials keep the run bounded.
        count = plan.hangs_monit if name == "monit" else plan.hangs
        scenario = trials.new_scenario()
        out[name] = guarded(
            f"hang x{count} {name}",
            lambda cls=cls, scenario=scenario, period=period, count=count: trials.fault_trials(
                cls(), scenario, inject="hang", count=count, jitter=period
            ).to_dict(),
        )
    out["after_restart"] = {}
    for name, cls in PEERS.items():
        count = plan.after_restart_monit if name == "monit" else plan.after_restart
        scenario = trials.new_scenario()
        out["after_restart"][name] = guarded(
            f"hang right after a restart x{count} {name}",
            lambda cls=cls, scenario=scenario, count=count: trials.hang_after_restart_trials(
                cls(), scenario, count=count
            ).to_dict(),
        )
    out["erpwatch_settings"] = [
        guarded(
            f"erpwatch hang, interval {interval:g}s threshold {threshold:g}s",
            lambda interval=interval, threshold=threshold: erpwatch_hang_variant(
                plan, interval, threshold
            ),
        )
        for interval, threshold in ((1.0, 1.0), (1.0, 3.0), (0.5, 2.0))
    ]
    return out


def erpwatch_hang_variant(plan: Plan, interval: float, threshold: float) -> dict[str, Any]:
    """Hang → healthy, and from the first failed probe's start (erpwatch's event log: the
    ``unhealthy`` event's time minus that probe's latency) → healthy, vs THRESHOLD + 0.5 s."""
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
        first_failed_probe_to_healthy_s=trials.summary(detect),
        limit_s=threshold + 0.5,
    )
    return data


def row_overhead(plan: Plan) -> dict[str, Any]:
    configs: list[tuple[str, type[Peer], bool]] = [
        ("erpwatch", PEERS["erpwatch"], True),
        ("supervisord", PEERS["supervisord"], False),
        ("supervisord+httpok", PEERS["supervisord"], True),
        ("monit", PEERS["monit"], True),
    ]
    return {
        label: guarded(
            f"overhead {plan.overhead_s:g}s {label}",
            lambda cls=cls, check=check: trials.overhead(
                cls(), trials.new_scenario(http_check=check), seconds=plan.overhead_s
            ),
        )
        for label, cls, check in configs
    }


def row_scale(plan: Plan) -> dict[str, Any]:
    points = [
        guarded(f"scale {n} targets", lambda n=n: trials.scale(n, seconds=plan.scale_s))
        for n in plan.scale
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
            rows = bench_history.bench_queries(path, 20 if plan.quick else 50)
            cli_ms, startup_ms = bench_history.bench_cli(path, 3 if plan.quick else 5)
            seq, conc = asyncio.run(bench_history.bench_publish(Path(tmp) / "fresh.db", 5000))
        return {
            "events": plan.store_events,
            "fill_rows_per_s": round(plan.store_events / fill_s),
            "queries_ms": [
                {"query": label, "median_ms": round(med, 3), "p95_ms": round(p95, 3), "rows": n}
                for label, med, p95, n, _plan in rows
            ],
            "cli_history_median_ms": round(cli_ms, 1),
            "cli_version_median_ms": round(startup_ms, 1),
            "bus_events_per_s_sequential": round(seq),
            "bus_events_per_s_100_in_flight": round(conc),
        }

    return guarded(f"store at {plan.store_events:,} events (bench_history)", run)


def row_alerts(plan: Plan) -> dict[str, Any]:
    script = BENCH_DIR / "bench_alerting.py"
    if not script.exists():
        return {"skipped": "bench/bench_alerting.py is not there yet"}

    def run() -> dict[str, Any]:
        args = [PYTHON, str(script)]
        if plan.quick:
            args += ["--runs", "5"]
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
            lambda cls=cls: trials.orphans(
                cls(),
                trials.new_scenario(backend_args=("--spawn-grandchild", "--grandchild-setsid")),
                crashes=plan.orphan_crashes,
            ),
        )
        for name, cls in PEERS.items()
    }


# --- report -------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return (
        "-" if value is None else f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}"
    )


def mmm(s: dict[str, Any] | None, unit: str = "ms") -> str:
    if not s or not s.get("n"):
        return "-"
    if unit == "ms":
        return f"{ms(s['min'])} / {ms(s['median'])} / {ms(s['max'])} ms (n={s['n']})"
    return f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} s (n={s['n']})"


def cell(result: dict[str, Any], key: str, unit: str = "ms") -> str:
    if "skipped" in result:
        return f"not run: {result['skipped']}"
    if "error" in result:
        return f"error: {result['error'][:80]}"
    text = mmm(result.get(key), unit)
    if result.get("failures"):
        text += f" ({len(result['failures'])} missed: {result['failures'][0]})"
    return text


def targets_check(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    checks: list[tuple[str, str, str]] = []

    def med(path: list[str]) -> float | None:
        node: Any = results
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        return node.get("median") if isinstance(node, dict) else None

    crash = med(["crash", "erpwatch", "restart_s"])
    checks.append(
        (
            "crash → restart ≤ 20 ms median",
            ms(crash) + " ms",
            verdict(crash is not None and crash <= TARGETS["crash_restart_median_s"]),
        )
    )
    ours, theirs = med(["hang", "erpwatch", "healthy_s"]), med(["hang", "monit", "healthy_s"])
    checks.append(
        (
            "hang → healthy no slower than monit (1 s check, 1 s timeout), median",
            f"{ms(ours)} ms vs monit {ms(theirs)} ms",
            verdict(ours is not None and (theirs is None or ours <= theirs)),
        )
    )
    variants = results.get("hang", {}).get("erpwatch_settings", [])
    worst = []
    ok = bool(variants)
    for v in variants:
        d = v.get("first_failed_probe_to_healthy_s", {}) if isinstance(v, dict) else {}
        if not d.get("n"):
            ok = False
            continue
        worst.append(f"{v['interval_s']:g}/{v['threshold_s']:g}: max {d['max']:.2f} s")
        ok = ok and d["max"] <= v["limit_s"]
    checks.append(
        (
            "first failed probe → healthy ≤ TIMEOUT_THRESHOLD + 0.5 s at any setting",
            "; ".join(worst) or "-",
            verdict(ok),
        )
    )
    over = results.get("overhead", {}).get("erpwatch", {})
    rss, cpu = over.get("rss_mib_max"), over.get("cpu_pct_core")
    checks.append(
        ("RSS ≤ 40 MiB (status server on)", f"{rss} MiB", verdict(rss is not None and rss <= 40))
    )
    checks.append(
        (
            "CPU ≤ 0.5 % of a core, 1 target, 1 s check",
            f"{cpu} %",
            verdict(cpu is not None and cpu <= 0.5),
        )
    )
    points = results.get("scale", {}).get("points", [])
    at500 = next((p for p in points if p.get("targets") == 500), None)
    if at500 is None:
        checks.append(("≥ 500 targets per core, p99 lag < 10 %", "not measured", "-"))
    else:
        good = (
            at500["lag_p99_pct"] is not None
            and at500["lag_p99_pct"] < 10
            and at500["cpu_pct_core"] <= 100
        )
        checks.append(
            (
                "≥ 500 targets per core, p99 lag < 10 %",
                f"500 targets: CPU {at500['cpu_pct_core']:.0f} % of a core, "
                f"p99 lag {at500['lag_p99_pct']} %",
                verdict(good),
            )
        )
    orphans = results.get("orphans", {}).get("erpwatch", {})
    left = (orphans.get("after_crash_restarts"), orphans.get("after_stop"))
    checks.append(
        (
            "zero orphans",
            f"after crash restarts {left[0]}, after stop {left[1]}",
            verdict(left == (0, 0)),
        )
    )
    return checks


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    r = results
    m = r["machine"]
    lines = [
        "# erpwatch vs supervisord vs monit",
        "",
        f"Produced by `{r['command']}` on {r['date']} in {r['duration_s'] / 60:.1f} min"
        + (" (**quick smoke run**: few trials)" if r["quick"] else "")
        + ". Machine-readable: `bench/results.json`.",
        "",
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}",
        "- Versions: " + ", ".join(f"{k}: {v}" for k, v in r["versions"].items()),
        "- Peers: " + "; ".join(r["install_log"]),
        "",
        "Figures are min / median / max over n trials.",
        "",
        "## Method",
        "",
        "Every tool supervises the same sample backend (`python -m watchdog.demo.backend "
        "--port P`, stdlib HTTP server, ~60 ms to start) on 127.0.0.1, runs in the "
        "foreground with its own config in a temp dir and is stopped by its PID.",
        "",
        "- **erpwatch** `erpwatch run`: CHECK_INTERVAL 1 s, PROBE_TIMEOUT 1 s, "
        "TIMEOUT_THRESHOLD 1 s (restart on the first failed probe, like the peers), "
        "RESTART_BACKOFF 0 and MAX_RESTARTS 100000 (the peers have no backoff either), "
        "status server on.",
        "- **supervisord** `supervisord -n`, `[program:backend] autorestart=true` (defaults "
        "otherwise: startsecs=1). Hang detection: superlance `httpok -t 1` on `TICK_5`, the "
        "shortest tick supervisord has, so it checks every 5 s, not 1 s.",
        "- **monit** `monit -I`, `set daemon 1`, `check process backend with pidfile`, "
        '`if failed host 127.0.0.1 port P protocol http request "/health" with timeout 1 '
        "seconds then restart`. monit waits for a start program to return, so the start "
        "program is a shell that puts the backend in the background and writes the pidfile "
        "(a program left in the foreground blocks monit for the whole 30 s start timeout). "
        "Backgrounded processes are re-parented to init; PID 1 in this VM reaps only about "
        "once a second, so monit runs under `bench/reaper.py`, a child subreaper that reaps "
        "at once as systemd or tini would (without it monit sees a zombie for ~1 s more).",
        "- **Crash**: SIGKILL to the backend's PID after it answered and ran 1.2 s. "
        "**Hang**: `POST /fault/hang` (the old process stops answering /health; the new one "
        "is fine), at a random phase of the check period. From that moment: *new process* = "
        "a new backend PID seen in /proc (command line polled every 1 ms, tool-independent); "
        "*healthy* = our own client's first HTTP 200 from /health on a fresh connection "
        "(polled every 1 ms).",
        "- **Hang right after a restart**: crash, and as soon as the new process answers, hang it.",
        "- **Overhead**: one healthy target, 1 s HTTP check, 5 s warm-up, then RSS (sum over "
        "the watchdog's own processes, backend excluded; supervisord+httpok counts both) and "
        "CPU time / wall time, as % of one core.",
        "- **Scale**: N targets that are `sleep` processes (cheap to spawn), each with its own "
        "health URL on one asyncio process listening on N ports (`bench/scale_backend.py`), "
        "which records when each probe arrives. Lag of a probe = time since that target's "
        "previous probe - interval (1 s); measured on the backends' side, after a warm-up. "
        "erpwatch runs via `bench/run_unchecked.py` = `erpwatch run` without its start-up "
        "preflight, which refuses health ports held by another process (here on purpose).",
        "- **Store** reuses `bench/bench_history.py`; **Alerts** runs `bench/bench_alerting.py`.",
        "- **Orphans**: backend with `--spawn-grandchild --grandchild-setsid`; processes "
        "carrying the run's environment tag are counted after the crash restarts (grand"
        "children not belonging to the live backend) and after the tool was stopped as a "
        "user would (erpwatch/supervisord: SIGTERM; monit: `monit stop all`, then SIGTERM).",
        "",
        "## 1. Crash → new process, → first healthy answer",
        "",
        "| tool | crash → new process | crash → healthy |",
        "| --- | --- | --- |",
    ]
    for name in PEERS:
        res = r["crash"].get(name, {})
        lines.append(f"| {name} | {cell(res, 'restart_s')} | {cell(res, 'healthy_s')} |")
    lines += [
        "",
        "## 2. Hang → restarted, → healthy (1 s check, 1 s timeout)",
        "",
        "| tool | hang → new process | hang → healthy |",
        "| --- | --- | --- |",
    ]
    for name in PEERS:
        res = r["hang"].get(name, {})
        label = "supervisord + httpok (TICK_5)" if name == "supervisord" else name
        lines.append(f"| {label} | {cell(res, 'restart_s')} | {cell(res, 'healthy_s')} |")
    lines += [
        "",
        "Hang right after a restart:",
        "",
        "| tool | hang → new process | hang → healthy |",
        "| --- | --- | --- |",
    ]
    for name in PEERS:
        res = r["hang"]["after_restart"].get(name, {})
        lines.append(f"| {name} | {cell(res, 'restart_s')} | {cell(res, 'healthy_s')} |")
    lines += [
        "",
        "erpwatch at other settings (first failed probe → healthy, from erpwatch's event log "
        "and our client; limit TIMEOUT_THRESHOLD + 0.5 s):",
        "",
        "| interval / threshold | hang → healthy | first failed probe → healthy | limit |",
        "| --- | --- | --- | --- |",
    ]
    for v in r["hang"]["erpwatch_settings"]:
        if "interval_s" not in v:
            lines.append(f"| - | {cell(v, 'healthy_s')} | | |")
            continue
        lines.append(
            f"| {v['interval_s']:g} s / {v['threshold_s']:g} s | {cell(v, 'healthy_s')} | "
            f"{mmm(v['first_failed_probe_to_healthy_s'])} | {v['limit_s']:g} s |"
        )
    lines += [
        "",
        f"## 3. Overhead: one healthy target, 1 s check, {r['plan']['overhead_s']:g} s",
        "",
        "| watchdog | RSS median / max (MiB) | CPU (% of a core) | processes |",
        "| --- | --- | --- | --- |",
    ]
    for label, res in r["overhead"].items():
        if "rss_mib_max" not in res:
            lines.append(f"| {label} | {cell(res, '')} | | |")
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
        "| targets never probed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in r["scale"]["points"]:
        if "targets" not in p:
            lines.append(f"| ? | {cell(p, '')} | | | | |")
            continue
        lines.append(
            f"| {p['targets']} | {p['cpu_pct_core']:.1f} | {p['rss_mib_max']} | "
            f"{mmm(p['lag_s'])} | {ms(p['lag_p99_s'])} ms ({p['lag_p99_pct']} %) | "
            f"{p['targets_without_probe']} |"
        )
    lines += [
        "",
        f"Largest N measured with p99 lag < 10 % of the interval: "
        f"{r['scale']['largest_n_lag_under_10pct']}.",
        "",
        "## 5. Store (bench_history.py)",
        "",
    ]
    st = r["store"]
    if "events" in st:
        lines += [
            f"- {st['events']:,} events filled at {st['fill_rows_per_s']:,} rows/s.",
            f"- EventBus.publish → SQLite: {st['bus_events_per_s_sequential']:,} events/s "
            f"awaited one by one, {st['bus_events_per_s_100_in_flight']:,} events/s with 100 "
            "in flight.",
            f"- `erpwatch history --target backend --kind crashed --json` (whole CLI): median "
            f"{st['cli_history_median_ms']} ms (`erpwatch --version` alone: "
            f"{st['cli_version_median_ms']} ms).",
            "",
            "| query (in-process) | median ms | p95 ms | rows |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {q['query']} | {q['median_ms']} | {q['p95_ms']} | {q['rows']} |"
            for q in st["queries_ms"]
        ]
    else:
        lines.append(cell(st, ""))
    lines += ["", "## 6. Alerts (bench_alerting.py)", ""]
    al = r["alerts"]
    if "output" in al:
        lines += ["```", al["output"].strip(), "```"]
    else:
        lines.append(cell(al, ""))
    lines += [
        "",
        "## 7. Orphans (setsid grandchild), left behind",
        "",
        "| tool | after crash restarts | after stop |",
        "| --- | --- | --- |",
    ]
    for name in PEERS:
        res = r["orphans"].get(name, {})
        if "after_stop" not in res:
            lines.append(f"| {name} | {cell(res, '')} | |")
            continue
        lines.append(
            f"| {name} | {res['after_crash_restarts']} (after {res['crashes']} crashes) | "
            f"{res['after_stop']} |"
        )
    lines += [
        "",
        "## erpwatch's targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets_check(r)]
    lines += [
        "",
        "Earlier figures on the same kind of backend (from the issue), for reference: "
        "supervisord crash → restart median 1.03 s, RSS 24.7 MiB; monit crash → restart "
        "0.52 s, hang → healthy 1.70 s, RSS 7.4 MiB, CPU 0.75 % of a core.",
    ]
    notes = r.get("notes")
    if notes:
        lines += ["", "## Notes", "", *notes]
    (out_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")


NOTES_FILE = BENCH_DIR / "NOTES.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, few trials")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=["crash", "hang", "overhead", "scale", "store", "alerts", "orphans"],
        help="run only these rows (repeatable)",
    )
    args = parser.parse_args(argv)
    plan = Plan(args.quick)
    started = time.monotonic()
    install_log: list[str] = []
    log("installing peers ...")
    install_peers(install_log)
    for line in install_log:
        log(f"  {line}")
    versions = {}
    for name, cls in PEERS.items():
        peer = cls()
        why = peer.available()
        versions[name] = f"not available: {why}" if why else peer.version()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run_all" + (" --quick" if args.quick else ""),
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
        "store": row_store,
        "alerts": row_alerts,
        "orphans": row_orphans,
    }
    empty: dict[str, Any] = {
        "crash": {},
        "hang": {"after_restart": {}, "erpwatch_settings": []},
        "overhead": {},
        "scale": {"points": [], "largest_n_lag_under_10pct": None},
        "store": {"skipped": "not run"},
        "alerts": {"skipped": "not run"},
        "orphans": {},
    }
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
    log(f"wrote {args.out_dir / 'RESULTS.md'} and results.json in {results['duration_s']:.0f}s")
    for target, measured, ok in results["targets_check"]:
        log(f"  {ok:6} {target}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
