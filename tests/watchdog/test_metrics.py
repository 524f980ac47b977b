"""Metrics: own registry, event counters, probe histogram, scrape-time status gauges."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from watchdog.events import Event, Kind
from watchdog.metrics import Metrics, outbox_depth
from watchdog.monitor import TargetStatus
from watchdog.probe import ProbeResult, ProbeStatus
from watchdog.states import TargetState

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
