"""Prometheus metrics of erpwatch, in a registry of their own (never the global one).

Three sources feed them:

* events, through `Metrics.observe_event` (the status server calls it from its bus
  subscriber): events by target/kind/severity, alerts sent and failed;
* probes, through `Metrics.observe_probe`: the latency histogram and failed probes by
  reason (`failure_reason`, a small fixed vocabulary, never the free text). A probe is
  counted once however often it is offered (keyed by its ``checked_at``), so the supervisor
  may call it on every probe while the status server also offers the last probe it sees in a
  status;
* the targets' current status, read at scrape time by a custom collector: up, state,
  restarts, uptime, start time, last probe latency, the resource figures of the target's
  process tree (``status.resources``, the resource monitor's latest sample of the current
  child), and from the alert service's ``stats()`` the outbox depth (in total and per
  receiver, key ``"receivers"``) and the active silences (key ``"silences_active"``). A key
  that is missing gives no series.

The exposition has no ``*_created`` series: they are dropped from this registry's output only
(prometheus_client's ``disable_created_metrics()`` would change every registry in the
process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from watchdog.events import Event, Kind
from watchdog.states import TargetState

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

log = logging.getLogger(__name__)

# Keys of the alert service's stats() read as the outbox depth (first present wins).
OUTBOX_DEPTH_KEYS = ("outbox_depth", "outbox_pending", "pending")
SILENCES_KEY = "silences_active"
RECEIVERS_KEY = "receivers"  # {"email": {"pending": 0, "dead": 0, "sent": 3}, ...}

# The reasons a failed probe is counted under (label ``reason``), besides ``http_<code>``.
FAILURE_REASONS = (
    "timeout",
    "connection_refused",
    "connection_closed",
    "cannot_connect",
    "protocol_error",
    "no_response",
    "body_status",
    "error",
)
_REASON_PREFIXES = (
    ("timeout", "timeout"),
    ("connection refused", "connection_refused"),
    ("connection closed", "connection_closed"),
    ("cannot connect", "cannot_connect"),
    ("protocol error", "protocol_error"),
    ("no response", "no_response"),
    ("body status", "body_status"),
)


class ProbeView(Protocol):
    """What the metrics read of a `watchdog.probe.ProbeResult`."""

    @property
    def status(self) -> str: ...
    @property
    def latency(self) -> float: ...
    @property
    def status_code(self) -> int | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def checked_at(self) -> float: ...
    @property
    def timed_out(self) -> bool: ...


class StatusView(Protocol):
    """What the metrics read of a `watchdog.monitor.TargetStatus`."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> TargetState: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def uptime(self) -> float | None: ...
    @property
    def restarts_in_window(self) -> int: ...
    @property
    def restarts_total(self) -> int: ...
    @property
    def last_probe(self) -> ProbeView | None: ...
    @property
    def resources(self) -> Mapping[str, Any] | None: ...


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
        # The counters and the histogram live in an inner registry; the one exposed shows
        # it without the *_created series.
        inner = CollectorRegistry()
        self._events = Counter(
            "erpwatch_events",
            "Events recorded, by target, kind and severity.",
            ["target", "kind", "severity"],
            registry=inner,
        )
        self._alerts_sent = Counter(
            "erpwatch_alerts_sent",
            "Alert notifications delivered (every receiver).",
            registry=inner,
        )
        self._alerts_failed = Counter(
            "erpwatch_alerts_failed",
            "Alert notifications that could not be delivered (dead letters, every receiver).",
            registry=inner,
        )
        self._probe_latency = Histogram(
            "erpwatch_probe_latency_seconds",
            "Health probe round-trip time.",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=inner,
        )
        self._probe_failures = Counter(
            "erpwatch_probe_failures",
            "Failed health probes, by target and reason (timeout, connection_refused, "
            "connection_closed, cannot_connect, protocol_error, no_response, body_status, "
            "http_<code>, error).",
            ["target", "reason"],
            registry=inner,
        )
        self._last_probe: dict[str, float] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_WithoutCreated(inner))
        self.registry.register(_StatusCollector(statuses, alert_stats, sse_clients))

    def observe_event(self, event: Event) -> None:
        self._events.labels(event.target, event.kind, str(event.severity)).inc()
        if event.kind == Kind.ALERT_SENT:
            self._alerts_sent.inc()
        elif event.kind == Kind.ALERT_FAILED:
            self._alerts_failed.inc()

    def observe_probe(self, target: str, probe: ProbeView) -> bool:
        """Add one probe's latency (and its failure); False when it was already counted."""
        if self._last_probe.get(target) == probe.checked_at:
            return False
        self._last_probe[target] = probe.checked_at
        self._probe_latency.labels(target).observe(probe.latency)
        if str(probe.status) == "failed":
            self._probe_failures.labels(target, failure_reason(probe)).inc()
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


def failure_reason(probe: ProbeView) -> str:
    """The ``reason`` label of a failed probe: one of `FAILURE_REASONS` or ``http_<code>``,
    never the probe's free text (which holds exception messages: unbounded label values)."""
    if probe.timed_out:
        return "timeout"
    text = probe.reason.strip().lower()
    if probe.status_code is not None and not text.startswith("body status"):
        code = probe.status_code
        return f"http_{code}" if 100 <= code <= 599 else "http_other"
    for prefix, reason in _REASON_PREFIXES:
        if text.startswith(prefix):
            return reason
    return "error"


