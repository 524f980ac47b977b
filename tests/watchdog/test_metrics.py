"""Metrics: own registry, event counters, probe histogram, scrape-time status gauges."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import await_until, free_port
from watchdog.clock import RealClock
from watchdog.config import load_settings
from watchdog.events import Event, Kind
from watchdog.metrics import FAILURE_REASONS, Metrics, failure_reason, outbox_depth
from watchdog.monitor import TargetStatus
from watchdog.probe import Prober, ProbeResult, ProbeStatus, classify, make_client
from watchdog.resources import ResourceMonitor
from watchdog.states import TargetState
from watchdog.supervisor import Supervisor

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def probe(latency: float, checked_at: float | None = None) -> ProbeResult:
    at = time.monotonic() if checked_at is None else checked_at
    return ProbeResult(ProbeStatus.OK, latency, 200, "HTTP 200", at)


def target(name: str, state: TargetState, last_probe: ProbeResult | None = None) -> TargetStatus:
    return TargetStatus(
        name=name,
        state=state,
        pid=None,
        uptime=None if state is TargetState.FAILED else 30.0,
        restarts_in_window=2,
        restarts_total=7,
        health_url=None,
        last_probe=last_probe,
        last_event=None,
    )


def test_own_registry_not_the_global_one() -> None:
    first, second = Metrics(), Metrics()  # a second instance must not clash on names
    first.observe_event(Event.of("a", Kind.CRASHED, "x").with_id(1))
    assert samples(second).get(("erpwatch_events_total", ())) is None
    assert REGISTRY.get_sample_value("erpwatch_alerts_sent_total") is None


def test_events_counted_by_target_kind_severity() -> None:
    metrics = Metrics()
    for kind in (Kind.CRASHED, Kind.CRASHED, Kind.RESTART_LIMIT_REACHED):
        metrics.observe_event(Event.of("backend", kind, "x"))
    got = samples(metrics)
    crashed = (("kind", "crashed"), ("severity", "warning"), ("target", "backend"))
    assert got[("erpwatch_events_total", crashed)] == 2
    limit = (("kind", "restart-limit-reached"), ("severity", "critical"), ("target", "backend"))
    assert got[("erpwatch_events_total", limit)] == 1


def test_alerts_sent_and_failed_from_events() -> None:
    metrics = Metrics()
    metrics.observe_event(Event.of("erpwatch", Kind.ALERT_SENT, "sent"))
    metrics.observe_event(Event.of("erpwatch", Kind.ALERT_SENT, "sent"))
    metrics.observe_event(Event.of("erpwatch", Kind.ALERT_FAILED, "smtp down"))
    got = samples(metrics)
    assert got[("erpwatch_alerts_sent_total", ())] == 2
    assert got[("erpwatch_alerts_failed_total", ())] == 1


def test_probe_counted_once_per_probe() -> None:
    metrics = Metrics()
    first = probe(0.02, checked_at=10.0)
    assert metrics.observe_probe("backend", first)
    assert not metrics.observe_probe("backend", first)
    assert metrics.observe_probe("backend", probe(0.3, checked_at=11.0))
    got = samples(metrics)
    assert got[("erpwatch_probe_latency_seconds_count", (("target", "backend"),))] == 2
    assert got[("erpwatch_probe_latency_seconds_sum", (("target", "backend"),))] == 0.32
    bucket = (("le", "0.025"), ("target", "backend"))
    assert got[("erpwatch_probe_latency_seconds_bucket", bucket)] == 1


def test_status_gauges_read_at_scrape_time() -> None:
    current: list[TargetStatus] = [target("backend", TargetState.HEALTHY, probe(0.05))]

    def statuses() -> Sequence[TargetStatus]:
        return current

    metrics = Metrics(statuses=statuses)
    got = samples(metrics)
    assert got[("erpwatch_target_up", (("target", "backend"),))] == 1
    assert got[("erpwatch_target_uptime_seconds", (("target", "backend"),))] == 30
    assert got[("erpwatch_target_restarts_total", (("target", "backend"),))] == 7
    assert got[("erpwatch_target_restarts_in_window", (("target", "backend"),))] == 2
    assert got[("erpwatch_target_last_probe_latency_seconds", (("target", "backend"),))] == 0.05

    current[:] = [target("backend", TargetState.FAILED)]
    got = samples(metrics)
    assert got[("erpwatch_target_up", (("target", "backend"),))] == 0
    states = {
        dict(labels)["state"]: value
        for (name, labels), value in got.items()
        if name == "erpwatch_target_state"
    }
    assert states["failed"] == 1 and sum(states.values()) == 1
    assert set(states) == {str(state) for state in TargetState}
    assert ("erpwatch_target_uptime_seconds", (("target", "backend"),)) not in got


def test_outbox_depth_from_alert_stats() -> None:
    stats: dict[str, Any] = {"pending": 3, "sent": 9, "transport": "smtp://mail:25"}

    def alert_stats() -> Mapping[str, Any]:
        return stats

    got = samples(Metrics(alert_stats=alert_stats, sse_clients=lambda: 5))
    assert got[("erpwatch_alert_outbox_depth", ())] == 3
    assert got[("erpwatch_status_sse_clients", ())] == 5
    assert outbox_depth({"outbox_depth": 1, "pending": 3}) == 1
    assert outbox_depth({"pending": True}) is None
    assert outbox_depth({}) is None


# --- probe failures by reason ---------------------------------------------------------------


def failed(
    status_code: int | None, error: str | None = None, body: object | None = None, **kw: Any
) -> ProbeResult:
    status, reason = classify(status_code, 0.01, body, 2.0, error)
    return ProbeResult(status, 0.01, status_code, reason, kw.pop("at", time.monotonic()), **kw)


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (failed(None, "timeout after 1.0s", timed_out=True), "timeout"),
        (failed(None, "timeout after 1.0s"), "timeout"),
        (failed(None, "connection refused"), "connection_refused"),
        (failed(None, "connection closed"), "connection_closed"),
        (failed(None, "cannot connect: [Errno -2] Name does not resolve"), "cannot_connect"),
        (failed(None, "protocol error: illegal header line"), "protocol_error"),
        (failed(None), "no_response"),
        (failed(503), "http_503"),
        (failed(404), "http_404"),
        (failed(200, body={"status": "down"}), "body_status"),
        (failed(503, body={"status": "down"}), "http_503"),
        (failed(None, "OSError: [Errno 24] Too many open files"), "error"),
    ],
)
def test_failure_reason_is_a_small_vocabulary(result: ProbeResult, reason: str) -> None:
    assert result.status is ProbeStatus.FAILED
    assert failure_reason(result) == reason
    assert reason in FAILURE_REASONS or reason.startswith("http_")


async def _answer_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # holds the connection until the client gives up


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, str]]:
    """URLs of a loopback server answering 503, one never answering, and a closed port."""
    unavailable = await asyncio.start_server(_answer_503, "127.0.0.1", 0)
    silent = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
    urls = {
        "http_503": f"http://127.0.0.1:{unavailable.sockets[0].getsockname()[1]}/health",
        "timeout": f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}/health",
        "connection_refused": f"http://127.0.0.1:{free_port()}/health",
    }
    yield urls
    for server in (unavailable, silent):
        server.close()
        await server.wait_closed()


async def test_probe_failures_counted_by_reason_once_per_probe(
    servers: dict[str, str],
) -> None:
    metrics = Metrics()
    async with make_client() as client:
        for expected, url in servers.items():
            prober = Prober(
                url, timeout=0.3, degraded_latency=2.0, client=client, clock=RealClock()
            )
            result = await prober.check()
            assert result.status is ProbeStatus.FAILED, result
            assert metrics.observe_probe("backend", result)
            assert not metrics.observe_probe("backend", result)  # offered again: not counted
            labels = (("reason", expected), ("target", "backend"))
            assert samples(metrics)[("erpwatch_probe_failures_total", labels)] == 1
    metrics.observe_probe("backend", probe(0.01))  # a good probe is no failure
    got = samples(metrics)
    failures = {k: v for k, v in got.items() if k[0] == "erpwatch_probe_failures_total"}
    assert sum(failures.values()) == 3
    assert got[("erpwatch_probe_latency_seconds_count", (("target", "backend"),))] == 4


# --- resources of the target's process tree and its start time ----------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A real child, idle once it said "ready" (its descriptors and threads settled)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait(5)


class _NoBus:
    async def publish(self, event: Event) -> Event:
        return event


def running(name: str, pid: int, resources: Mapping[str, Any] | None) -> TargetStatus:
    return dataclasses.replace(
        target(name, TargetState.HEALTHY), pid=pid, uptime=5.0, resources=resources
    )


async def test_resource_gauges_from_the_resource_monitor_sample(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    monitor = ResourceMonitor(
        load_settings(log_path=tmp_path), _NoBus(), targets=lambda: {"backend": [child.pid]}
    )
    await monitor.step()
    sample = monitor.latest_target("backend")
    assert sample is not None  # the supervisor hands this over as TargetStatus.resources
    got = samples(Metrics(statuses=lambda: [running("backend", child.pid, sample)]))
    backend = (("target", "backend"),)
    assert got[("erpwatch_target_rss_bytes", backend)] == sample["rss_bytes"] > 0
    assert got[("erpwatch_target_threads", backend)] == psutil.Process(child.pid).num_threads()
    assert got[("erpwatch_target_open_fds", backend)] == psutil.Process(child.pid).num_fds()
    assert got[("erpwatch_target_cpu_percent", backend)] == sample["cpu_percent"]
    assert got[("erpwatch_target_processes", backend)] == 1


def test_resource_gauges_absent_when_not_running_or_the_sample_is_stale() -> None:
    sample = {"pids": [100], "processes": 1, "rss_mb": 2.0, "threads": None, "open_files": 4}
    stopped = dataclasses.replace(running("old", 100, sample), pid=None, uptime=None)
    restarted = running("new", 200, sample)  # the sample is of the previous child
    current = running("now", 100, sample)
    got = samples(Metrics(statuses=lambda: [stopped, restarted, current]))
    resource_names = {
        "erpwatch_target_rss_bytes",
        "erpwatch_target_cpu_percent",
        "erpwatch_target_threads",
        "erpwatch_target_open_fds",
        "erpwatch_target_processes",
    }
    seen = {(name, dict(labels)["target"]) for name, labels in got if name in resource_names}
    assert {target for _, target in seen} == {"now"}
    assert got[("erpwatch_target_rss_bytes", (("target", "now"),))] == 2.0 * 1024 * 1024
    assert ("erpwatch_target_threads", (("target", "now"),)) not in got  # unreadable: none


def test_start_time_is_the_childs_and_stable(child: subprocess.Popen[bytes]) -> None:
    current = [running("backend", child.pid, None)]
    metrics = Metrics(statuses=lambda: current)
    key = ("erpwatch_target_start_time_seconds", (("target", "backend"),))
    first = samples(metrics)[key]
    assert first == psutil.Process(child.pid).create_time()
    current[:] = [dataclasses.replace(current[0], uptime=9.0)]
    assert samples(metrics)[key] == first  # read once per child, not drifting per scrape

    current[:] = [dataclasses.replace(current[0], pid=None, uptime=None)]
    assert key not in samples(metrics)  # absent while not running


def test_start_time_of_a_vanished_pid_is_estimated_from_the_uptime() -> None:
    no_such_pid = 2**22 + 1  # above Linux's PID_MAX_LIMIT: never a process
    metrics = Metrics(statuses=lambda: [running("backend", no_such_pid, None)])  # uptime 5 s
    before = time.time()
    value = samples(metrics)[("erpwatch_target_start_time_seconds", (("target", "backend"),))]
    assert before - 5.0 <= value <= time.time() - 5.0


# --- alert stats: silences and outbox per receiver -----------------------------------------


def test_silences_and_outbox_per_receiver_from_alert_stats() -> None:
    stats: dict[str, Any] = {
        "pending": 3,
        "dead": 2,
        "silences_active": 2,
        "receivers": {
            "email": {"pending": 1, "dead": 0, "sent": 3},
            "webhook-1": {"pending": 2, "dead": 2, "sent": 0},
            "alertmanager-1": {"pending": 0},  # no dead count: no dead series
            "hook": "not a mapping",
        },
    }
    got = samples(Metrics(alert_stats=lambda: stats))
    assert got[("erpwatch_alert_outbox_depth", ())] == 3  # the total, as before
    assert got[("erpwatch_silences_active", ())] == 2
    by_receiver = {
        (name, dict(labels)["receiver"]): value
        for (name, labels), value in got.items()
        if name in ("erpwatch_outbox_pending", "erpwatch_outbox_dead")
    }
    pending = {r: v for (name, r), v in by_receiver.items() if name.endswith("pending")}
    dead = {r: v for (name, r), v in by_receiver.items() if name.endswith("dead")}
    assert pending == {"email": 1, "webhook-1": 2, "alertmanager-1": 0}
    assert dead == {"email": 0, "webhook-1": 2}


@pytest.mark.parametrize(
    "stats",
    [
        {"pending": 0},
        {"pending": 0, "receivers": None, "silences_active": "2"},
        {"pending": 0, "receivers": ["email"], "silences_active": True},
    ],
)
def test_alert_stats_without_the_new_keys_give_no_series(stats: dict[str, Any]) -> None:
    names = {name for name, _ in samples(Metrics(alert_stats=lambda: stats))}
    counters = {"erpwatch_alerts_sent_total", "erpwatch_alerts_failed_total"}
    assert names - counters == {"erpwatch_alert_outbox_depth"}


# --- no *_created series ---------------------------------------------------------------------


def test_no_created_series_and_no_global_change() -> None:
    stats = {"pending": 1, "silences_active": 0, "receivers": {"email": {"pending": 1}}}
    statuses = [running("backend", 1, None)]
    metrics = Metrics(statuses=lambda: statuses, alert_stats=lambda: stats, sse_clients=lambda: 0)
    metrics.observe_event(Event.of("backend", Kind.CRASHED, "x"))
    metrics.observe_event(Event.of("erpwatch", Kind.ALERT_SENT, "sent"))
    metrics.observe_event(Event.of("erpwatch", Kind.ALERT_FAILED, "failed"))
    metrics.observe_probe("backend", failed(503))
    text = metrics.exposition().decode()
    assert "erpwatch_events_total" in text and "erpwatch_probe_failures_total" in text
    assert "erpwatch_probe_latency_seconds_bucket" in text
    assert [line for line in text.splitlines() if "_created" in line] == []
    assert metrics.registry.get_sample_value("erpwatch_alerts_sent_total") == 1

    other = CollectorRegistry()  # any other registry keeps prometheus_client's defaults
    Counter("other_things", "x", registry=other).inc()
    assert b"other_things_created" in generate_latest(other)


async def test_wired_like_app_a_restart_moves_start_time_and_resources(tmp_path: Path) -> None:
    """Supervisor (real child) + ResourceMonitor + Metrics(supervisor.statuses), as app.py
    builds them: the figures follow the current child across a crash and restart."""

    settings = load_settings(
        command=f"{sys.executable} -c 'import time; time.sleep(60)'",
        log_path=tmp_path / "logs",
        check_interval=0.05,
        restart_backoff=0.0,
        stop_timeout=2.0,
    )
    holder: dict[str, ResourceMonitor] = {}
    supervisor = Supervisor(
        settings.targets_resolved(),
        _NoBus(),
        log_dir=tmp_path / "logs",
        clock=RealClock(),
        resources=lambda name: holder["monitor"].latest_target(name),
    )
    monitor = ResourceMonitor(settings, _NoBus(), targets=supervisor.running_pids)
    holder["monitor"] = monitor
    metrics = Metrics(statuses=supervisor.statuses)
    start_key = ("erpwatch_target_start_time_seconds", (("target", "backend"),))
    rss_key = ("erpwatch_target_rss_bytes", (("target", "backend"),))
    await supervisor.start()
    try:
        process = supervisor.monitors["backend"].process
        first = await await_until(lambda: process.pid if process.running else None)
        await monitor.step()
        got = samples(metrics)
        assert got[start_key] == psutil.Process(first).create_time()
        assert got[rss_key] > 0

        psutil.Process(first).kill()
        second = await await_until(
            lambda: process.pid if process.running and process.pid != first else None,
            what="the restarted child",
        )
        got = samples(metrics)
        assert got[start_key] == psutil.Process(second).create_time()
        assert rss_key not in got  # the latest sample is of the dead child: not shown
        await monitor.step()
        assert samples(metrics)[rss_key] > 0
    finally:
        await supervisor.stop()
    got = samples(metrics)
    assert start_key not in got and rss_key not in got
