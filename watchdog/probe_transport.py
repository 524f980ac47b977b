"""A lean httpx transport for health checks: keep-alive HTTP/1.1 connections, h11 on asyncio.

Why: httpx's default transport (httpcore's connection pool on anyio) cost ~0.85 ms of CPU per
check here, where the rest of a check (httpx's client layer, the probe's own work) costs
~0.2 ms: at 1000 targets checked every second that alone was most of a core
(`bench/bench_probe.py`). One target's checks are sequential, so a pool has nothing to
schedule. This transport keeps a few idle connections, speaks HTTP/1.1 through h11 (the
parser httpcore and uvicorn use) on an asyncio protocol, and raises httpx's own exceptions
for the same failures, so `Prober` and its callers see what they saw with httpcore:

- refused / unreachable / DNS failure  -> httpx.ConnectError (the OSError as its cause)
- closed before any answer             -> httpx.RemoteProtocolError("Server disconnected
                                          without sending a response.")
- reset while reading                  -> httpx.ReadError; a malformed answer or a body
                                          cut short -> httpx.RemoteProtocolError
- connect timeout (request extension)  -> httpx.ConnectTimeout

A connection goes back to the idle list only when h11 says both sides finished the exchange
and the server did not ask to close; a response closed before its body was read to the end
closes its connection (as httpcore does), and so does a cancelled request (the probe's
deadline). An idle connection the server closed, or that received anything, is not reused.
Reading is paused while more than `_HIGH_WATER` bytes wait unparsed, so a flooding server
costs bounded memory. No proxies, redirects or HTTP/2: a health check needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import h11
import httpx

from watchdog import __version__

_HIGH_WATER = 256 * 1024  # unparsed bytes at which reading pauses
_MAX_HEAD = 64 * 1024  # the most a response head (status line and headers) may take
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEADERS = {"accept": "*/*", "connection": "keep-alive", "user-agent": f"erpwatch/{__version__}"}


class ProbeClient:
    """What a `Prober` needs of ``httpx.AsyncClient`` (``build_request``, ``send``,
    ``aclose``), straight on a `ProbeTransport`: without the client's cookie jar (a health
    check should not carry cookies; filling the jar was ~6 % of a core at 1000 targets) and
    its auth and redirect layers, ~0.13 ms of CPU a check. Requests and responses are httpx's.
    """

    def __init__(self, transport: ProbeTransport) -> None:
        self._transport = transport

    def build_request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Request:
        extensions = {} if timeout is None else {"timeout": timeout.as_dict()}
        return httpx.Request(
            method, url, headers={**_HEADERS, **(headers or {})}, extensions=extensions
        )

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """The response; with ``stream`` its body is not read yet (close it when done)."""
        response = await self._transport.handle_async_request(request)
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ProbeTransport(httpx.AsyncBaseTransport):
    """httpx transport keeping at most ``max_idle`` idle connections (one per target is the
    intended use: its checks never overlap). ``ssl_context`` is used for https URLs; without
    one, httpx's default context (the CA bundle) is built on the first https connection."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, max_idle: int = 1) -> None:
        self._ssl = ssl_context
        self._max_idle = max(max_idle, 0)
        self._idle: list[_Connection] = []
        self._closed = False
        self._head: tuple[httpx.Request, h11.Request] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        cached = self._head
        if cached is None or cached[0] is not request:
            # A Prober sends the same request every time: its h11 form (validated headers,
            # ~40 % of sending) is built once.
            event = h11.Request(
                method=request.method, target=request.url.raw_path, headers=request.headers.raw
            )
            cached = self._head = (request, event)
        conn = self._take_idle(origin)
        if conn is None:
            conn = await self._connect(request, origin)
        try:
            await conn.send_request(request, cached[1])
            head = await conn.response_head()
        except BaseException:
            conn.close()
            raise
        return httpx.Response(
            head.status_code,
            headers=list(head.headers),
            stream=_Body(conn, self),
            extensions={
                "http_version": b"HTTP/" + head.http_version,
                "reason_phrase": head.reason,
            },
            request=request,
        )

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.origin == origin and conn.reusable:
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self._max_idle or not conn.reusable:
            conn.close()
        else:
            self._idle.append(conn)

    async def _connect(self, request: httpx.Request, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        timeouts = request.extensions.get("timeout") or {}
        connect_timeout = timeouts.get("connect")
        loop = asyncio.get_running_loop()
        conn = _Connection(origin)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError as exc:  # the connect timeout, or the kernel's ETIMEDOUT
            conn.close()
            raise httpx.ConnectTimeout(str(exc) or "connect timeout") from exc
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise httpx.ConnectError(str(exc)) from exc
        return conn


class _Body(httpx.AsyncByteStream):
    """The response body, read from the connection; gives the connection back at its end."""

    def __init__(self, conn: _Connection, transport: ProbeTransport) -> None:
        self._conn: _Connection | None = conn
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
        except BaseException:
            self._conn = None
            conn.close()
            raise
        self._conn = None
        conn.finish()
        self._transport._give_back(conn)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # the body was not read to its end: the connection is spent
            conn.close()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: bytes arrive by the protocol callbacks, h11 parses them
    when the reader asks for the next event."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._eof_fed = False
        self._lost: BaseException | None = None
        self._paused = False
        self._head_seen = False
        self._waiter: asyncio.Future[None] | None = None

    # --- protocol callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- for the transport ----------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return (
            not self._eof
            and not self._buffer
            and self._transport is not None
            and not self._transport.is_closing()
            and self._h11.our_state is h11.IDLE
            and self._h11.their_state is h11.IDLE
        )

    async def send_request(self, request: httpx.Request, head: h11.Request) -> None:
        body = await request.aread()
        data = self._h11.send(head) or b""
        if body:
            data += self._h11.send(h11.Data(data=body)) or b""
        data += self._h11.send(h11.EndOfMessage()) or b""
        if self._transport is None or self._transport.is_closing():
            raise httpx.WriteError("connection closed before the request was sent")
        self._transport.write(data)

    async def response_head(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                self._head_seen = True
                return event
            # h11.InformationalResponse (1xx): wait for the final answer

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            if isinstance(event, h11.Event):
                return event
            await self._feed()  # h11.NEED_DATA

    async def _feed(self) -> None:
        """Give h11 what arrived, or its end; wait for bytes when there are none."""
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            if self._paused and self._transport is not None:
                self._paused = False
                self._transport.resume_reading()
            self._h11.receive_data(data)
        elif self._lost is not None:  # reset, ...
            raise httpx.ReadError(str(self._lost)) from self._lost
        elif not self._head_seen or self._eof_fed:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        else:  # the end of a body: h11 decides whether it was complete
            self._eof_fed = True
            self._h11.receive_data(b"")

    def finish(self) -> None:
        """The exchange is complete: ready the connection for the next one if both agree."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            with contextlib.suppress(h11.LocalProtocolError):
                self._h11.start_next_cycle()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._eof = True
        self._wake()
