"""The status server: JSON status, live page, Server-Sent Events and Prometheus metrics.

`create_app` is the pure Starlette app; `StatusServer` runs it on uvicorn inside erpwatch's
own event loop, fed by one bus subscription:

    server = StatusServer(settings, source=supervisor, store=store, bus=bus,
                          alert_stats=alerts.stats, health=problem)  # problem() -> str | None
    await server.start()      # returns once the socket is bound (server.port)
    ...
    await server.stop()       # ends the SSE streams first, then uvicorn

The server never touches erpwatch's signal handling (uvicorn's `capture_signals` is a no-op
here) and never its logging (``log_config=None``). It refuses a non-loopback address without
``ERPWATCH_STATUS_TOKEN``. With a token every endpoint but ``/health`` wants
``Authorization: Bearer <token>`` or ``?token=`` (EventSource cannot send headers).

Boundary, outermost first:

* connections: at most ``ERPWATCH_STATUS_MAX_CONNECTIONS`` open at once (`_BoundedH11`, a
  uvicorn h11 protocol). One more closes the oldest idle connection (no request in progress:
  an idle flood or a slowloris cannot lock ``/health`` out), else the oldest ``/events``
  stream (busy for as long as it is open, so open pages or streams that are never read
  would lock ``/health`` out; EventSource reconnects and resumes from its Last-Event-ID),
  or, when every one is busy with something else, is answered 503 and closed. A
  connection that sends no request within `IDLE_TIMEOUT_S`, or whose request head is not
  complete `IDLE_TIMEOUT_S` after its first byte, is closed.
  (uvicorn's own ``limit_concurrency`` only answers requests 503: idle sockets would still
  pile up, holding descriptors, and lock every client out.) A connection whose peer reads
  nothing of what is waiting for it (writing paused) for `WRITE_TIMEOUT_S` is dropped: it
  is busy, so it could never be closed as idle, and a few such ones would lock ``/health``
  out for ever.
* Host header (`_HostGuard`, DNS-rebinding defence, ``/health`` included): `allowed_hosts`
  are the loopback names, ``STATUS_HOST``, the host of ``STATUS_PAGE_URL`` and
  ``STATUS_ALLOWED_HOSTS`` (``*`` = any), with or without a port; others get 421.
* the token (`_TokenGuard`), then the routes.

``/events`` resumes from ``Last-Event-ID`` (or ``?last_event_id=``) by re-reading the store,
as it does for a stream that fell behind its live queue. Such a catch-up is bounded: it
replays at most the newest `CATCH_UP_MAX` events (a client further behind gets an SSE
comment saying so, then those events with their ids, then the live ones; the rest is in
``/api/history``), it reads and formats `CATCH_UP_PAGE` events at a time in a worker thread,
and at most `CATCH_UP_CONCURRENCY` such steps run at once (`ReplayGate`). A crowd of
``Last-Event-ID: 0`` clients therefore cannot stall the loop the prober shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from alerting import silences as alert_silences
from watchdog import __version__, heap
from watchdog.availability import AvailabilityCache, load_incidents
from watchdog.bus import EventBus, Subscription
from watchdog.clock import RealClock
from watchdog.control_api import Control, control_routes
from watchdog.errors import ConfigError
from watchdog.events import Kind
from watchdog.favicon import MEDIA_TYPE as FAVICON_TYPE
from watchdog.favicon import (
    RANK,
    WORDS,
    data_url,
    favicon_svg,
    favicon_variants,
    headline,
    page_title,
    symbol,
    tone,
    worst_state,
)
from watchdog.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from watchdog.metrics import Metrics
from watchdog.monitor import TargetStatus
from watchdog.resources import host_snapshot
from watchdog.settings import Settings, is_loopback, status_bind_problem
from watchdog.sse import RESYNC, STOP, EventHub, Frame, ReplayGate, format_sse
from watchdog.states import STATE_LABELS, TargetState
from watchdog.store import EventStore
from watchdog.tasks import TaskSupervisor
from watchdog.templating import LazyEnvironment

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})
STREAM_PATHS = frozenset({"/events"})  # responses that last as long as the client stays
HEARTBEAT_S = 15.0
# A catch-up replays at most the newest CATCH_UP_MAX events: about four live queues
# (STREAM_QUEUE, 256), so a stream that overflowed or a page that reconnects after a short
# outage still gets everything it missed in ordinary operation (erpwatch writes a few events
# a minute, a crash loop a few dozen), while a replay from id 0 of a large history costs no
# more than that (typically ~1 MB of frames; the page itself shows the newest 30).
CATCH_UP_MAX = 1000
CATCH_UP_PAGE = 100  # events read and formatted per worker-thread step
# Catch-up steps at once: each occupies a thread of the default pool (at least 5 threads),
# which /health's and /status's store reads need as well.
CATCH_UP_CONCURRENCY = 2
HISTORY_MAX = 10_000
INCIDENTS_MAX = 500
RECENT_EVENTS = 30
PAGE_INCIDENTS = 10  # incidents the page lists
SHUTDOWN_GRACE_S = 2
IDLE_TIMEOUT_S = 5.0  # a connection without a request is closed after this (uvicorn: 5 s)
WRITE_TIMEOUT_S = 30.0  # a peer that accepts none of our buffered output for this is dropped
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
EVENT_ID_MAX = 2**63 - 1  # SQLite's INTEGER
_SECRET_WORDS = ("password", "secret", "token", "credential")
_STREAM_PRELUDE = f"retry: 2000\n: erpwatch {__version__}\n\n".encode()
_HEARTBEAT = b": heartbeat\n\n"
_CATCH_UP_LIMITED = (
    f": catch-up limited to the newest {CATCH_UP_MAX} events; older ones: /api/history\n\n"
).encode()


class StatusSource(Protocol):
    """Where the current target statuses come from (the supervisor)."""

    def statuses(self) -> Sequence[TargetStatus]: ...


# --- bind policy -------------------------------------------------------------------------


def check_bind(settings: Settings) -> None:
    """Refuse to serve on a non-loopback address without a token."""
    problem = status_bind_problem(settings)
    if problem is not None:
        raise ConfigError(problem)


class StatusBindError(OSError):
    """The status server cannot listen where configured (the port is taken, ...)."""


# --- the Host header allow-list -----------------------------------------------------------


def host_of(value: str) -> str | None:
    """The host of a Host header value (lower-case, no port, no brackets, no trailing dot),
    or None when it is malformed."""
    value = value.strip().lower()
    port = ""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif value.count(":") > 1:
        return None  # a bare IPv6 address is no valid Host header
    else:
        host, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return host.rstrip(".") or None


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The names the status server answers to; ``*`` in it means any."""
    names = set(LOOPBACK_NAMES)
    configured = [settings.status_host, *settings.status_allowed_hosts]
    page_host = urlsplit(settings.status_page_url).hostname if settings.status_page_url else None
    if page_host:
        configured.append(page_host)
    for name in configured:
        if name.strip() == "*":
            names.add("*")
            continue
        host = host_of(name if name.startswith("[") or name.count(":") < 2 else f"[{name}]")
        if host and host not in ("0.0.0.0", "::"):
            names.add(host)
    return frozenset(names)


