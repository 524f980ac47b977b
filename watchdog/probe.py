"""One HTTP health check.

CONTRACT:

    class ProbeStatus(StrEnum): OK = "ok"; DEGRADED = "degraded"; FAILED = "failed"

    @dataclass(frozen=True)
    class ProbeResult:
        status: ProbeStatus
        latency: float              # seconds, from sending to the result being known
        status_code: int | None
        reason: str                 # human text: "HTTP 503", "timeout after 1.0s",
                                    # "connection refused", "slow: 2.31s > 2.0s",
                                    # "body status: degraded", "connection closed"
        checked_at: float           # monotonic: when the result became known
        timed_out: bool = False     # no answer within the deadline (a hang, not a refusal)
        sent_at: float | None = None  # monotonic: when the request was sent
        checks: tuple[CheckResult, ...] = ()  # the body's check results (see parse_checks)
        local: bool = False         # not made for want of our own fds/memory (EMFILE, ...)
        sent: float                 # property: sent_at, or checked_at - latency if unset
        answered: bool              # property: a response came back (status_code set)

    def classify(status_code: int | None, latency: float, body: object | None,
                 degraded_latency: float, error: str | None = None) -> tuple[ProbeStatus, str]
        # pure: error → FAILED; 5xx/4xx → FAILED; JSON body {"status": "degraded"} or latency
        # > degraded_latency → DEGRADED; JSON {"status": "down"|"error"|"unhealthy"} → FAILED.

    class Prober:
        def __init__(self, url: str, *, timeout: float, degraded_latency: float,
                     client: ProbeSender, clock: Clock) -> None
        async def check(self) -> ProbeResult   # never raises for network problems; sets
                                               # sent_at (checked_at - latency == sent_at)

ADDITIONS:

    ProbeResult.to_dict() -> dict[str, Any]     # JSON-safe
    make_client(max_connections: int | None = None) -> ProbeClient
        # a probe client: keep-alive, no redirects, no proxy from the environment, no cookies.
    describe_error(exc: BaseException, timeout: float) -> str
    parse_body(content: bytes, content_type: str) -> object | None   # JSON document or None
    MAX_BODY = 64 KiB                           # the most of a body a check reads
    CheckResult(name, status, error=None, latency_ms=None); .ok; .to_dict()
    parse_checks(body: object) -> tuple[CheckResult, ...]
        # the health body's "checks" (the health kit's {"db": {"status", "latency_ms",
        # "error"}}, also the health-check draft's lists and "output"): at most MAX_CHECKS
        # (failing ones kept first), names, statuses and errors cut to MAX_CHECK_TEXT chars.

One client per target, on `watchdog.probe_transport` rather than httpcore's pool: measured
here with httpx 0.28.1 / httpcore 1.0.9, a check through httpcore on anyio cost ~1.3 ms of
CPU (one shared pool of N connections even O(N^2): ~8 ms at 500 targets), through the probe
transport ~0.3 ms (`bench/bench_probe.py`), which is what lets 1000 targets be checked every
second within one core.

Details: 2xx and 3xx count as answers (redirects are not followed), like the kubelet's HTTP
probe. Body statuses also understand the health-check draft's "pass"/"warn"/"fail". The
timeout is one deadline for the whole check (connect, headers, body and a retry),
`sent_at` is when the check sent its (first) request and `checked_at` when the result became
known, so `latency == checked_at - sent_at`.

Keep-alive race: a server closes an idle keep-alive connection after its own timeout
(uvicorn: 5 s); a request sent on it at that moment fails with RemoteProtocolError ("Server
disconnected without sending a response"), ReadError or WriteError before any answer arrives.
That is not a failed check: such an error before the response head is retried once, within
the same deadline. The transport discards the connection that failed, so the retry goes out
on a new connection (or on another idle one it holds and has not seen closed). A
server that drops the connection twice gives FAILED "connection closed". Timeouts, refused
connections and errors while reading the body are never retried.

Bounded read: the body is streamed and read up to MAX_BODY (64 KiB, plus at most the one
network read that crossed it), then the response is closed (an unfinished body closes the
connection instead of keeping it for the next check). A body larger than that is not parsed:
classification goes by status code and latency alone. An endless body therefore costs one
64 KiB read, and a trickling one runs into the check's deadline like any other slow answer.
The request asks for ``Accept-Encoding: identity`` so that 64 KiB means 64 KiB of document;
a body the server encodes anyway (gzip, ...) is not parsed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx

from watchdog.clock import Clock
from watchdog.events import clean_value
from watchdog.probe_transport import ProbeClient, ProbeTransport

FAILED_BODY_STATUSES = frozenset({"down", "error", "unhealthy", "fail", "failed", "critical"})
DEGRADED_BODY_STATUSES = frozenset({"degraded", "warn", "warning"})
MAX_BODY = 64 * 1024  # larger bodies are not health documents: not read further, not parsed
MAX_CHECKS = 20  # check results kept from one body
MAX_CHECK_TEXT = 200  # characters of a check's name, status or error
OK_CHECK_STATUSES = frozenset({"ok", "pass", "passed", "up", "healthy"})
_MAX_REASON = 120
# Raised when the server closed a (kept-alive) connection before answering: retried once.
_CONNECTION_LOST = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class ProbeStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check named in a health body (the health kit's ``"database"``, ...)."""

    name: str
    status: str  # lower-case, as the body said: "ok", "failed", "warn", ...
    error: str | None = None
    latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in OK_CHECK_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True, slots=True)
