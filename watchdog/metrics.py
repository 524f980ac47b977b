"""Prometheus metrics of erpwatch, in a registry of their own (never the global one).

Two sources feed them:

* events, through `Metrics.observe_event` (the status server calls it from its bus
  subscriber): events by target/kind/severity, alerts sent and failed;
* the targets' current status, read at scrape time by a custom collector: up, state,
  restarts, uptime, last probe latency, and the alert outbox depth from the alert service's
  ``stats()``.

Probe latencies go into a histogram through `Metrics.observe_probe`; a probe is counted once
however often it is offered (keyed by its ``checked_at``), so the supervisor may call it on
every probe while the status server also offers the last probe it sees in a status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from watchdog.events import Event, Kind
from watchdog.states import TargetState

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

# Keys of the alert service's stats() read as the outbox depth (first present wins).
OUTBOX_DEPTH_KEYS = ("outbox_depth", "outbox_pending", "pending")


class ProbeView(Protocol):
    """What the metrics read of a `watchdog.probe.ProbeResult`."""

    @property
    def latency(self) -> float: ...
    @property
    def checked_at(self) -> float: ...


class StatusView(Protocol):
    """What the metrics read of a `watchdog.monitor.TargetStatus`."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> TargetState: ...
    @property
    def uptime(self) -> float | None: ...
    @property
    def restarts_in_window(self) -> int: ...
    @property
    def restarts_total(self) -> int: ...
    @property
    def last_probe(self) -> ProbeView | None: ...


StatusReader = Callable[[], Sequence[StatusView]]
StatsReader = Callable[[], Mapping[str, Any]]


class Metrics:
    """erpwatch's metrics and their registry; `exposition()` renders the text format."""

    def __init__(
        self,
        statuses: StatusReader | None = None,
        alert_stats: StatsReader | None = None,
        sse_clients: Callable[[], int] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._events = Counter(
            "erpwatch_events",
            "Events recorded, by target, kind and severity.",
            ["target", "kind", "severity"],
            registry=self.registry,
        )
        self._alerts_sent = Counter(
            "erpwatch_alerts_sent", "Alert mails delivered.", registry=self.registry
        )
        self._alerts_failed = Counter(
            "erpwatch_alerts_failed",
            "Alert mails that could not be delivered.",
            registry=self.registry,
        )
        self._probe_latency = Histogram(
            "erpwatch_probe_latency_seconds",
            "Health probe round-trip time.",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._last_probe: dict[str, float] = {}
        self.registry.register(_StatusCollector(statuses, alert_stats, sse_clients))

    def observe_event(self, event: Event) -> None:
        self._events.labels(event.target, event.kind, str(event.severity)).inc()
        if event.kind == Kind.ALERT_SENT:
            self._alerts_sent.inc()
        elif event.kind == Kind.ALERT_FAILED:
            self._alerts_failed.inc()

    def observe_probe(self, target: str, probe: ProbeView) -> bool:
        """Add one probe's latency; returns False when this probe was already counted."""
        if self._last_probe.get(target) == probe.checked_at:
            return False
        self._last_probe[target] = probe.checked_at
        self._probe_latency.labels(target).observe(probe.latency)
        return True

    def observe_statuses(self, statuses: Sequence[StatusView]) -> int:
        """Offer each status's last probe; returns how many were new."""
        return sum(
            self.observe_probe(status.name, status.last_probe)
            for status in statuses
            if status.last_probe is not None
        )

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


class _StatusCollector:
    """Gauges read at scrape time from the targets' status and the alert service."""

    def __init__(
        self,
        statuses: StatusReader | None,
        alert_stats: StatsReader | None,
        sse_clients: Callable[[], int] | None,
    ) -> None:
        self._statuses = statuses
        self._alert_stats = alert_stats
        self._sse_clients = sse_clients

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self._statuses is not None:
            yield from _status_metrics(self._statuses())
        if self._alert_stats is not None:
            depth = outbox_depth(self._alert_stats())
            if depth is not None:
                gauge = GaugeMetricFamily(
                    "erpwatch_alert_outbox_depth", "Alert mails waiting in the outbox."
                )
                gauge.add_metric([], depth)
                yield gauge
        if self._sse_clients is not None:
            clients = GaugeMetricFamily(
                "erpwatch_status_sse_clients", "Open Server-Sent Events streams."
            )
            clients.add_metric([], self._sse_clients())
            yield clients


def outbox_depth(stats: Mapping[str, Any]) -> float | None:
    for key in OUTBOX_DEPTH_KEYS:
        value = stats.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _status_metrics(statuses: Sequence[StatusView]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "erpwatch_target_up", "1 when the target answers (healthy or degraded).", labels=["target"]
    )
    state = GaugeMetricFamily(
        "erpwatch_target_state",
        "1 for the target's current state, 0 for the others.",
        labels=["target", "state"],
    )
    restarts = CounterMetricFamily(
        "erpwatch_target_restarts", "Automatic restarts since erpwatch started.", labels=["target"]
    )
    in_window = GaugeMetricFamily(
        "erpwatch_target_restarts_in_window",
        "Automatic restarts inside the restart window.",
        labels=["target"],
    )
    uptime = GaugeMetricFamily(
        "erpwatch_target_uptime_seconds",
        "Seconds since the target's current process started.",
        labels=["target"],
    )
    latency = GaugeMetricFamily(
        "erpwatch_target_last_probe_latency_seconds",
        "Latency of the target's latest health probe.",
        labels=["target"],
    )
    for status in statuses:
        name = status.name
        current = TargetState(status.state)
        up.add_metric(
            [name], 1.0 if current in (TargetState.HEALTHY, TargetState.DEGRADED) else 0.0
        )
        for candidate in TargetState:
            state.add_metric([name, str(candidate)], 1.0 if candidate is current else 0.0)
        restarts.add_metric([name], status.restarts_total)
        in_window.add_metric([name], status.restarts_in_window)
        if status.uptime is not None:
            uptime.add_metric([name], status.uptime)
        if status.last_probe is not None:
            latency.add_metric([name], status.last_probe.latency)
    yield from (up, state, restarts, in_window, uptime, latency)