class _HostGuard:
    """Pure ASGI middleware: a request whose Host header is none of erpwatch's names gets 421
    (a DNS-rebinding page in a browser sends its own name). No Host header (HTTP/1.0) passes:
    no browser sends such a request."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    def allows(self, value: bytes) -> bool:
        if "*" in self.allowed:
            return True
        return host_of(value.decode("latin-1")) in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = next((v for k, v in scope["headers"] if k == b"host"), None)
            if header is not None and not self.allows(header):
                response = PlainTextResponse(
                    "misdirected request: erpwatch does not answer to this Host "
                    "(see ERPWATCH_STATUS_ALLOWED_HOSTS)\n",
                    status_code=421,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- the connection limit -------------------------------------------------------------------

_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 31\r\nconnection: close\r\n\r\nerpwatch: too many connections\n"
)


class _BoundedH11(H11Protocol):
    """uvicorn's h11 protocol with a bounded connection table (see the module docstring).
    `bounded_protocol` makes the subclass carrying the limits."""

    max_connections = 100
    idle_timeout = IDLE_TIMEOUT_S
    write_timeout = WRITE_TIMEOUT_S
    opened_at = 0.0
    _head_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened_at = self.loop.time()
        live = [c for c in self.connections if not c.transport.is_closing()]
        if len(live) > self.max_connections and not self._make_room(live):
            log.warning("status server: %d connections, all busy; refusing more", len(live) - 1)
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        # A connection that never sends a request is closed like an idle keep-alive one.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.idle_timeout, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        # uvicorn cancels its idle timer at the first byte; a request head that trickles in
        # (slowloris) would then hold the connection for ever: it gets `idle_timeout` from
        # its first byte to be complete.
        super().data_received(data)
        if not self.is_idle():
            self._cancel_head_timer()
        elif self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.idle_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # The transport's buffer is over its high-water mark: the peer is not reading.
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        """Abort, not close: close() would wait for the buffer to drain, for ever."""
        self._write_timer = None
        log.warning("status server: a client read nothing for %gs; dropping it", self.write_timeout)
        self.transport.abort()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.is_idle() and not self.transport.is_closing():
            log.debug("status server: a request head took over %gs; closing", self.idle_timeout)
            self.transport.close()

    def is_idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def is_stream(self) -> bool:
        """An ``/events`` response in progress."""
        cycle = self.cycle
        return (
            cycle is not None
            and not cycle.response_complete
            and (cycle.scope.get("path") in STREAM_PATHS)
        )

    def _make_room(self, live: Sequence[object]) -> bool:
        """Close the oldest idle connection, else abort the oldest stream (its buffered
        frames would keep a close() waiting for a peer that may never read)."""
        others = [c for c in live if c is not self and isinstance(c, _BoundedH11)]
        idle = [c for c in others if c.is_idle()]
        if idle:
            oldest = min(idle, key=lambda c: c.opened_at)
            log.warning(
                "status server at its limit of %d connections: closing the oldest idle one",
                self.max_connections,
            )
            oldest.transport.close()
            return True
        streams = [c for c in others if c.is_stream()]
        if not streams:
            return False
        oldest = min(streams, key=lambda c: c.opened_at)
        log.warning(
            "status server at its limit of %d connections, all busy: ending the oldest "
            "/events stream",
            self.max_connections,
        )
        oldest.transport.abort()
        return True


def bounded_protocol(
    max_connections: int,
    idle_timeout: float = IDLE_TIMEOUT_S,
    write_timeout: float = WRITE_TIMEOUT_S,
) -> type[H11Protocol]:
    """The uvicorn ``http`` protocol class: at most ``max_connections`` open connections."""

    class BoundedH11(_BoundedH11):
        pass

    BoundedH11.max_connections = max_connections
    BoundedH11.idle_timeout = idle_timeout
    BoundedH11.write_timeout = write_timeout
    return BoundedH11


# --- the status document --------------------------------------------------------------------


def _wants_fresh(request: Request) -> bool:
    """``?fresh=1`` (any value but empty, 0 or false): skip the cache, as the refresh button
    does."""
    return request.query_params.get("fresh", "") not in ("", "0", "false")


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _redact(value: Any) -> Any:
    """Drop anything under a key that names a secret (defence in depth for alert stats)."""
    if isinstance(value, Mapping):
        return {
            str(key): _redact(item)
            for key, item in value.items()
            if not any(word in str(key).lower() for word in _SECRET_WORDS)
        }
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    return value


def target_entry(
    status: TargetStatus,
    now: datetime,
    *,
    availability: Mapping[str, float | None] | None = None,
    silence: alert_silences.Silence | None = None,
) -> dict[str, Any]:
    """`TargetStatus.to_dict()` plus the fields the page and the CLI read: a text label,
    the last probe's latency in seconds and its wall-clock time, wall-clock forms of the
    monitor's ages (``down_since``, ``next_retry_at``, ``latencies[].at``) and what the
    store knows (``availability``, ``silence``).

    A probe that got no answer (refused, timed out) has no latency: null, not the few
    milliseconds that failing took."""
    state = TargetState(status.state)
    entry = dict(status.to_dict())
    probe = status.last_probe
    if probe is not None:
        probe_entry = dict(entry.get("last_probe") or {})
        probe_entry["latency"] = round(probe.latency, 6) if probe.answered else None
        probe_entry["latency_ms"] = probe_entry.get("latency_ms") if probe.answered else None
        probe_entry["answered"] = probe.answered
        if status.probe_age is not None:
            probe_entry["time"] = _iso(now - timedelta(seconds=status.probe_age))
        entry["last_probe"] = probe_entry
    entry["down_since"] = _ago(now, status.down_for)
    entry["next_retry_at"] = (
        None
        if status.next_retry_in is None
        else _iso(now + timedelta(seconds=status.next_retry_in))
    )
    entry["latencies"] = [
        {"at": _ago(now, age), "ms": ms, "ok": status_ == "ok", "status": status_}
        for age, ms, status_ in status.latencies
    ]
    entry["availability"] = {
        name: (None if value is None else round(value, 6))
        for name, value in (availability or dict.fromkeys(("24h", "7d", "30d"))).items()
    }
    entry["silence"] = (
        None
        if silence is None
        else {"until": _iso(silence.until.astimezone(UTC)), "reason": silence.reason}
    )
    label = STATE_LABELS.get(state, str(state))
    if status.held:
        who, why = status.held.get("actor", "operator"), status.held.get("reason")
        label = f"Stopped by {who}" + (f": {why}" if why else "")
    entry.update(state=str(state), colour=state.colour, label=label)
    if status.resources is not None:
        entry["resources"] = _redact(dict(status.resources))
    return entry


def _ago(now: datetime, seconds: float | None) -> str | None:
    return None if seconds is None else _iso(now - timedelta(seconds=seconds))


def _active_silences(path: Path, now: datetime) -> list[alert_silences.Silence]:
    """Alerting's silences in force (its ``alert_silences`` table; none without it), read
    on a connection of our own, read-only."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return []
    try:
        return alert_silences.load(conn, now)
    except sqlite3.Error:  # no such table: alerting never ran on this database
        return []
    finally:
        conn.close()


