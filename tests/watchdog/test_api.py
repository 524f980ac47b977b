"""The status server over real HTTP on 127.0.0.1 (uvicorn on port 0, httpx as the client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from alerting import silences
from tests.helpers import await_until, run_fresh
from watchdog.api import StatusServer, check_bind
from watchdog.bus import EventBus
from watchdog.config import ConfigError, load_settings
from watchdog.events import Event, Kind, utcnow
from watchdog.monitor import TargetStatus
from watchdog.probe import ProbeResult, ProbeStatus
from watchdog.sse import STOP, EventHub, format_sse
from watchdog.states import TargetState
from watchdog.store import EventStore

T = TypeVar("T")
H = timedelta(hours=1)
M = timedelta(minutes=1)

TOKEN = "s3cret-status-token"
SMTP_PASSWORD = "hunter2-smtp-password"


def status(
    name: str = "backend", state: TargetState = TargetState.HEALTHY, **kw: Any
) -> TargetStatus:
    values: dict[str, Any] = dict(
        name=name,
        state=state,
        pid=4242,
        uptime=12.5,
        restarts_in_window=1,
        restarts_total=3,
        health_url="http://127.0.0.1:9/health",
        last_probe=ProbeResult(ProbeStatus.OK, 0.012, 200, "HTTP 200", time.monotonic()),
        last_event=None,
        probe_age=0.5,
    )
    values.update(kw)
    return TargetStatus(**values)


@dataclass
class FakeSource:
    items: list[TargetStatus] = field(default_factory=lambda: [status()])

    def statuses(self) -> Sequence[TargetStatus]:
        return list(self.items)

    def set_state(self, name: str, state: TargetState) -> None:
        self.items = [replace(s, state=state) if s.name == name else s for s in self.items]


@dataclass
class Env:
    server: StatusServer
    source: FakeSource
    store: EventStore
    bus: EventBus
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


def alert_stats() -> Mapping[str, Any]:
    return {"sent": 2, "failed": 1, "outbox_depth": 4, "smtp_password": SMTP_PASSWORD}


async def make_env(tmp_path: Path, *, idle_timeout: float | None = None, **settings: Any) -> Env:
    values: dict[str, Any] = dict(status_port=0, log_path=tmp_path / "logs", status_cache_ttl=60)
    values.update(settings)
    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store)
    source = FakeSource()
    options: dict[str, Any] = {} if idle_timeout is None else {"idle_timeout": idle_timeout}
    server = StatusServer(
        load_settings(**values),
        source=source,
        store=store,
        bus=bus,
        alert_stats=alert_stats,
        heartbeat=0.2,
        probe_sample_interval=0.05,
        **options,
    )
    await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5)
    return Env(server, source, store, bus, client)


async def close_env(env: Env) -> None:
    await env.client.aclose()
    await env.server.stop()
    await env.bus.close()
    env.store.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make_env(tmp_path, smtp_password=SMTP_PASSWORD)
    yield e
    await close_env(e)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Env]:
    e = await make_env(tmp_path, status_token=TOKEN, smtp_password=SMTP_PASSWORD)
    yield e
    await close_env(e)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll an async check until it returns a value (not None/False), with a deadline."""
    deadline = time.monotonic() + 5
    while True:
        value = await probe()
        if value is not None and value is not False:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# --- SSE reading --------------------------------------------------------------------------


@dataclass
class SseFrame:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comment: bool = False


async def sse_frames(response: httpx.Response) -> AsyncIterator[SseFrame]:
    frame = SseFrame()
    async for line in response.aiter_lines():
        if line == "":
            yield frame
            frame = SseFrame()
        elif line.startswith(":"):
            frame.comment = True
        else:
            key, _, value = line.partition(": ")
            if key == "id":
                frame.id = value
            elif key == "event":
                frame.event = value
            elif key == "data":
                frame.data += value


async def read_events(response: httpx.Response, count: int) -> list[SseFrame]:
    got: list[SseFrame] = []
    async with asyncio.timeout(5):
        async for frame in sse_frames(response):
            if frame.event is not None:
                got.append(frame)
                if len(got) == count:
                    break
    return got


# --- /health ------------------------------------------------------------------------------