class ProbeResult:
    status: ProbeStatus
    latency: float
    status_code: int | None
    reason: str
    checked_at: float
    # No answer in time from a server that may well be listening: the signature of a hang,
    # which a start-up grace must not hide (unlike "connection refused" while it boots).
    timed_out: bool = False
    # When the request was sent (the Prober sets it); None: derive it, see `sent`.
    sent_at: float | None = None
    checks: tuple[CheckResult, ...] = ()
    # The check could not be made at all for want of erpwatch's own resources (file
    # descriptors, memory, buffers: `LOCAL_ERRNOS`): it says nothing about the target.
    local: bool = False

    @property
    def sent(self) -> float:
        """When the request was sent: `sent_at`, or ``checked_at - latency`` if not given."""
        return self.checked_at - self.latency if self.sent_at is None else self.sent_at

    @property
    def answered(self) -> bool:
        """A response came back. Without one, `latency` is only how long failing took (a
        refused connection "takes" 3 ms): not a response time."""
        return self.status_code is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "latency": round(self.latency, 4),
            "status_code": self.status_code,
            "reason": self.reason,
            "checks": [check.to_dict() for check in self.checks],
        }


def _seconds(value: float) -> str:
    """1 → "1.0s", 0.05 → "0.05s", 2.3149 → "2.31s"."""
    return f"{round(float(value), 2)}s"


def classify(
    status_code: int | None,
    latency: float,
    body: object | None,
    degraded_latency: float,
    error: str | None = None,
) -> tuple[ProbeStatus, str]:
    """Pure decision from what one request returned. Failures win over degradation."""
    if error is not None:
        return ProbeStatus.FAILED, error
    if status_code is None:
        return ProbeStatus.FAILED, "no response"
    if not 200 <= status_code < 400:
        return ProbeStatus.FAILED, f"HTTP {status_code}"
    body_status = body.get("status") if isinstance(body, dict) else None
    if isinstance(body_status, str):
        body_status = body_status.strip().lower()
        if body_status in FAILED_BODY_STATUSES:
            return ProbeStatus.FAILED, f"body status: {body_status}"
        if body_status in DEGRADED_BODY_STATUSES:
            return ProbeStatus.DEGRADED, f"body status: {body_status}"
    if latency > degraded_latency:
        return ProbeStatus.DEGRADED, f"slow: {latency:.2f}s > {_seconds(degraded_latency)}"
    return ProbeStatus.OK, f"HTTP {status_code}"


def parse_body(content: bytes, content_type: str) -> object | None:
    """The JSON document of a health answer, or None (not JSON, too large, malformed)."""
    if not content or len(content) > MAX_BODY:
        return None
    if "json" not in content_type and not content.lstrip().startswith((b"{", b"[")):
        return None
    try:
        document: object = json.loads(content)
    except ValueError:  # not JSON after all (UnicodeDecodeError is a ValueError too)
        return None
    # JSON may spell a lone surrogate ("\ud800"), which UTF-8 cannot encode: escaped here,
    # it can reach the page, the API and the store.
    cleaned: object = clean_value(document)
    return cleaned


def _text(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())  # one line
    return text if len(text) <= MAX_CHECK_TEXT else text[: MAX_CHECK_TEXT - 1] + "…"


def _check(name: object, value: object) -> CheckResult:
    """One entry of ``checks``: a mapping (kit), a list of mappings (the health-check draft:
    the first failing one counts), or a bare status string."""
    if isinstance(value, list):
        entries = [item for item in value if isinstance(item, dict)]
        failing = [
            e for e in entries if _text(e.get("status", "")).lower() not in OK_CHECK_STATUSES
        ]
        value = (failing or entries or [{}])[0]
    if not isinstance(value, dict):
        return CheckResult(_text(name), _text(value).strip().lower() or "unknown")
    status = value.get("status")
    error = value.get("error", value.get("output"))
    latency = value.get("latency_ms")
    if (
        not isinstance(latency, int | float)
        or isinstance(latency, bool)
        or not math.isfinite(latency)
    ):
        latency = None
    return CheckResult(
        _text(name),
        _text(status).strip().lower() if status is not None else "unknown",
        None if error is None or error == "" else _text(error),
        None if latency is None else float(latency),
    )