def _store_info(store: EventStore) -> dict[str, Any]:
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            size += os.stat(f"{store.path}{suffix}").st_size
    return {"path": str(store.path), "size_bytes": size, "events": store.count()}


@dataclass
class _Cache:
    body: bytes = b""
    at: float = float("-inf")


class _App:
    """The state behind the routes of one app."""

    def __init__(
        self,
        settings: Settings,
        source: StatusSource,
        store: EventStore,
        hub: EventHub,
        metrics: Metrics,
        alert_stats: Callable[[], Mapping[str, Any]] | None,
        health: Callable[[], str | None] | None,
        heartbeat: float,
        host_resources: Callable[[], Mapping[str, Any]] | None = None,
        replays: ReplayGate | None = None,
    ) -> None:
        self.settings = settings
        self.replays = replays if replays is not None else ReplayGate(CATCH_UP_CONCURRENCY)
        self.host_resources = host_resources
        self.source = source
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.alert_stats = alert_stats
        self.health_problem = health
        self.heartbeat = heartbeat
        self.cache = _Cache()
        self.availability = AvailabilityCache(store)
        self.incidents_cache: dict[tuple[str | None, int], tuple[float, bytes]] = {}
        self.started = time.monotonic()

    @functools.cached_property
    def templates(self) -> LazyEnvironment:
        """The page's templates, from its first request on: its filters are the CLI's
        formatting, whose module (`watchdog.status_cmd`) the other routes never need."""
        from watchdog.status_cmd import format_duration, format_latency

        return LazyEnvironment(filters={"duration": format_duration, "latency": format_latency})

    # -- /status ----------------------------------------------------------------------

    async def build_status(self) -> dict[str, Any]:
        now_wall = datetime.now(UTC)
        statuses = self.source.statuses()
        self.metrics.observe_statuses(statuses)
        names = [status.name for status in statuses]
        availability, silences = await asyncio.to_thread(self._from_store, names, now_wall)
        targets = [
            target_entry(
                status,
                now_wall,
                availability=availability.get(status.name),
                silence=alert_silences.active_silence(silences, status.name, now_wall),
            )
            for status in statuses
        ]
        store = await asyncio.to_thread(_store_info, self.store)
        return {
            "generated_at": _iso(now_wall),
            "erpwatch": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime": round(time.monotonic() - self.started, 3),
                "sse_clients": self.hub.count,
                "problem": self.own_problem(),
            },
            "targets": targets,
            "host": dict(self.host_resources()) if self.host_resources else self._host(),
            "store": store,
            "alerting": _redact(dict(self.alert_stats())) if self.alert_stats else None,
        }

    def own_problem(self) -> str | None:
        """What ``/health`` names (a dead worker, a stalled monitor, a failing store), so
        that the page and ``erpwatch status`` cannot show a sound erpwatch meanwhile."""
        if self.health_problem is None:
            return None
        try:
            return self.health_problem()
        except Exception as exc:
            log.warning("status: the health check failed: %r", exc)
            return f"health check failed: {exc!r}"[:500]

    def _from_store(
        self, names: Sequence[str], now: datetime
    ) -> tuple[dict[str, dict[str, float | None]], list[alert_silences.Silence]]:
        """Each target's availability and the silences in force (a worker thread). Neither
        may take /status down: a failure leaves them empty, logged."""
        availability: dict[str, dict[str, float | None]] = {}
        try:
            self.availability.retain(names)
            for name in names:
                availability[name] = self.availability.get(name, now)
        except Exception as exc:
            log.warning("status: cannot compute availability from the event store: %s", exc)
        return availability, _active_silences(self.store.path, now)

    def _host(self) -> dict[str, Any]:
        """A sample of our own, when no resource monitor hands us its latest one."""
        disk_paths = [self.store.path.parent]
        if self.settings.log_path.resolve() != self.store.path.parent.resolve():
            disk_paths.append(self.settings.log_path)
        return host_snapshot(disk_paths)

    async def status_body(self, fresh: bool) -> bytes:
        now = time.monotonic()
        if fresh or now - self.cache.at >= self.settings.status_cache_ttl:
            document = await self.build_status()
            self.cache = _Cache(
                json.dumps(document, default=str, separators=(",", ":")).encode(), time.monotonic()
            )
        return self.cache.body

    async def status(self, request: Request) -> Response:
        body = await self.status_body(_wants_fresh(request))
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    # -- /health -------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        problem = self.health_problem() if self.health_problem is not None else None
        if problem is None:
            try:
                await asyncio.to_thread(self.store.query, limit=1)
            except Exception as exc:
                log.warning("health: the event store cannot be read: %s", exc)
                problem = f"event store: {exc}"
        if problem is not None:
            return JSONResponse({"status": "error", "problem": problem}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    # -- /metrics ----------------------------------------------------------------------

    async def metrics_endpoint(self, request: Request) -> Response:
        self.metrics.observe_statuses(self.source.statuses())
        return Response(self.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    # -- /api/history ------------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        from watchdog.history import UsageError, parse_kinds, parse_limit, parse_time

        params = request.query_params
        try:
            since = parse_time(params["since"]) if params.get("since") else None
            until = parse_time(params["until"]) if params.get("until") else None
            limit = min(parse_limit(params.get("limit") or "50") or HISTORY_MAX, HISTORY_MAX)
            severity = params.get("severity") or None
            if severity is not None and severity not in ("info", "warning", "critical"):
                raise UsageError(f"severity must be info, warning or critical, not {severity!r}")
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        events = await asyncio.to_thread(
            self.store.query,
            target=params.get("target") or None,
            kinds=parse_kinds(params.getlist("kind")),
            severity=severity,
            since=since,
            until=until,
            limit=limit,
        )
        return JSONResponse([event.to_dict() for event in events])

    # -- /api/incidents ----------------------------------------------------------------

    async def incidents(self, request: Request) -> Response:
        """``?target=&limit=`` (default 50, at most `INCIDENTS_MAX`): newest first, cached
        like /status for ``STATUS_CACHE_TTL`` (``?fresh=1`` reads the store now)."""
        from watchdog.history import UsageError, parse_limit

        params = request.query_params
        try:
            limit = min(parse_limit(params.get("limit") or "50") or INCIDENTS_MAX, INCIDENTS_MAX)
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        key = (params.get("target") or None, limit)
        now = time.monotonic()
        cached = self.incidents_cache.get(key)
        ttl = self.settings.status_cache_ttl
        if cached is None or now - cached[0] >= ttl or _wants_fresh(request):
            found = await asyncio.to_thread(load_incidents, self.store, target=key[0], limit=limit)
            body = json.dumps({"incidents": found}, default=str, separators=(",", ":")).encode()
            if len(self.incidents_cache) >= 64:  # bounded: one entry per (target, limit) asked
                self.incidents_cache.clear()
            cached = self.incidents_cache[key] = (time.monotonic(), body)
        return Response(
            cached[1], media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    # -- /events -----------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        header = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        resume: int | None = None
        if header:
            try:
                resume = max(0, int(header))
            except ValueError:
                resume = -1
            if not 0 <= resume <= EVENT_ID_MAX:
                return JSONResponse({"error": "Last-Event-ID must be an event id"}, 400)
        return StreamingResponse(
            self._stream(resume),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, resume: int | None) -> AsyncIterator[bytes]:
        # Open the live queue before reading the store: every event committed after the
        # read is in the queue, and ids already sent are skipped, so no gap, no duplicate.
        stream = self.hub.open()
        try:
            last = stream.start_id if resume is None else resume
            yield _STREAM_PRELUDE
            if resume is not None:
                async for frames, sent in self._catch_up(last):
                    last = sent
                    yield frames
            while True:
                try:
                    async with asyncio.timeout(self.heartbeat):  # no task per wait
                        item = await stream.queue.get()
                except TimeoutError:
                    yield _HEARTBEAT
                    continue
                if item is STOP:
                    return
                if item is RESYNC:
                    async for frames, sent in self._catch_up(last):
                        last = sent
                        yield frames
                    continue
                assert isinstance(item, Frame)
                if item.id <= last:
                    continue
                last = item.id
                yield item.data
        finally:
            self.hub.close(stream)

    async def _catch_up(self, after_id: int) -> AsyncIterator[tuple[bytes, int]]:
        """The events after ``after_id`` as SSE frames, a page at a time, each with the
        newest id it covers (bounded: see `_replay_step`)."""
        end: int | None = None
        while not self.hub.stopped:
            step = await self.replays.run(_replay_step, self.store, after_id, end)
            end, after_id = step.end, step.last_id
            if step.frames:
                yield step.frames, step.last_id
            if step.done:
                return

    # -- / ---------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The same information as ``/status``, ``/api/incidents`` and ``/events`` give the
        page's script, rendered on the server: readable without JavaScript."""
        document = json.loads(await self.status_body(fresh=True))
        alert_kinds = [str(Kind.ALERT_SENT), str(Kind.ALERT_HELD), str(Kind.ALERT_FAILED)]
        other_kinds = [str(kind) for kind in Kind if str(kind) not in alert_kinds]
        recent = await asyncio.to_thread(self.store.query, kinds=other_kinds, limit=RECENT_EVENTS)
        alerts = await asyncio.to_thread(self.store.query, kinds=alert_kinds, limit=RECENT_EVENTS)
        incidents = await asyncio.to_thread(
            load_incidents, self.store, target=None, limit=PAGE_INCIDENTS
        )
        targets = document["targets"]
        worst = worst_state(str(target["state"]) for target in targets)
        template = self.templates.get_template("status.html")
        html = template.render(
            status=document,
            events=[event.to_dict() for event in recent],
            alerts=[event.to_dict() for event in alerts],
            incidents=incidents,
            now=datetime.fromisoformat(document["generated_at"]),
            when=datetime.fromisoformat,
            title=page_title(targets),
            headline=headline(targets),
            worst=str(worst or ""),
            favicon=data_url(favicon_svg(worst)),
            view={
                "kinds": sorted(str(kind) for kind in Kind),
                "alert_kinds": alert_kinds,
                "favicons": favicon_variants(),
                "rank": {str(state): rank for state, rank in RANK.items()},
                "words": {str(state): word for state, word in WORDS.items()},
                "symbols": {str(state): symbol(state) for state in TargetState},
                "tones": {str(state): tone(state) for state in TargetState},
                "incidents": PAGE_INCIDENTS,
            },
            # Operate buttons exist only when HTTP control can work (a token is configured).
            control_enabled=self.settings.status_token is not None,
        )
        heap.trim()  # what rendering (the first time, compiling the template) freed: ~1 ms
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def favicon(self, request: Request) -> Response:
        """The favicon in the colour of the worst state (SVG, also at /favicon.ico)."""
        worst = worst_state(status.state for status in self.source.statuses())
        return Response(
            favicon_svg(worst), media_type=FAVICON_TYPE, headers={"Cache-Control": "no-store"}
        )


@dataclass(frozen=True, slots=True)
class _ReplayStep:
    frames: bytes  # SSE frames, ready to send
    last_id: int  # the newest id they cover: the next step reads after it
    end: int  # the newest id of this catch-up; later ones arrive on the live queue
    done: bool


def _replay_step(store: EventStore, after_id: int, end: int | None) -> _ReplayStep:
    """One step of a catch-up (in a worker thread): read and format up to `CATCH_UP_PAGE`
    events after ``after_id``, none above ``end``.

    The first step (``end`` None) fixes the window: up to the newest id now, from at most
    `CATCH_UP_MAX` ids below it (ids are unique, so at most that many events). A client
    further behind skips the older ones and is told so in a comment (`_CATCH_UP_LIMITED`):
    its Last-Event-ID then continues from the newest events, as after any reconnect."""
    frames: list[bytes] = []
    if end is None:
        newest = store.query(limit=1)
        end = max(after_id, newest[0].id or 0) if newest else after_id
        floor = end - CATCH_UP_MAX
        if after_id < floor:
            older = store.query(after_id=after_id, limit=1, newest_first=False)
            if older and (older[0].id or 0) <= floor:
                frames.append(_CATCH_UP_LIMITED)
            after_id = floor
    page = (
        store.query(after_id=after_id, limit=CATCH_UP_PAGE, newest_first=False)
        if after_id < end
        else []
    )
    last = after_id
    for event in page:
        if event.id is None or event.id > end:
            break
        frames.append(format_sse(event).encode())
        last = event.id
    done = last >= end or len(page) < CATCH_UP_PAGE
    return _ReplayStep(b"".join(frames), last, end, done)


class _TokenGuard:
    """Pure ASGI middleware (streams pass through untouched): bearer token or ``?token=``."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        supplied = request.query_params.get("token", "")
        authorization = request.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials:
            supplied = credentials.strip()
        if not hmac.compare_digest(supplied.encode(), self.token):
            response = JSONResponse(
                {"error": "unauthorized: send Authorization: Bearer <ERPWATCH_STATUS_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="erpwatch"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    source: StatusSource,
    store: EventStore,
    alert_stats: Callable[[], Mapping[str, Any]] | None = None,
    hub: EventHub | None = None,
    metrics: Metrics | None = None,
    health: Callable[[], str | None] | None = None,
    heartbeat: float = HEARTBEAT_S,
    host_resources: Callable[[], Mapping[str, Any]] | None = None,
    control: Control | None = None,
    replays: ReplayGate | None = None,
) -> Starlette:
    """The status app. Live events reach ``/events`` through ``hub.publish`` (the
    `StatusServer` feeds it from the bus); ``health`` may name a problem for ``/health``;
    ``replays`` bounds the catch-ups running at once (`CATCH_UP_CONCURRENCY` by default)."""
    hub = hub if hub is not None else EventHub()
    if metrics is None:
        metrics = Metrics(source.statuses, alert_stats, lambda: hub.count)
    state = _App(
        settings,
        source,
        store,
        hub,
        metrics,
        alert_stats,
        health,
        heartbeat,
        host_resources,
        replays,
    )
    token = settings.status_token.get_secret_value() if settings.status_token else None
    app = Starlette(
        routes=[
            Route("/", state.page),
            Route("/favicon.svg", state.favicon),
            Route("/favicon.ico", state.favicon),
            Route("/health", state.health),
            Route("/status", state.status),
            Route("/metrics", state.metrics_endpoint),
            Route("/events", state.events),
            Route("/api/history", state.history),
            Route("/api/incidents", state.incidents),
            *control_routes(settings, control),
        ]
    )
    app.add_middleware(_TokenGuard, token=token)
    app.add_middleware(_HostGuard, allowed=allowed_hosts(settings))  # outermost
    return app


# --- embedding in erpwatch's loop ---------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers; `ready` is set once the socket listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit = asyncio.Event()
        super().__init__(config)
        self.ready = asyncio.Event()

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        """uvicorn polls ``should_exit`` ten times a second, which doubled erpwatch's idle
        CPU; tick once a second (the Date header's resolution) and wake at once on exit."""
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header when counter % 10 == 0
            exit_wait = asyncio.ensure_future(self._exit.wait())
            await asyncio.wait({exit_wait}, timeout=1.0)
            exit_wait.cancel()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


async def _bind(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StatusBindError(
            exc.errno, f"status server cannot listen on {host}:{port}: {exc.strerror}"
        ) from exc
    return sock


class StatusServer:
    """The status app on uvicorn in the running loop, fed by one bus subscription."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: StatusSource,
        store: EventStore,
        bus: EventBus,
        alert_stats: Callable[[], Mapping[str, Any]] | None = None,
        heartbeat: float = HEARTBEAT_S,
        probe_sample_interval: float | None = 1.0,
        host_resources: Callable[[], Mapping[str, Any]] | None = None,
        health: Callable[[], str | None] | None = None,
        tasks: TaskSupervisor | None = None,
        idle_timeout: float = IDLE_TIMEOUT_S,
        control: Control | None = None,
        write_timeout: float = WRITE_TIMEOUT_S,
    ) -> None:
        check_bind(settings)
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._extra_health = health
        self._settings = settings
        self._source = source
        self._store = store
        self._bus = bus
        self._probe_sample_interval = probe_sample_interval
        self.hub = EventHub()
        self.replays = ReplayGate(CATCH_UP_CONCURRENCY)
        hub = self.hub
        self.metrics = Metrics(source.statuses, alert_stats, lambda: hub.count)
        self.app = create_app(
            settings,
            source=source,
            store=store,
            alert_stats=alert_stats,
            hub=self.hub,
            metrics=self.metrics,
            health=self._health_problem,
            heartbeat=heartbeat,
            host_resources=host_resources,
            control=control,
            replays=self.replays,
        )
        self._server: _EmbeddedServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self.tasks = tasks or TaskSupervisor(clock=RealClock())
        self._shared_tasks = tasks is not None  # then its owner reports their faults
        self._workers: list[str] = []
        self._stopping = False
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the status server has not started")
        return self._port

    @property
    def url(self) -> str:
        host = self._settings.status_host
        if not is_loopback(host) and host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._serve_task is not None:
            raise RuntimeError("the status server is already started")
        self._subscription = self._bus.subscribe("status-api")
        newest = await asyncio.to_thread(self._store.query, limit=1)
        self.hub.last_id = max(self.hub.last_id, newest[0].id or 0) if newest else 0
        subscription, interval = self._subscription, self._probe_sample_interval
        self._workers = ["status-api-events"]
        self.tasks.spawn("status-api-events", lambda: self._pump(subscription))
        if interval is not None:  # None: probes are fed to self.metrics
            self._workers.append("status-api-probes")
            self.tasks.spawn("status-api-probes", lambda: self._sample_probes(interval))
        sock = await _bind(self._settings.status_host, self._settings.status_port)
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,  # erpwatch's logging stays as configured
            log_level="warning",  # no "Started server process" chatter in erpwatch's log
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            server_header=False,
            http=bounded_protocol(
                self._settings.status_max_connections, self._idle_timeout, self._write_timeout
            ),
            # No WebSocket routes: without this uvicorn imports websockets or wsproto
            # when the environment has one (uvicorn[standard] does): 0.6 MiB for nothing.
            ws="none",
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._serve_task = asyncio.create_task(server.serve([sock]), name="status-api-uvicorn")
        ready = asyncio.create_task(server.ready.wait())
        done, _ = await asyncio.wait({ready, self._serve_task}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await self._cancel_tasks()
            self._serve_task.result()  # raises the start-up error if there is one
            raise RuntimeError("the status server stopped during start-up")
        log.info("status server listening on %s", self.url)

    async def stop(self) -> None:
        """End every SSE stream, then stop uvicorn (bounded by a short grace)."""
        self._stopping = True
        self.hub.stop_all()
        if self._subscription is not None:
            self._subscription.close()
        server, task = self._server, self._serve_task
        if server is not None and task is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE_S + 1.0)
            except TimeoutError:
                log.warning("status server did not stop within the grace; forcing it")
                server.force_exit = True
                await task
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        for name in self._workers:
            await self.tasks.cancel(name)
        self._workers = []

    def own_problem(self) -> str | None:
        """This server's own workers: one that faulted, or uvicorn itself having stopped."""
        dead = set() if self._shared_tasks else set(self.tasks.dead())
        problems = [f"{name} failed, restarting" for name in self._workers if name in dead]
        if self._serve_task is not None and self._serve_task.done() and not self._stopping:
            problems.append("status-api-uvicorn has stopped")
        return "; ".join(problems) or None

    def _health_problem(self) -> str | None:
        """This server's own workers, then the ``health`` callback (erpwatch's other tasks)."""
        own = self.own_problem()
        problems = [own] if own else []
        if self._extra_health is not None:
            try:
                extra = self._extra_health()
            except Exception as exc:
                log.warning("health check failed: %r", exc)
                extra = f"health check failed: {exc!r}"[:500]
            if extra:
                problems.append(extra)
        return "; ".join(problems) or None

    async def _pump(self, subscription: Subscription) -> None:
        """Bus → metrics and SSE streams. A drop on the bus makes the streams re-read."""
        dropped = 0
        async for event in subscription:
            self.metrics.observe_event(event)
            if subscription.dropped != dropped:
                dropped = subscription.dropped
                log.warning("status server fell behind the bus (%d events dropped)", dropped)
                self.hub.resync_all()
            self.hub.publish(event)

    async def _sample_probes(self, interval: float) -> None:
        while True:
            self.metrics.observe_statuses(self._source.statuses())
            await asyncio.sleep(interval)
