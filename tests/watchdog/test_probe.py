"""Probe classification (pure) and Prober against live servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import resource
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from erpwatch_healthkit import HealthKit
from tests.helpers import await_until, free_port
from watchdog.clock import RealClock
from watchdog.demo.backend import CRASH_EXIT_CODE, CRASH_LINE
from watchdog.probe import (
    MAX_BODY,
    MAX_CHECK_TEXT,
    MAX_CHECKS,
    CheckResult,
    Prober,
    ProbeResult,
    ProbeStatus,
    classify,
    make_client,
    parse_checks,
)
from watchdog.probe_transport import ProbeClient
from watchdog.process import ManagedProcess

OK, DEGRADED, FAILED = ProbeStatus.OK, ProbeStatus.DEGRADED, ProbeStatus.FAILED


# -- classify: one edge per case ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_code", "latency", "body", "error", "expected"),
    [
        (200, 0.01, {"status": "ok"}, None, (OK, "HTTP 200")),
        (200, 0.01, None, None, (OK, "HTTP 200")),  # non-JSON body
        (204, 0.01, None, None, (OK, "HTTP 204")),
        (301, 0.01, None, None, (OK, "HTTP 301")),  # kubelet: 2xx-3xx answer
        (200, 0.01, ["not", "a", "dict"], None, (OK, "HTTP 200")),
        (200, 0.01, {"status": 1}, None, (OK, "HTTP 200")),
        (200, 0.01, {"status": "degraded"}, None, (DEGRADED, "body status: degraded")),
        (200, 0.01, {"status": " WARN "}, None, (DEGRADED, "body status: warn")),
        (200, 0.01, {"status": "down"}, None, (FAILED, "body status: down")),
        (200, 0.01, {"status": "error"}, None, (FAILED, "body status: error")),
        (200, 0.01, {"status": "unhealthy"}, None, (FAILED, "body status: unhealthy")),
        (200, 2.0, None, None, (OK, "HTTP 200")),  # exactly at the limit is not slow
        (200, 2.314, None, None, (DEGRADED, "slow: 2.31s > 2.0s")),
        (200, 3.0, {"status": "degraded"}, None, (DEGRADED, "body status: degraded")),
        (200, 3.0, {"status": "down"}, None, (FAILED, "body status: down")),
        (503, 0.01, {"status": "ok"}, None, (FAILED, "HTTP 503")),
        (404, 0.01, None, None, (FAILED, "HTTP 404")),
        (199, 0.01, None, None, (FAILED, "HTTP 199")),
        (None, 1.0, None, "timeout after 1.0s", (FAILED, "timeout after 1.0s")),
        (200, 0.01, {"status": "ok"}, "boom", (FAILED, "boom")),  # an error always wins
        (None, 0.01, None, None, (FAILED, "no response")),
    ],
)
def test_classify(
    status_code: int | None,
    latency: float,
    body: object,
    error: str | None,
    expected: tuple[ProbeStatus, str],
) -> None:
    assert classify(status_code, latency, body, 2.0, error) == expected


# -- parse_checks: the health body's check results, bounded -----------------------------------


def test_checks_of_the_health_kit_body() -> None:
    body = {
        "status": "degraded",
        "checks": {
            "database": {
                "status": "failed",
                "error": "ConnectionError: could not connect to postgres",
                "latency_ms": 2.5,
            },
            "cache": {"status": "ok", "latency_ms": 0.4, "detail": {"hits": 3}},
        },
    }
    assert parse_checks(body) == (
        CheckResult("database", "failed", "ConnectionError: could not connect to postgres", 2.5),
        CheckResult("cache", "ok", None, 0.4),
    )
    assert [c.ok for c in parse_checks(body)] == [False, True]


def test_checks_of_the_health_check_draft_and_of_odd_bodies() -> None:
    draft = {
        "status": "fail",
        "checks": {
            "postgres:responseTime": [
                {"status": "pass", "observedValue": 3},
                {"status": "fail", "output": "timeout\nafter 2s"},
            ],
            "disk": "WARN",
        },
    }
    assert parse_checks(draft) == (
        CheckResult("postgres:responseTime", "fail", "timeout after 2s"),
        CheckResult("disk", "warn"),
    )
    listed = {"checks": [{"name": "db", "status": "ok", "latency_ms": True}, "junk"]}
    assert parse_checks(listed) == (CheckResult("db", "ok"),)  # a bool is no latency
    assert parse_checks({"checks": {"db": {"latency_ms": float("nan")}}}) == (
        CheckResult("db", "unknown"),
    )
    for body in (None, [], {"status": "ok"}, {"checks": 3}):
        assert parse_checks(body) == ()


def test_checks_are_bounded_and_the_failing_ones_kept() -> None:
    entries = {f"ok{i:02d}": {"status": "ok"} for i in range(30)}
    entries["zz-broken"] = {"status": "failed", "error": "E" * 5000}
    checks = parse_checks({"checks": {"a" * 500: {"status": "ok"}, **entries}})
    assert len(checks) == MAX_CHECKS
    assert checks[-1].name == "zz-broken"  # kept although it came last, order preserved
    assert checks[-1].error is not None and len(checks[-1].error) == MAX_CHECK_TEXT
    assert checks[-1].error.endswith("…")
    assert len(checks[0].name) == MAX_CHECK_TEXT


def test_result_without_an_answer_is_no_latency() -> None:
    refused = ProbeResult(FAILED, 0.003, None, "connection refused", 10.0)
    assert not refused.answered
    assert ProbeResult(FAILED, 0.2, 503, "HTTP 503", 10.0).answered
    assert refused.to_dict()["checks"] == []


# -- tiny servers on loopback that answer exactly as told --------------------------------------


class LoopbackServer:
    """An asyncio TCP server on 127.0.0.1 that counts connections; subclasses answer."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()
            self._handlers.discard(task)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class HealthServer(LoopbackServer):
    """HTTP/1.1 keep-alive server: status, body, delay or hang, as set.

    ``drop_after=N``: answer N requests on a connection, then close it on receiving the next
    one without answering (the keep-alive race; 0 = never answer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.body = b'{"status": "ok"}'
        self.content_type = "application/json"
        self.extra_headers = ""
        self.delay = 0.0
        self.hang = False
        self.drop_after: int | None = None
        self.requests = 0
        self.last_head = b""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while (head := await reader.readuntil(b"\r\n\r\n")).startswith(b"GET"):
            self.requests += 1
            self.last_head = head
            if self.drop_after is not None and answered >= self.drop_after:
                return  # closes the connection without a response
            if self.hang:
                await asyncio.Event().wait()  # never answers; cancelled at teardown
            if self.delay:
                await asyncio.sleep(self.delay)  # the server's latency, not a test wait
            writer.write(
                f"HTTP/1.1 {self.status} X\r\nContent-Type: {self.content_type}\r\n"
                f"{self.extra_headers}Content-Length: {len(self.body)}\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
            answered += 1


BIG = 100 * 2**20


class BodyServer(LoopbackServer):
    """Answers 200 with a JSON-looking body that reads FAILED if parsed, sent as ``mode``:

    - "length": Content-Length 100 MiB, written as fast as the client takes it;
    - "chunked": chunked, endless;
    - "trickle": Content-Length 10 000, one byte every 20 ms.

    Records the bytes written and the error that ended the writing (the client went away).
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.written = 0
        self.ended: BaseException | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        framing = "Transfer-Encoding: chunked" if self.mode == "chunked" else "Content-Length: "
        size = BIG if self.mode == "length" else 10_000
        framing += "" if self.mode == "chunked" else str(size)
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()
        )
        first = b'{"status": "down", "pad": "'
        try:
            if self.mode == "trickle":
                await self._send(writer, first[:1])
                while True:
                    await asyncio.sleep(0.02)  # the server's pace, not a test wait
                    await self._send(writer, b" ")
            block = first + b"x" * (64 * 1024 - len(first))
            while self.mode == "chunked" or self.written + len(block) <= size:
                data = block if self.mode == "length" else b"%x\r\n%s\r\n" % (len(block), block)
                await self._send(writer, data)
                block = b"x" * len(block)
        except ConnectionError as exc:
            self.ended = exc

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.written += len(data)


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    async with HealthServer() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[ProbeClient]:
    async with make_client(max_connections=100) as shared:
        yield shared