async def test_health_ok(env: Env) -> None:
    response = await env.client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_health_503_when_store_closed(env: Env) -> None:
    env.store.close()
    response = await env.client.get("/health")
    assert response.status_code == 503
    assert "store" in response.json()["problem"]


async def test_health_needs_no_token(secured: Env) -> None:
    assert (await secured.client.get("/health")).status_code == 200


# --- /status ------------------------------------------------------------------------------


async def test_status_shape(env: Env) -> None:
    committed = await env.bus.publish(Event.of("backend", Kind.HEALTHY, "answers"))
    env.source.items = [status(last_event=committed)]
    document = (await env.client.get("/status", params={"fresh": "1"})).json()
    assert set(document) >= {"generated_at", "erpwatch", "targets", "host", "store", "alerting"}
    (target,) = document["targets"]
    assert target["name"] == "backend"
    assert target["state"] == "healthy" and target["colour"] == "green"
    assert target["label"] == "Healthy"
    assert target["pid"] == 4242 and target["uptime"] == 12.5
    assert target["restarts_in_window"] == 1 and target["restarts_total"] == 3
    assert target["last_probe"]["latency"] == pytest.approx(0.012)
    assert target["last_probe"]["status_code"] == 200
    assert target["last_probe"]["time"].endswith("Z")
    assert target["last_event"]["id"] == committed.id
    assert set(document["host"]) >= {"cpu_percent", "ram_percent", "disks"}
    assert document["store"]["events"] == 1
    assert document["store"]["size_bytes"] > 0
    assert document["store"]["path"].endswith("events.db")
    assert document["alerting"]["outbox_depth"] == 4


async def test_status_cached_within_ttl_and_fresh_bypasses(env: Env) -> None:
    first = await env.client.get("/status")
    env.source.set_state("backend", TargetState.FAILED)
    second = await env.client.get("/status")
    assert second.content == first.content
    fresh = await env.client.get("/status", params={"fresh": "1"})
    assert fresh.content != first.content
    assert fresh.json()["targets"][0]["colour"] == "red"
    # the fresh body becomes the cached one
    assert (await env.client.get("/status")).content == fresh.content


async def test_status_cache_expires(tmp_path: Path) -> None:
    e = await make_env(tmp_path, status_cache_ttl=0.05)
    try:
        first = (await e.client.get("/status")).json()
        e.source.set_state("backend", TargetState.RESTARTING)

        async def changed() -> bool:
            body = (await e.client.get("/status")).json()
            return bool(body["targets"][0]["state"] == "restarting")

        await eventually(changed, "cache expiry")
        assert first["targets"][0]["state"] == "healthy"
    finally:
        await close_env(e)


async def test_no_secret_in_status_or_page(secured: Env) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/status?fresh=1", "/", "/metrics"):
        body = (await secured.client.get(path, headers=headers)).text
        assert TOKEN not in body, path
        assert SMTP_PASSWORD not in body, path
    assert "smtp_password" not in (await secured.client.get("/status", headers=headers)).text


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_status_shows_why_since_when_what_next_and_how_available(env: Env) -> None:
    now = utcnow()
    env.store.append_many(
        [
            Event("backend", "healthy", "healthy", details={"state": "healthy"}, ts=now - 2 * H),
            Event("backend", "crashed", "exit 1", details={"state": "restarting"}, ts=now - H),
        ]
    )
    with contextlib.closing(sqlite3.connect(env.store.path)) as conn:
        silences.add(conn, silences.Silence("Backend", now + H, "maintenance"), now)
        silences.add(conn, silences.Silence("other", now - H, "over"), now - 2 * H)
    why = {
        "summary": "exit code 1: ConnectionError: no db",
        "kind": "crash",
        "exit_code": 1,
        "signal": None,
        "stderr_line": "ConnectionError: no db",
        "checks": [],
    }
    refused = ProbeResult(ProbeStatus.FAILED, 0.003, None, "connection refused", time.monotonic())
    env.source.items = [
        status(
            state=TargetState.RESTARTING,
            last_probe=refused,
            down_for=60.0,
            cause=why,
            next_retry_in=120.0,
            latencies=((5.0, 12.5, "ok"), (1.0, None, "failed")),
            stopping_pid=77,
        ),
        status(name="other"),
    ]
    document = (await env.client.get("/status", params={"fresh": "1"})).json()
    generated = iso(document["generated_at"])
    backend, other = document["targets"]
    assert backend["down_since"].endswith("Z")
    assert generated - iso(backend["down_since"]) == timedelta(seconds=60)
    assert iso(backend["next_retry_at"]) - generated == timedelta(seconds=120)
    assert backend["cause"] == why and backend["checks"] == []
    assert backend["stopping_pid"] == 77
    assert [(generated - iso(p["at"]), p["ms"], p["ok"]) for p in backend["latencies"]] == [
        (timedelta(seconds=5), 12.5, True),
        (timedelta(seconds=1), None, False),
    ]
    # a refused connection took 3 ms: that is no response time
    probe = backend["last_probe"]
    assert (probe["latency"], probe["latency_ms"], probe["answered"]) == (None, None, False)
    assert set(backend["availability"]) == {"24h", "7d", "30d"}
    assert backend["availability"]["24h"] == pytest.approx(0.5, abs=0.01)
    assert backend["silence"]["reason"] == "maintenance"
    assert iso(backend["silence"]["until"]) == pytest.approx(now + H, abs=timedelta(seconds=1))
    assert backend["silence"]["until"].endswith("Z")
    assert other["silence"] is None and other["down_since"] is None
    assert other["availability"] == {"24h": None, "7d": None, "30d": None}
    assert other["next_retry_at"] is None and other["cause"] is None
    assert other["last_probe"]["answered"] is True and other["last_probe"]["latency_ms"] == 12.0


