"""Benchmark the event store behind ``erpwatch history`` (a script, not a test).

Fills a fresh database with N events (default 1,000,000) spread over targets, kinds and
30 days, then times typical history queries in-process (median/p95), the whole CLI as a
subprocess, and events/s through `EventBus.publish`.

    .venv/bin/python bench/bench_history.py              # 1M events
    .venv/bin/python bench/bench_history.py --events 100000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from watchdog.bus import EventBus
from watchdog.events import DEFAULT_SEVERITY, Event, Kind, Severity
from watchdog.store import SEVERITY_RANK, EventStore, format_ts

TARGETS = ["backend", "worker-1", "worker-2", "scheduler", "reports", "api", "erpwatch"]
# Mostly health chatter, some failures, few criticals: roughly a real log's mix.
KIND_WEIGHTS = {
    Kind.HEALTHY: 40,
    Kind.DEGRADED: 20,
    Kind.UNHEALTHY: 10,
    Kind.STARTED: 6,
    Kind.CRASHED: 6,
    Kind.RESTARTED: 6,
    Kind.RESOURCE_WARNING: 5,
    Kind.RESOURCE_OK: 5,
    Kind.DOWN: 1,
    Kind.RESTART_LIMIT_REACHED: 0.5,
    Kind.ALERT_SENT: 0.5,
}
TARGET_LIMIT_MS = 50.0


def fill(path: Path, n: int, days: float = 30.0, seed: int = 7) -> float:
    """Insert ``n`` events with raw executemany in one transaction; returns seconds."""
    rng = random.Random(seed)
    kinds = list(KIND_WEIGHTS)
    weights = list(KIND_WEIGHTS.values())
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    step = (end - start) / max(n, 1)
    started = time.perf_counter()
    with EventStore(path) as store, store.transaction() as conn:
        batch: list[tuple[Any, ...]] = []
        chosen = rng.choices(kinds, weights, k=n)
        for i, kind in enumerate(chosen):
            severity = DEFAULT_SEVERITY.get(kind, Severity.INFO)
            target = TARGETS[rng.randrange(len(TARGETS))]
            batch.append(
                (
                    format_ts(start + step * i),
                    target,
                    str(kind),
                    str(severity),
                    SEVERITY_RANK[severity],
                    f"{target} {kind}",
                    f'{{"n": {i}}}',
                )
            )
            if len(batch) == 50_000:
                _insert(conn, batch)
                batch.clear()
        _insert(conn, batch)
    return time.perf_counter() - started


def _insert(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT INTO events (ts, target, kind, severity, severity_rank, message, details)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median and p95 in milliseconds, and the last result."""
    fn()  # warm the page cache and the statement cache
    samples = []
    result: object = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95, result


def bench_queries(path: Path, repeats: int) -> list[tuple[str, float, float, int, str]]:
    now = datetime.now(UTC)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("newest 50 (default)", {}),
        ("target=backend kind=crashed", {"target": "backend", "kinds": ["crashed"]}),
        ("target=backend", {"target": "backend"}),
        ("kind=crashed since=7d", {"kinds": ["crashed"], "since": now - timedelta(days=7)}),
        (
            "kind=crashed,down,restarted since=7d",
            {"kinds": ["crashed", "down", "restarted"], "since": now - timedelta(days=7)},
        ),
        ("severity>=critical", {"severity": "critical"}),
        ("severity>=warning", {"severity": "warning"}),
        (
            "target+kind since 2h..1h",
            {
                "target": "backend",
                "kinds": ["healthy"],
                "since": now - timedelta(hours=2),
                "until": now - timedelta(hours=1),
            },
        ),
        (
            "target=backend kind=down limit=0 (all)",
            {"target": "backend", "kinds": ["down"], "limit": None},
        ),
    ]
    rows = []
    with EventStore.open_readonly(path) as store:
        for label, filters in cases:
            median, p95, result = timed(functools.partial(store.query, **filters), repeats)
            plan = "; ".join(store.explain(**filters))
            rows.append((label, median, p95, len(result), plan))  # type: ignore[arg-type]
    return rows


def bench_cli(path: Path, runs: int) -> tuple[float, float]:
    exe = Path(sys.executable).parent / "erpwatch"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "watchdog.cli"]

    def run(args: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run([*cmd, *args], check=True, capture_output=True)
        return (time.perf_counter() - t0) * 1000

    history = ["history", "--db", str(path), "--target", "backend", "--kind", "crashed", "--json"]
    run(history)
    full = statistics.median(run(history) for _ in range(runs))
    startup = statistics.median(run(["--version"]) for _ in range(runs))
    return full, startup


async def bench_publish(path: Path, n: int) -> tuple[float, float]:
    """Events/s through EventBus.publish: one at a time, and 100 in flight."""
    store = EventStore(path)
    bus = EventBus(store)
    sub = bus.subscribe("bench", maxsize=2 * n)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await bus.publish(Event.of("bench", Kind.HEALTHY, "tick", i=i))
        sequential = n / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for start in range(0, n, 100):
            await asyncio.gather(
                *(
                    bus.publish(Event.of("bench", Kind.HEALTHY, "tick", i=i))
                    for i in range(start, min(start + 100, n))
                )
            )
        concurrent = n / (time.perf_counter() - t0)
        assert sub.qsize() == 2 * n and sub.dropped == 0
    finally:
        await bus.close()
        store.close()
    return sequential, concurrent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=1_000_000, help="events to fill")
    parser.add_argument("--repeats", type=int, default=50, help="runs per in-process query")
    parser.add_argument("--cli-runs", type=int, default=5, help="runs of the CLI subprocess")
    parser.add_argument("--publish", type=int, default=5000, help="events through the bus")
    parser.add_argument("--dir", type=Path, help="keep the database here (default: temp)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="erpwatch-bench-") as tmp:
        base = args.dir if args.dir is not None else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        path = base / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

        fill_s = fill(path, args.events)
        size_mb = path.stat().st_size / 1e6
        print(
            f"fill: {args.events:,} events in {fill_s:.1f} s "
            f"({args.events / fill_s:,.0f} rows/s, raw executemany, 5 indexes), "
            f"{size_mb:.0f} MB"
        )
        print()
        rows = bench_queries(path, args.repeats)
        width = max(len(r[0]) for r in rows)
        print(f"{'query (in-process, read-only store)':<{width}}  median ms  p95 ms   rows")
        for label, median, p95, count, _plan in rows:
            flag = "" if median <= TARGET_LIMIT_MS else "  > target!"
            print(f"{label:<{width}}  {median:9.3f}  {p95:6.3f}  {count:5d}{flag}")
        print()
        print("plans:")
        for label, *_rest, plan in rows:
            print(f"  {label}: {plan}")
        print()
        cli_ms, startup_ms = bench_cli(path, args.cli_runs)
        print(
            f"CLI `erpwatch history --target backend --kind crashed --json`: "
            f"median {cli_ms:.0f} ms over {args.cli_runs} runs "
            f"(`erpwatch --version` alone: {startup_ms:.0f} ms)"
        )
        seq, conc = asyncio.run(bench_publish(path, args.publish))
        print(
            f"EventBus.publish into this DB ({args.publish:,} events, 1 subscriber): "
            f"{seq:,.0f} events/s awaited one by one, {conc:,.0f} events/s 100 in flight"
        )
        fresh = base / "fresh.db"
        seq_f, conc_f = asyncio.run(bench_publish(fresh, args.publish))
        print(
            f"EventBus.publish into a fresh DB: {seq_f:,.0f} events/s one by one, "
            f"{conc_f:,.0f} events/s 100 in flight"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
