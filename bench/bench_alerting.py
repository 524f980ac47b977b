"""Alerting benchmark (a script, not a test): run ``.venv/bin/python bench/bench_alerting.py``.

1. latency: event published on the bus → mail accepted by a loopback aiosmtpd server, with
   ERPWATCH_ALERT_GROUP_WAIT=0; median over runs (target: <= 1 s + group wait).
2. backlog: 1,000 mails already queued in the outbox drain through the delivery worker
   (one SMTP connection per batch of up to 1,000); mails/s (target: >= 50).
3. retry backlog: the mail server down, 20,000 mails of ~8 KiB waiting for their retry and
   50 due: the writer-thread time of one `Outbox.due` call (each drain makes one or more).
4. storm: 1,000 events of a crash-looping target in a burst (crashed, restarted, crash-loop,
   restart-limit-reached, down, ...) with the default grouping → mails sent, events stored.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerting.outbox import EventBatch
from alerting.render import Mail
from alerting.service import AlertService
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.events import Event, Kind
from watchdog.store import EventStore


class Sink:
    def __init__(self) -> None:
        self.accepted: list[float] = []
        self.peers: set[Any] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.accepted.append(time.perf_counter())
        self.peers.add(session.peer)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def bench_latency(runs: int, workdir: Path, port: int, sink: Sink) -> list[float]:
    settings = load_settings(
        log_path=workdir / "latency",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        alert_to=["ops@example.com"],
        alert_group_wait=0,
        alert_rate_limit=100_000,
    )
    store = EventStore(settings.event_db_path)
    bus = EventBus(store)
    service = AlertService(settings, store, bus, hostname="bench")
    await service.start()
    latencies = []
    try:
        for run in range(runs):
            before = len(sink.accepted)
            start = time.perf_counter()
            await bus.publish(Event.of(f"target{run}", Kind.DOWN, "down"))
            while len(sink.accepted) == before:  # noqa: ASYNC110 (filled by the server thread)
                await asyncio.sleep(0.001)
            latencies.append(sink.accepted[-1] - start)
    finally:
        await service.stop()
        await bus.close()
        store.close()
    return latencies


async def bench_backlog(count: int, workdir: Path, port: int, sink: Sink) -> tuple[float, int]:
    settings = load_settings(
        log_path=workdir / "backlog",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        alert_to=["ops@example.com"],
    )
    store = EventStore(settings.event_db_path)
    bus = EventBus(store)
    service = AlertService(settings, store, bus, hostname="bench")
    await bus.run_in_writer(service.outbox.ensure_schema)
    template = service.renderer.build(
        "[erpwatch] DOWN backlog", ["ops@example.com"], "<x@bench>", "body", "<p>body</p>",
        Event.of("x", Kind.DOWN, "").ts, [],
    )  # fmt: skip
    mails = [
        Mail("firing", f"t{i}", None, ("ops@example.com",), "backlog", f"<{i}@bench>", template)
        for i in range(count)
    ]
    wall = Event.of("x", Kind.DOWN, "").ts
    cursor = await bus.run_in_writer(service.outbox.cursor)
    batch = EventBatch(events=[], start=cursor, end=cursor, read=0)
    await bus.run_in_writer(service.outbox.commit_step, batch, {}, mails, [], wall)
    before, peers_before = len(sink.accepted), set(sink.peers)
    start = time.perf_counter()
    await service.start()
    try:
        while len(sink.accepted) - before < count or service.stats()["pending"]:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
    finally:
        await service.stop()
        await bus.close()
        store.close()
    return count / elapsed, len(sink.peers - peers_before)


async def bench_storm(count: int, workdir: Path, port: int, sink: Sink) -> tuple[int, int]:
    settings = load_settings(
        log_path=workdir / "storm",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        alert_to=["ops@example.com"],
        alert_group_wait=0.5,
    )
    store = EventStore(settings.event_db_path)
    bus = EventBus(store)
    service = AlertService(settings, store, bus, hostname="bench", poll=0.05)
    await service.start()
    kinds = [Kind.CRASHED, Kind.RESTARTED, Kind.CRASH_LOOP, Kind.DOWN, Kind.RESTART_LIMIT_REACHED]
    before = len(sink.accepted)
    try:
        for i in range(count):
            await bus.publish(Event.of("backend", kinds[i % len(kinds)], f"storm {i}"))
        # Settle: the group wait, then delivery; stop once nothing is pending for a while.
        quiet_since = time.perf_counter()
        deadline = quiet_since + 30
        seen = len(sink.accepted)
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            if len(sink.accepted) != seen or service.stats()["pending"]:
                seen, quiet_since = len(sink.accepted), time.perf_counter()
            elif time.perf_counter() - quiet_since > 2.0:
                break
        stored = store.count()
    finally:
        await service.stop()
        await bus.close()
        store.close()
    return len(sink.accepted) - before, stored


def bench_retry_backlog(waiting: int, workdir: Path, calls: int = 5) -> float:
    """Milliseconds per ``Outbox.due(100, skip)`` with ``waiting`` rows skipped (their
    retry not due yet) and 50 due, on a real SQLite file."""
    from datetime import UTC, datetime

    from alerting.outbox import Outbox

    store = EventStore(workdir / "retry-backlog.db")
    outbox = Outbox(store)
    outbox.ensure_schema()
    mails = [
        Mail("down", "backend", None, ("ops@x.org",), "s", f"<{i}@h>", b"x" * 8000)
        for i in range(waiting + 50)
    ]
    with store.transaction() as conn:
        outbox._insert(conn, mails, datetime.now(UTC))
    skip = set(range(1, waiting + 1))
    started = time.perf_counter()
    for _ in range(calls):
        due = outbox.due(100, skip)
    elapsed = (time.perf_counter() - started) / calls
    store.close()
    assert len(due) == 50, len(due)
    return elapsed * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=20000)
    args = parser.parse_args()
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            latencies = await bench_latency(args.runs, Path(tmp), port, sink)
            rate, connections = await bench_backlog(args.backlog, Path(tmp), port, sink)
            mails, stored = await bench_storm(args.storm, Path(tmp), port, sink)
            due_ms = bench_retry_backlog(args.waiting, Path(tmp))
    finally:
        controller.stop()
    ms = sorted(x * 1000 for x in latencies)
    print(f"event -> mail accepted (group wait 0, {args.runs} runs): median "
          f"{statistics.median(ms):.1f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, "
          f"max {ms[-1]:.1f} ms  (target <= 1000 ms)")  # fmt: skip
    print(f"backlog of {args.backlog} queued mails: {rate:.0f} mails/s over {connections} "
          f"SMTP connection(s)  (target >= 50 mails/s)")  # fmt: skip
    print(f"mail server down, {args.waiting} mails waiting for their retry, 50 due: "
          f"{due_ms:.1f} ms of the store's writer per Outbox.due call")  # fmt: skip
    print(f"storm of {args.storm} events of one crash-looping target: {mails} mail(s) sent, "
          f"{stored} events stored (incl. alert decisions)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