def parse_checks(body: object) -> tuple[CheckResult, ...]:
    """The check results of a health body, bounded: at most `MAX_CHECKS` (the failing ones
    first, then in the body's order), every text at most `MAX_CHECK_TEXT` characters."""
    checks = body.get("checks") if isinstance(body, dict) else None
    if isinstance(checks, dict):
        items = list(checks.items())
    elif isinstance(checks, list):  # [{"name": "db", "status": ...}, ...]
        items = [
            (c.get("name", f"check {i + 1}"), c)
            for i, c in enumerate(checks)
            if isinstance(c, dict)
        ]
    else:
        return ()
    results = [_check(name, value) for name, value in items[: MAX_CHECKS * 50]]
    if len(results) > MAX_CHECKS:
        keep = sorted(range(len(results)), key=lambda i: (results[i].ok, i))[:MAX_CHECKS]
        results = [results[i] for i in sorted(keep)]
    return tuple(results)


async def read_capped(response: httpx.Response, limit: int = MAX_BODY) -> bytes | None:
    """The raw body of a streamed ``response`` if it is at most ``limit`` bytes, else None.

    Stops reading as soon as more than ``limit`` bytes arrived; the caller closes the response.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# Errors of erpwatch's own process or host, not of the target: out of descriptors (EMFILE,
# ENFILE), of socket buffers (ENOBUFS) or of memory (ENOMEM).
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def local_error(exc: BaseException) -> bool:
    """``exc`` (or what it wraps) is a `LOCAL_ERRNOS` error of our own."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in LOCAL_ERRNOS:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short human reason for a failed request."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timeout after {_seconds(timeout)}"
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the OS error (httpcore, then OSError)
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.RemoteProtocolError):
        text = "connection closed" if "without sending" in str(exc) else f"protocol error: {exc}"
    elif isinstance(exc, httpx.ConnectError):
        text = f"cannot connect: {exc}" if str(exc) else "cannot connect"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_REASON]


class Prober:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        degraded_latency: float,
        client: ProbeSender,
        clock: Clock,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.degraded_latency = degraded_latency
        self._client = client
        self._clock = clock
        # Built once: checks are hot, and build_request is ~10% of a check's CPU. Identity
        # encoding: the body cap then bounds the document itself, not a compressed form.
        self._request = client.build_request(
            "GET", url, headers={"Accept-Encoding": "identity"}, timeout=httpx.Timeout(timeout)
        )

    async def check(self) -> ProbeResult:
        """One request; network problems become a FAILED result, never an exception."""
        started = self._clock.now()
        status_code: int | None = None
        body: object | None = None
        error: str | None = None
        timed_out = local = False
        try:
            # One deadline for everything, retry included (httpx's own timeouts are per phase).
            async with asyncio.timeout(self.timeout):
                try:
                    response = await self._client.send(self._request, stream=True)
                except _CONNECTION_LOST:  # the keep-alive race: once more, new connection
                    response = await self._client.send(self._request, stream=True)
                try:
                    content = await read_capped(response)
                finally:
                    await response.aclose()  # an unread rest closes the connection
            status_code = response.status_code  # an answer cut short is no answer
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if content is not None and encoding == "identity":
                body = parse_body(content, response.headers.get("content-type", ""))
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            error = describe_error(exc, self.timeout)
            timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
            local = local_error(exc)
        finished = self._clock.now()
        latency = finished - started
        status, reason = classify(status_code, latency, body, self.degraded_latency, error)
        checks = parse_checks(body)
        return ProbeResult(
            status, latency, status_code, reason, finished, timed_out, started, checks, local
        )


class ProbeSender(Protocol):
    """What a Prober sends with: a `ProbeClient` (`make_client`), or an httpx.AsyncClient."""

    def build_request(
        self, method: str, url: str, *, headers: dict[str, str], timeout: httpx.Timeout
    ) -> httpx.Request: ...

    async def send(self, request: httpx.Request, *, stream: bool = ...) -> httpx.Response: ...


def make_client(
    max_connections: int | None = None, ssl_context: ssl.SSLContext | None = None
) -> ProbeClient:
    """A client for Probers: keep-alive, no redirects, no proxy settings, no cookies.

    One per target (its checks never overlap): its transport (`watchdog.probe_transport`)
    keeps ``max_connections`` idle connections (None: 2). ``ssl_context`` is for https
    URLs; without one, httpx's default (the CA bundle, ~25 ms and ~3 MiB) is built on the
    first https connection, so share one context between clients.
    """
    idle = 2 if max_connections is None else max_connections
    return ProbeClient(ProbeTransport(ssl_context, max_idle=idle))