# --- /api/incidents ----------------------------------------------------------------------------


async def test_incidents_newest_first_with_cause_restarts_and_notifications(env: Env) -> None:
    now = utcnow()

    def at(
        minutes: float, kind: str, state: str | None, target: str = "backend", **extra: Any
    ) -> Event:
        details = {"state": state, **extra} if state else extra
        return Event(target, kind, f"{kind} msg", details=details, ts=now + minutes * M)

    env.store.append_many(
        [
            at(-60, "healthy", "healthy"),
            at(-50, "crashed", "restarting", exit_code=3, cause="exit code 3: FATAL"),
            at(-50, "restarted", "starting"),
            at(-49, "alert-sent", None, receiver="email", purpose="alert"),
            at(-45, "healthy", "healthy"),
            at(-10, "healthy", "healthy", target="other"),
            at(-5, "unhealthy", "unhealthy", target="other"),
        ]
    )
    body = (await env.client.get("/api/incidents")).json()
    assert [(i["target"], i["ended_at"] is None) for i in body["incidents"]] == [
        ("other", True),
        ("backend", False),
    ]
    backend = body["incidents"][1]
    assert backend["duration_s"] == 300.0 and backend["restarts"] == 1
    assert backend["cause"]["summary"] == "exit code 3: FATAL"
    assert backend["cause"]["exit_code"] == 3
    assert [n["purpose"] for n in backend["notifications"]] == ["alert"]
    assert iso(backend["started_at"]) == pytest.approx(now - 50 * M, abs=timedelta(seconds=1))
    only = (await env.client.get("/api/incidents", params={"target": "backend"})).json()
    assert [i["id"] for i in only["incidents"]] == [backend["id"]]
    one = (await env.client.get("/api/incidents", params={"limit": "1"})).json()
    assert [i["target"] for i in one["incidents"]] == ["other"]
    bad = await env.client.get("/api/incidents", params={"limit": "x"})
    assert bad.status_code == 400 and bad.json()["error"]


async def test_incidents_are_cached_and_fresh_reads_the_store(env: Env) -> None:
    now = utcnow()
    env.store.append(Event("backend", "unhealthy", "x", details={"state": "unhealthy"}, ts=now))
    first = (await env.client.get("/api/incidents")).json()["incidents"]
    assert [i["ended_at"] is None for i in first] == [True]
    env.store.append(
        Event("backend", "healthy", "ok", details={"state": "healthy"}, ts=now + 0.1 * M)
    )
    cached = (await env.client.get("/api/incidents")).json()["incidents"]
    assert cached == first  # within STATUS_CACHE_TTL (60 s here): the cached answer
    fresh = (await env.client.get("/api/incidents", params={"fresh": "1"})).json()["incidents"]
    assert [i["ended_at"] is None for i in fresh] == [False]