def prober(
    url: str,
    client: ProbeClient,
    *,
    timeout: float = 10.0,
    degraded_latency: float = 10.0,
) -> Prober:
    """Generous limits by default: a loaded machine must not turn an answer into "slow"."""
    return Prober(
        url, timeout=timeout, degraded_latency=degraded_latency, client=client, clock=RealClock()
    )


class StepClock:
    """Each `now()` is ``step`` seconds after the previous one: a request takes ``step``."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.current = 100.0

    def now(self) -> float:
        self.current += self.step
        return self.current

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("a probe never sleeps")


def test_sent_defaults_to_checked_at_minus_latency() -> None:
    positional = ProbeResult(OK, 0.25, 200, "HTTP 200", 10.0, False)
    assert (positional.sent_at, positional.sent) == (None, 9.75)
    assert ProbeResult(OK, 0.25, 200, "HTTP 200", 10.0, sent_at=9.5).sent == 9.5


# -- Prober against the tiny servers -----------------------------------------------------------


async def test_ok(server: HealthServer, client: ProbeClient) -> None:
    result = await prober(server.url, client).check()
    assert (result.status, result.status_code, result.reason) == (OK, 200, "HTTP 200")
    assert result.sent_at is not None and result.sent_at < result.checked_at
    assert result.latency == result.checked_at - result.sent_at
    assert b"accept-encoding: identity" in server.last_head.lower()


async def test_a_check_made_impossible_by_our_own_fd_limit_is_local(server: HealthServer) -> None:
    """EMFILE is erpwatch's trouble, not the target's: the result says so (``local``), and
    the core then gives no verdict (it restarted a healthy backend before)."""
    async with make_client() as fresh:
        check = prober(server.url, fresh)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)  # the number the next descriptor would get
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new fd at all
        try:
            result = await check.check()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert result.status is FAILED and result.local, result
        assert "Too many open files" in result.reason
        after = await check.check()
    assert after.status is OK and not after.local


async def test_a_lone_surrogate_in_the_body_comes_out_encodable(
    server: HealthServer, client: ProbeClient
) -> None:
    """JSON may spell "\\ud800" (json.loads decodes it, UTF-8 cannot encode it): escaped,
    so the page, the API and the store can take the check (the page answered 500)."""
    server.body = (
        b'{"status": "down", "checks": {"db": {"status": "failed", "error": "reset \\ud800"}}}'
    )
    result = await prober(server.url, client).check()
    (check,) = result.checks
    assert check.error == "reset \\ud800"  # visible, as an escape
    json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")  # raised before


async def test_non_json_200_is_ok(server: HealthServer, client: ProbeClient) -> None:
    server.body, server.content_type = b"<html>up</html>", "text/html"
    result = await prober(server.url, client).check()
    assert (result.status, result.reason) == (OK, "HTTP 200")


async def test_http_503_fails(server: HealthServer, client: ProbeClient) -> None:
    server.status = 503
    result = await prober(server.url, client).check()
    assert (result.status, result.status_code, result.reason) == (FAILED, 503, "HTTP 503")


async def test_degraded_body(server: HealthServer, client: ProbeClient) -> None:
    server.body = b'{"status": "degraded", "db": "slow"}'
    result = await prober(server.url, client).check()
    assert (result.status, result.reason) == (DEGRADED, "body status: degraded")


async def test_checks_of_the_body_are_kept_also_with_a_failing_status_code(
    server: HealthServer, client: ProbeClient
) -> None:
    server.status = 503
    server.body = json.dumps(
        {"status": "down", "checks": {"db": {"status": "failed", "error": "refused"}}}
    ).encode()
    result = await prober(server.url, client).check()
    assert (result.status, result.reason) == (FAILED, "HTTP 503")
    assert result.checks == (CheckResult("db", "failed", "refused"),)
    assert result.to_dict()["checks"] == [
        {"name": "db", "status": "failed", "error": "refused", "latency_ms": None}
    ]


async def test_body_at_the_cap_is_parsed_one_byte_more_is_not(
    server: HealthServer, client: ProbeClient
) -> None:
    document = b'{"status": "degraded", "pad": "'
    server.body = document + b"x" * (MAX_BODY - len(document) - 2) + b'"}'
    assert len(server.body) == MAX_BODY
    assert (await prober(server.url, client).check()).status is DEGRADED
    server.body = server.body[:-2] + b'x"}'
    result = await prober(server.url, client).check()
    assert (result.status, result.reason) == (OK, "HTTP 200")  # status code alone


async def test_encoded_body_is_not_parsed(server: HealthServer, client: ProbeClient) -> None:
    server.body, server.extra_headers = (
        gzip.compress(b'{"status": "down"}'),
        "Content-Encoding: gzip\r\n",
    )
    result = await prober(server.url, client).check()
    assert (result.status, result.reason) == (OK, "HTTP 200")


@pytest.mark.parametrize("mode", ["length", "chunked"])
async def test_huge_body_is_read_up_to_the_cap_only(client: ProbeClient, mode: str) -> None:
    async with BodyServer(mode) as big:
        result = await prober(big.url, client).check()
        assert (result.status, result.status_code, result.reason) == (OK, 200, "HTTP 200")
        assert not result.timed_out
        await await_until(lambda: big.ended is not None, what="the server's writes to fail")
        assert big.written < BIG // 4  # what loopback's socket buffers held, not the body


async def test_trickling_body_times_out(client: ProbeClient) -> None:
    async with BodyServer("trickle") as slow:
        result = await prober(slow.url, client, timeout=0.3).check()
        assert (result.status, result.status_code, result.reason, result.timed_out) == (
            FAILED,
            None,
            "timeout after 0.3s",
            True,
        )
        assert slow.written > 0  # the head and some of the body had arrived


async def test_keep_alive_race_is_retried_on_a_new_connection(
    server: HealthServer, client: ProbeClient
) -> None:
    server.drop_after = 1
    check = prober(server.url, client)
    assert (await check.check()).status is OK
    result = await check.check()  # reuses the connection, which the server closes
    assert (result.status, result.status_code, result.reason) == (OK, 200, "HTTP 200")
    assert (server.connections, server.requests) == (2, 3)


async def test_connection_dropped_twice_fails(server: HealthServer, client: ProbeClient) -> None:
    server.drop_after = 0
    result = await prober(server.url, client).check()
    assert (result.status, result.status_code, result.reason, result.timed_out) == (
        FAILED,
        None,
        "connection closed",
        False,
    )
    assert (server.connections, server.requests) == (2, 2)  # exactly one retry


async def test_timeout_fails_is_not_retried_and_the_client_stays_usable(
    server: HealthServer, client: ProbeClient
) -> None:
    server.hang = True
    result = await prober(server.url, client, timeout=0.2).check()
    assert (result.status, result.status_code, result.reason, result.timed_out) == (
        FAILED,
        None,
        "timeout after 0.2s",
        True,
    )
    assert result.latency == result.checked_at - result.sent_at
    await await_until(lambda: server.requests, what="the request to reach the server")
    assert (server.connections, server.requests) == (1, 1)
    server.hang = False
    assert (await prober(server.url, client).check()).status is OK


async def test_slow_answer_is_degraded(server: HealthServer, client: ProbeClient) -> None:
    server.delay = 0.15
    result = await prober(server.url, client, degraded_latency=0.1).check()
    assert result.status is DEGRADED
    assert re.fullmatch(r"slow: \d+\.\d\ds > 0\.1s", result.reason), result.reason


async def test_latency_comes_from_the_injected_clock(
    server: HealthServer, client: ProbeClient
) -> None:
    clock = StepClock(2.5)
    check = Prober(server.url, timeout=5.0, degraded_latency=2.0, client=client, clock=clock)
    result = await check.check()
    sent = clock.current - 2.5
    assert result == ProbeResult(
        DEGRADED, 2.5, 200, "slow: 2.50s > 2.0s", clock.current, False, sent
    )


async def test_connection_refused(client: ProbeClient) -> None:
    result = await prober(f"http://127.0.0.1:{free_port()}/health", client).check()
    assert (result.status, result.status_code, result.reason) == (
        FAILED,
        None,
        "connection refused",
    )


async def test_many_probers_share_one_client(server: HealthServer, client: ProbeClient) -> None:
    probers = [prober(server.url, client, timeout=30.0, degraded_latency=30.0) for _ in range(50)]
    for _ in range(2):  # the second round reuses the kept-alive connections
        results = await asyncio.gather(*(p.check() for p in probers))
        assert [(r.status, r.status_code) for r in results] == [(OK, 200)] * 50
    assert server.requests == 100
    assert server.connections <= 50  # kept alive and reused: the pool never ran dry


# -- Prober against the demo backend and its fault switches -------------------------------------


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[tuple[ManagedProcess, str]]:
    fault_file = tmp_path / "fault"
    argv = [sys.executable, "-m", "watchdog.demo.backend", "--port", "0"]
    process = ManagedProcess(
        "erp", [*argv, "--fault-file", str(fault_file)], log_dir=tmp_path, stop_timeout=2
    )
    await process.start()

    def listening() -> Any:  # a match or None
        text = process.stdout_path.read_text() if process.stdout_path.exists() else ""
        return re.search(r"LISTENING (\d+)", text)

    match = await await_until(listening, timeout=10, what="backend listening")
    yield process, f"http://127.0.0.1:{match.group(1)}"
    await process.stop()


async def test_demo_backend_faults_over_http(
    backend: tuple[ManagedProcess, str], client: ProbeClient
) -> None:
    process, base = backend
    check = prober(f"{base}/health", client)
    slow_check = prober(f"{base}/health", client, degraded_latency=0.2)  # its answer takes 0.25
    hang_check = prober(f"{base}/health", client, timeout=0.5)

    http = httpx.AsyncClient(trust_env=False)  # the probe client only checks

    async def fault(name: str) -> None:
        assert (await http.post(f"{base}/fault/{name}")).status_code == 200

    assert (await check.check()).status is OK
    await fault("degrade")
    assert (await check.check()).reason == "body status: degraded"
    await fault("slow?seconds=0.25")
    assert re.fullmatch(r"slow: \d+\.\d\ds > 0\.2s", (await slow_check.check()).reason)
    await fault("hang")
    assert (await hang_check.check()).reason == "timeout after 0.5s"
    await fault("recover")
    assert (await check.check()).status is OK
    status = (await http.get(f"{base}/status")).json()
    assert status["pid"] == process.pid and status["fault"] == "ok"
    await fault("crash")
    info = await process.wait()
    assert info.returncode == CRASH_EXIT_CODE and CRASH_LINE in info.stderr_tail
    assert (await check.check()).reason == "connection refused"
    await http.aclose()


async def test_demo_backend_fault_file(
    backend: tuple[ManagedProcess, str], client: ProbeClient, tmp_path: Path
) -> None:
    process, base = backend
    check = prober(f"{base}/health", client)
    (tmp_path / "fault").write_text("degrade\n")
    assert (await check.check()).status is DEGRADED
    (tmp_path / "fault").write_text("")
    assert (await check.check()).status is OK
    (tmp_path / "fault").write_text("crash")
    assert (await check.check()).status is FAILED  # dies without answering
    info = await process.wait()
    assert info.returncode == CRASH_EXIT_CODE
    assert info.stderr_tail[-1] == CRASH_LINE


# -- Prober against a real health kit on uvicorn ----------------------------------------------


class QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handling alone
        yield


@contextlib.asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[int]:
    """``app`` on a real uvicorn at 127.0.0.1:<ephemeral port>; yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        await await_until(lambda: server.started or task.done(), what="uvicorn started")
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


class Postgres:
    """A database check that fails like a real driver while ``down``."""

    def __init__(self) -> None:
        self.down = False

    async def __call__(self) -> str:
        if self.down:
            raise ConnectionError("could not connect to postgres at 10.0.0.5:5432")
        return "connected"


async def test_failing_health_kit_check_is_named_with_its_error(
    client: ProbeClient,
) -> None:
    postgres = Postgres()
    kit = HealthKit(checks={"database": postgres}, cache_ttl=0.0)
    async with serve_app(kit.app) as port:
        check = prober(f"http://127.0.0.1:{port}/status", client)
        ok = await check.check()
        assert ok.status is OK and [c.name for c in ok.checks] == ["database"]
        assert ok.checks[0].ok and ok.checks[0].latency_ms is not None
        postgres.down = True
        degraded = await check.check()
    assert (degraded.status, degraded.reason) == (DEGRADED, "body status: degraded")
    (database,) = degraded.checks
    assert (database.name, database.status) == ("database", "failed")
    assert database.error == "ConnectionError: could not connect to postgres at 10.0.0.5:5432"