class _WithoutCreated(Collector):
    """Another registry's metrics without their ``<name>_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            created = f"{metric.name}_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


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
        self._start_times = _StartTimes()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self._statuses is not None:
            statuses = self._statuses()
            yield from _status_metrics(statuses)
            yield from _resource_metrics(statuses)
            yield self._start_times.metric(statuses)
        if self._alert_stats is not None:
            yield from _alert_metrics(self._alert_stats())
        if self._sse_clients is not None:
            clients = GaugeMetricFamily(
                "erpwatch_status_sse_clients", "Open Server-Sent Events streams."
            )
            clients.add_metric([], self._sse_clients())
            yield clients


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def outbox_depth(stats: Mapping[str, Any]) -> float | None:
    for key in OUTBOX_DEPTH_KEYS:
        value = _number(stats.get(key))
        if value is not None:
            return value
    return None


def _alert_metrics(stats: Mapping[str, Any]) -> Iterator[Metric]:
    depth = outbox_depth(stats)
    if depth is not None:
        gauge = GaugeMetricFamily(
            "erpwatch_alert_outbox_depth", "Alert notifications waiting in the outbox."
        )
        gauge.add_metric([], depth)
        yield gauge
    silences = _number(stats.get(SILENCES_KEY))
    if silences is not None:
        active = GaugeMetricFamily("erpwatch_silences_active", "Silences in force now.")
        active.add_metric([], silences)
        yield active
    receivers = stats.get(RECEIVERS_KEY)
    if not isinstance(receivers, Mapping):
        return
    pending = GaugeMetricFamily(
        "erpwatch_outbox_pending",
        "Notifications waiting in a receiver's outbox (not yet delivered, still retried).",
        labels=["receiver"],
    )
    dead = GaugeMetricFamily(
        "erpwatch_outbox_dead",
        "Notifications a receiver gave up on (dead letters).",
        labels=["receiver"],
    )
    for name, counts in receivers.items():
        if not isinstance(counts, Mapping):
            continue
        for family, key in ((pending, "pending"), (dead, "dead")):
            value = _number(counts.get(key))
            if value is not None:
                family.add_metric([str(name)], value)
    yield from (pending, dead)


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


# (metric name, help, key of the resource sample)
_RESOURCE_GAUGES = (
    (
        "erpwatch_target_cpu_percent",
        "CPU use of the target's process tree (percent of one core, summed), over the last "
        "resource sampling interval.",
        "cpu_percent",
    ),
    (
        "erpwatch_target_rss_bytes",
        "Resident memory of the target's process tree, summed.",
        "rss_bytes",
    ),
    ("erpwatch_target_threads", "Threads of the target's process tree.", "threads"),
    (
        "erpwatch_target_open_fds",
        "Open file descriptors of the target's process tree.",
        "open_files",
    ),
    ("erpwatch_target_processes", "Processes in the target's tree.", "processes"),
)


def _current_sample(status: StatusView) -> Mapping[str, Any] | None:
    """The resource sample of the target's current child: none when it is not running, or
    when the latest sample is of an earlier child (taken before a restart)."""
    sample = status.resources
    if sample is None or status.pid is None:
        return None
    pids = sample.get("pids")
    if isinstance(pids, Sequence) and status.pid not in pids:
        return None
    return sample


def _resource_metrics(statuses: Sequence[StatusView]) -> Iterator[Metric]:
    families = [
        (GaugeMetricFamily(name, text, labels=["target"]), key)
        for name, text, key in _RESOURCE_GAUGES
    ]
    for status in statuses:
        sample = _current_sample(status)
        if sample is None:
            continue
        for family, key in families:
            value = _number(sample.get(key))
            if value is None and key == "rss_bytes":  # a sample from before rss_bytes
                rss_mb = _number(sample.get("rss_mb"))
                value = None if rss_mb is None else rss_mb * 1024 * 1024
            if value is not None:
                family.add_metric([status.name], value)
    yield from (family for family, _key in families)


@dataclass
class _Started:
    pid: int
    at: float  # unix seconds
    uptime: float
    exact: bool = True  # False: estimated from the uptime, looked up again next time


class _StartTimes:
    """Unix start time of each target's current child, stable between scrapes: the
    kernel's record of the process (psutil ``create_time``), looked up once per child.
    When it cannot be read (the process just went, EMFILE), ``now - uptime`` stands in
    for one scrape."""

    def __init__(self) -> None:
        self._known: dict[str, _Started] = {}

    def metric(self, statuses: Sequence[StatusView]) -> Metric:
        family = GaugeMetricFamily(
            "erpwatch_target_start_time_seconds",
            "Start time of the target's current process since the unix epoch, in seconds.",
            labels=["target"],
        )
        known: dict[str, _Started] = {}
        for status in statuses:
            if status.pid is None or status.uptime is None:
                continue
            started = self._lookup(status.name, status.pid, status.uptime)
            if started is not None:
                known[status.name] = started
                family.add_metric([status.name], started.at)
        self._known = known
        return family

    def _lookup(self, name: str, pid: int, uptime: float) -> _Started | None:
        previous = self._known.get(name)
        # The same pid with an uptime that went back is a new child that reused the pid.
        if (
            previous is not None
            and previous.exact
            and previous.pid == pid
            and uptime >= previous.uptime
        ):
            previous.uptime = uptime
            return previous
        try:
            at = float(psutil.Process(pid).create_time())
        except (psutil.Error, OSError) as exc:
            log.debug("start time of %s (pid %d) unreadable: %r", name, pid, exc)
            return _Started(pid, time.time() - uptime, uptime, exact=False)
        return _Started(pid, at, uptime)