async def test_incidents_need_the_token(secured: Env) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await secured.client.get("/api/incidents", headers=headers)
    assert response.status_code == 200 and response.json() == {"incidents": []}


# --- token ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/status", "/metrics", "/events", "/api/history", "/api/incidents"]
)
async def test_token_required(secured: Env, path: str) -> None:
    response = await secured.client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_wrong_token_refused(secured: Env) -> None:
    wrong = await secured.client.get("/status", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert (await secured.client.get("/status", params={"token": "nope"})).status_code == 401
    basic = await secured.client.get("/status", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401


async def test_token_accepted_as_header_or_query(secured: Env) -> None:
    ok = await secured.client.get("/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert (await secured.client.get("/status", params={"token": TOKEN})).status_code == 200
    async with secured.client.stream("GET", "/events", params={"token": TOKEN}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")


def test_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ERPWATCH_STATUS_TOKEN"):
        check_bind(load_settings(status_host="0.0.0.0"))
    store = EventStore(tmp_path / "events.db")
    try:
        with pytest.raises(ConfigError, match="not a loopback address"):
            StatusServer(
                load_settings(status_host="0.0.0.0"),
                source=FakeSource(),
                store=store,
                bus=EventBus(store),
            )
    finally:
        store.close()
    check_bind(load_settings(status_host="0.0.0.0", status_token="t"))
    check_bind(load_settings(status_host="localhost"))
    check_bind(load_settings(status_host="::1"))


# --- /metrics ---------------------------------------------------------------------------------


async def test_metrics_parseable_and_fed_by_events(env: Env) -> None:
    await env.bus.publish(Event.of("backend", Kind.CRASHED, "exit 1"))
    await env.bus.publish(Event.of("erpwatch", Kind.ALERT_SENT, "mail sent"))
    await env.bus.publish(Event.of("erpwatch", Kind.ALERT_FAILED, "smtp down"))

    async def families() -> dict[str, Any]:
        response = await env.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {family.name: family for family in text_string_to_metric_families(response.text)}

    async def alerts_counted() -> dict[str, Any] | None:
        parsed = await families()
        return parsed if parsed["erpwatch_alerts_failed"].samples[0].value == 1 else None

    parsed = await eventually(alerts_counted, "alert counters")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parsed.values()
        for s in family.samples
    }
    assert samples[("erpwatch_target_up", (("target", "backend"),))] == 1
    assert samples[("erpwatch_target_state", (("state", "healthy"), ("target", "backend")))] == 1
    assert samples[("erpwatch_target_state", (("state", "failed"), ("target", "backend")))] == 0
    assert samples[("erpwatch_target_restarts_total", (("target", "backend"),))] == 3
    assert samples[("erpwatch_alerts_sent_total", ())] == 1
    assert samples[("erpwatch_alert_outbox_depth", ())] == 4
    key = (
        "erpwatch_events_total",
        (("kind", "crashed"), ("severity", "warning"), ("target", "backend")),
    )
    assert samples[key] == 1
    assert samples[("erpwatch_probe_latency_seconds_count", (("target", "backend"),))] == 1
    assert parsed["erpwatch_probe_latency_seconds"].type == "histogram"


# --- /events (SSE) ----------------------------------------------------------------------------


async def test_sse_receives_published_event(env: Env) -> None:
    async with env.client.stream("GET", "/events") as response:
        assert response.status_code == 200
        await await_until(lambda: env.server.hub.count == 1, timeout=5, what="stream open")
        committed = await env.bus.publish(Event.of("backend", Kind.CRASHED, "exit code 1"))
        (frame,) = await read_events(response, 1)
    assert frame.id == str(committed.id)
    assert frame.event == "crashed"
    assert json.loads(frame.data) == committed.to_dict()


async def test_sse_last_event_id_resumes_without_gap_or_duplicate(env: Env) -> None:
    published = [
        await env.bus.publish(Event.of("backend", Kind.HEALTHY, f"n{n}")) for n in range(5)
    ]
    resume_from = published[1].id
    headers = {"Last-Event-ID": str(resume_from)}
    async with env.client.stream("GET", "/events", headers=headers) as response:
        await await_until(lambda: env.server.hub.count == 1, timeout=5, what="stream open")
        live = await env.bus.publish(Event.of("backend", Kind.DEGRADED, "slow"))
        frames = await read_events(response, 4)
    expected = [e.id for e in published[2:]] + [live.id]
    assert [int(f.id or 0) for f in frames] == expected


async def test_sse_stream_catches_up_after_overflow(env: Env) -> None:
    """A client too slow for its queue re-reads what it missed from the store."""
    async with env.client.stream("GET", "/events") as response:
        await await_until(lambda: env.server.hub.count == 1, timeout=5, what="stream open")
        env.server.hub.maxsize = 3
        published = [
            await env.bus.publish(Event.of("backend", Kind.HEALTHY, f"n{n}")) for n in range(20)
        ]
        frames = await read_events(response, 20)
    assert [int(f.id or 0) for f in frames] == [e.id for e in published]


async def _hang_up_after_first_bytes(port: int) -> bytes:
    """What a closed browser tab does: open /events, read the first bytes, hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(4096)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_sse_streams_and_tasks_released_after_clients_hang_up(env: Env) -> None:
    """Clients coming and going (events flowing) leave no stream in the hub and no task."""
    await await_until(lambda: env.server.hub.count == 0, timeout=5, what="no stream")
    tasks_before = len(asyncio.all_tasks())
    for round_ in range(5):
        heads = await asyncio.gather(
            *(_hang_up_after_first_bytes(env.server.port) for _ in range(4))
        )
        assert all(head.startswith(b"HTTP/1.1 200") for head in heads)
        await env.bus.publish(Event.of("backend", Kind.CRASHED, f"exit code {round_}"))
    await await_until(lambda: env.server.hub.count == 0, timeout=5, what="streams released")
    await await_until(
        lambda: len(asyncio.all_tasks()) <= tasks_before, timeout=5, what="tasks released"
    )


async def test_sse_heartbeat_comments(env: Env) -> None:
    async with env.client.stream("GET", "/events") as response:
        async with asyncio.timeout(5):
            async for frame in sse_frames(response):
                if frame.comment and frame.event is None and frame.id is None:
                    break


async def test_stop_is_prompt_with_open_sse_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    e = await make_env(tmp_path)
    try:
        async with e.client.stream("GET", "/events") as response:
            await await_until(lambda: e.server.hub.count == 1, timeout=5, what="stream open")
            await asyncio.wait_for(e.server.stop(), 5)
            # The stream was ended first: uvicorn never had to be forced out after its grace.
            assert "did not stop within the grace" not in caplog.text
            async with asyncio.timeout(5):
                async for _ in response.aiter_lines():
                    pass  # the server ended the stream
    finally:
        await e.client.aclose()
        await e.bus.close()
        e.store.close()


def test_format_sse_is_one_frame() -> None:
    event = Event.of("backend", Kind.CRASHED, "line one\nline two").with_id(7)
    text = format_sse(event)
    assert text.startswith("id: 7\nevent: crashed\ndata: {")
    assert text.endswith("}\n\n") and text.count("\n") == 4


def test_hub_stop_ends_streams_opened_later() -> None:
    async def scenario() -> None:
        hub = EventHub()
        hub.stop_all()
        stream = hub.open()
        assert hub.count == 0
        assert stream.queue.get_nowait() is STOP

    asyncio.run(scenario())


# --- /api/history --------------------------------------------------------------------------------


async def test_history_filters(env: Env) -> None:
    await env.bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
    await env.bus.publish(Event.of("backend", Kind.CRASHED, "exit 1"))
    await env.bus.publish(Event.of("backend", Kind.RESTART_LIMIT_REACHED, "gave up"))
    await env.bus.publish(Event.of("other", Kind.CRASHED, "exit 2"))

    async def history(**params: Any) -> list[dict[str, Any]]:
        response = await env.client.get("/api/history", params=params)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    everything = await history()
    assert [e["message"] for e in everything] == ["exit 2", "gave up", "exit 1", "ok"]
    assert {e["target"] for e in await history(target="backend")} == {"backend"}
    kinds = await history(kind=["crashed", "restart-limit-reached"], target="backend")
    assert [e["kind"] for e in kinds] == ["restart-limit-reached", "crashed"]
    assert [e["kind"] for e in await history(kind="crashed,healthy", target="backend")] == [
        "crashed",
        "healthy",
    ]
    assert [e["message"] for e in await history(severity="critical")] == ["gave up"]
    assert len(await history(since="1h")) == 4
    assert await history(until="1h") == []
    assert len(await history(limit=2)) == 2
    assert len(await history(limit=0)) == 4
    assert everything[0] == (await env.client.get("/api/history", params={"limit": 1})).json()[0]


@pytest.mark.parametrize(
    "params", [{"since": "yesterday"}, {"limit": "x"}, {"limit": "-1"}, {"severity": "loud"}]
)
async def test_history_bad_filter_is_400(env: Env, params: dict[str, str]) -> None:
    response = await env.client.get("/api/history", params=params)
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"since": "1000000d"}, "time '1000000d' is out of range"),
        ({"until": "99999999999999999999w"}, "is out of range"),
        ({"since": "0500-01-01"}, "is out of range"),
        ({"limit": "1e20"}, "limit 1e20 is too large"),
        ({"limit": str(10**20)}, "is too large"),
        ({"limit": "inf"}, "limit must be a whole number"),
    ],
)
async def test_history_absurd_values_are_400_with_the_reason(
    env: Env, params: dict[str, str], reason: str
) -> None:
    response = await env.client.get("/api/history", params=params)
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]
    assert (await env.client.get("/health")).status_code == 200


async def test_history_large_limit_is_capped(env: Env) -> None:
    await env.bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
    response = await env.client.get("/api/history", params={"limit": "1e6"})
    assert response.status_code == 200 and len(response.json()) == 1


async def test_sse_last_event_id_beyond_sqlite_is_400(env: Env) -> None:
    response = await env.client.get("/events", headers={"Last-Event-ID": str(2**64)})
    assert response.status_code == 400


# --- page ----------------------------------------------------------------------------------------


async def test_page_renders_escaped_snapshot(env: Env) -> None:
    evil = "<script>alert(1)</script>"
    committed = await env.bus.publish(Event.of("web<b>", Kind.CRASHED, evil))
    env.source.items = [
        status(),
        status(name="web<b>", state=TargetState.FAILED, last_event=committed),
    ]
    response = await env.client.get("/")
    assert response.status_code == 200
    html = response.text
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "web&lt;b&gt;" in html
    assert 'class="card red"' in html and "Down: restart limit reached" in html
    assert 'class="card green"' in html and "Healthy" in html
    assert "<details>" in html and 'id="refresh"' in html
    assert "http://" not in html.split("<body>")[0]  # no external resources in the head


async def test_server_leaves_signal_handling_alone(tmp_path: Path) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    e = await make_env(tmp_path)
    try:
        assert (await e.client.get("/health")).status_code == 200
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        await close_env(e)
    assert {sig: signal.getsignal(sig) for sig in before} == before


# --- erpwatch's own health (the assembled Watchdog) -------------------------------------------


async def test_health_names_a_failed_worker_until_it_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchdog.app import Watchdog
    from watchdog.clock import FakeClock

    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(
        command=f"{sys.executable} -c 'import time; time.sleep(120)'",
        status_port=0,
        log_path=tmp_path / "logs",
        db_path=tmp_path / "events.db",
        check_interval=60,
    )
    clock = FakeClock()  # the restart backoff waits until the test moves time
    watchdog = Watchdog(settings, settings.targets_resolved(), clock=clock)
    await watchdog.start()
    try:
        assert watchdog.status_url is not None
        async with httpx.AsyncClient(base_url=watchdog.status_url, timeout=5) as client:
            assert (await client.get("/health")).status_code == 200
            broken = [True]

            async def flaky() -> None:
                if broken[0]:
                    raise RuntimeError("flaky worker broke")
                await asyncio.Event().wait()  # healthy: runs until cancelled

            watchdog.tasks.spawn("flaky-worker", flaky)
            response = await eventually(
                lambda: _health_if(client, 503), what="/health 503 after the fault"
            )
            assert "flaky-worker" in response.json()["problem"]
            faults = await eventually(
                lambda: _faults(watchdog.store), what="a watchdog-fault event in the store"
            )
            (fault,) = faults
            assert fault.target == "erpwatch" and str(fault.severity) == "critical"
            assert fault.details["worker"] == "flaky-worker"
            assert fault.details["error"] == "RuntimeError('flaky worker broke')"
            assert "flaky worker broke" in fault.details["traceback"]
            assert len(fault.details["traceback"].splitlines()) <= 20
            assert "flaky-worker failed" in fault.message
            broken[0] = False
            clock.advance(0.1)  # the first backoff
            await await_until(lambda: watchdog.tasks.running("flaky-worker"), what="restarted")
            response = await client.get("/health")
            assert response.status_code == 200, response.text
            assert watchdog.tasks.faults()["flaky-worker"] == 1
    finally:
        await watchdog.stop()


async def _health_if(client: httpx.AsyncClient, code: int) -> httpx.Response | None:
    response = await client.get("/health")
    return response if response.status_code == code else None


async def _faults(store: EventStore) -> list[Event] | None:
    events = await asyncio.to_thread(store.query, kinds=[str(Kind.WATCHDOG_FAULT)])
    return events or None


async def test_extra_health_callback_joins_the_servers_own(tmp_path: Path) -> None:
    problem: list[str | None] = [None]

    def extra() -> str | None:
        if problem[0] == "raise":
            raise RuntimeError("health function broke")
        return problem[0]

    store = EventStore(tmp_path / "events.db")
    bus = EventBus(store)
    server = StatusServer(
        load_settings(status_port=0, log_path=tmp_path / "logs"),
        source=FakeSource(),
        store=store,
        bus=bus,
        health=extra,
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            assert (await client.get("/health")).status_code == 200
            problem[0] = "failed, restarting: resources"
            response = await client.get("/health")
            assert response.status_code == 503
            assert response.json()["problem"] == "failed, restarting: resources"
            problem[0] = "raise"
            response = await client.get("/health")
            assert response.status_code == 503
            assert "health function broke" in response.json()["problem"]
            problem[0] = None
            assert (await client.get("/health")).status_code == 200
    finally:
        await server.stop()
        await bus.close()
        store.close()


async def test_serve_failing_after_the_targets_started_stops_them_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    from watchdog import app, sdnotify

    def broken_ready(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("ready failed")

    monkeypatch.setattr(sdnotify, "ready", broken_ready)  # fails after the targets started
    settings = load_settings(
        command=f"{sys.executable} -c 'import time; time.sleep(120)'",
        status_enabled=False,
        log_path=tmp_path / "logs",
        db_path=tmp_path / "events.db",
    )
    watchdog = app.Watchdog(settings, settings.targets_resolved())
    with pytest.raises(RuntimeError, match="ready failed"):
        await asyncio.wait_for(app.serve(watchdog, asyncio.Event()), timeout=30)
    pids = [pid for pids in watchdog.supervisor.running_pids().values() for pid in pids]
    assert pids == [] and not [p for p in psutil.Process().children() if p.is_running()]
    store = EventStore(tmp_path / "events.db")
    try:
        kinds = [(e.target, e.kind) for e in store.query(limit=None, newest_first=False)]
    finally:
        store.close()
    assert ("backend", "started") in kinds and ("backend", "stopped") in kinds
    assert kinds[-1] == ("erpwatch", "watchdog-stopped")


# --- the boundary: Host header allow-list, connection limit -----------------------------------


async def test_host_header_allow_list_421_for_other_names(tmp_path: Path) -> None:
    e = await make_env(
        tmp_path,
        status_page_url="https://erp.example.com/watchdog/",
        status_allowed_hosts="watch.internal, 10.1.2.3:8443",
    )
    try:
        for host in [
            "localhost",
            "LOCALHOST:8765",
            "localhost.",
            "127.0.0.1",
            f"127.0.0.1:{e.server.port}",
            "[::1]",
            "[::1]:8765",
            "erp.example.com",
            "erp.example.com:443",
            "watch.internal:1",
            "10.1.2.3",
        ]:
            response = await e.client.get("/health", headers={"Host": host})
            assert response.status_code == 200, host
        for host in [
            "evil.example",
            f"evil.example:{e.server.port}",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "erp.example.com.attacker.net",
            "[::2]:80",
            "::1",
            "127.0.0.1:http",
        ]:
            for path in ("/health", "/status", "/", "/api/history"):
                response = await e.client.get(path, headers={"Host": host})
                assert response.status_code == 421, (host, path)
                assert response.text.startswith("misdirected request")
                assert len(response.content) < 200 and "backend" not in response.text
    finally:
        await close_env(e)


async def test_host_check_comes_before_the_token(secured: Env) -> None:
    response = await secured.client.get("/status", headers={"Host": "evil.example"})
    assert response.status_code == 421
    authorised = {"Host": "evil.example", "Authorization": f"Bearer {TOKEN}"}
    assert (await secured.client.get("/status", headers=authorised)).status_code == 421


async def test_configured_status_host_and_a_wildcard_entry(tmp_path: Path) -> None:
    e = await make_env(tmp_path, status_host="127.0.0.1", status_allowed_hosts="*")
    try:
        response = await e.client.get("/health", headers={"Host": "anything.example"})
        assert response.status_code == 200
    finally:
        await close_env(e)


def _server_side_connections(port: int) -> list[Any]:
    """This process's open sockets accepted on ``port`` (closed ones hold no descriptor)."""
    import psutil

    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


async def test_idle_connection_flood_is_bounded_and_health_still_answers(
    tmp_path: Path,
) -> None:
    e = await make_env(tmp_path, status_max_connections=4)
    flood = [await asyncio.open_connection("127.0.0.1", e.server.port) for _ in range(20)]
    try:
        # Each one past the limit closed the oldest idle one: 16 see the end of the stream.
        await await_until(
            lambda: sum(reader.at_eof() for reader, _ in flood) >= 16,
            what="the oldest idle connections closed",
        )
        assert len(_server_side_connections(e.server.port)) <= 4
        response = await e.client.get("/health")
        assert response.status_code == 200
        assert len(_server_side_connections(e.server.port)) <= 4
        assert e.server.own_problem() is None
    finally:
        for _, writer in flood:
            writer.close()
        await close_env(e)


async def test_a_connection_without_a_request_is_closed_after_the_idle_timeout(
    tmp_path: Path,
) -> None:
    e = await make_env(tmp_path, idle_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", e.server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        assert (await e.client.get("/health")).status_code == 200  # a prompt request is served
    finally:
        await close_env(e)


async def test_a_request_head_that_trickles_in_is_closed_after_the_idle_timeout(
    tmp_path: Path,
) -> None:
    """Slowloris: a header line now and then, never the blank line that ends the head.
    uvicorn's idle timer stops at the first byte; ours gives the head the idle timeout."""
    e = await make_env(tmp_path, idle_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", e.server.port)
        writer.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        async def trickle() -> None:
            for n in range(1000):  # 100 s of it, far past any deadline below
                writer.write(b"X-Slow-%d: 1\r\n" % n)
                await asyncio.sleep(0.1)

        dripping = asyncio.create_task(trickle())
        try:
            closed = await asyncio.wait_for(reader.read(), 20)  # kept open before
        finally:
            dripping.cancel()
            writer.close()
        assert closed == b""
        assert (await e.client.get("/health")).status_code == 200
    finally:
        await close_env(e)


# --- what the status server imports -------------------------------------------------------------


def test_the_run_path_loads_the_cli_modules_only_with_the_routes_using_them(
    tmp_path: Path,
) -> None:
    """`watchdog.status_cmd` (the page's filters) and `watchdog.history` (the query parsers)
    are CLI modules: ``erpwatch run`` loads them with the page / ``/api/history``."""
    code = (
        "import sys\nimport watchdog.app, watchdog.api\n"
        "loaded = {'watchdog.status_cmd', 'watchdog.history'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    run_fresh(code, tmp_path)


def test_the_status_server_loads_no_websocket_protocol(tmp_path: Path) -> None:
    """No route is a WebSocket: uvicorn must not import its WebSocket protocols (nor the
    websockets or wsproto package, where the environment has one) for the status server."""
    code = (
        "import asyncio, sys\nfrom pathlib import Path\n"
        "from tests.watchdog.test_api import close_env, make_env\n"
        "async def main():\n"
        "    env = await make_env(Path('.'))\n"
        "    assert (await env.client.get('/health')).status_code == 200\n"
        "    await close_env(env)\n"
        "asyncio.run(main())\n"
        "loaded = [m for m in sys.modules if m.startswith('uvicorn.protocols.websockets')]\n"
        "assert not loaded, loaded\n"
    )
    run_fresh(code, tmp_path)
