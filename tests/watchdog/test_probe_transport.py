"""The health checks' transport (h11 on asyncio) against live servers on 127.0.0.1: keep-alive,
framings, failures mapped as httpcore maps them, and TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import await_until
from tests.watchdog.test_probe import HealthServer, LoopbackServer, prober
from watchdog.probe import ProbeStatus, make_client
from watchdog.probe_transport import ProbeClient


class ScriptServer(LoopbackServer):
    """Answers each request with ``answer``; then closes the connection if ``close``."""

    def __init__(self, answer: bytes, *, close: bool = False, reset_first: bool = False) -> None:
        super().__init__()
        self.answer = answer
        self.close = close
        self.reset_first = reset_first  # the first connection is reset instead of answered

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            if self.reset_first and self.connections == 1:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return  # closing with linger 0 sends RST
            writer.write(self.answer)
            await writer.drain()
            if self.close:
                return


@pytest.fixture
async def client() -> AsyncIterator[ProbeClient]:
    async with make_client(max_connections=2) as one:
        yield one


async def test_checks_share_one_kept_alive_connection(client: ProbeClient) -> None:
    async with HealthServer() as server:
        check = prober(server.url, client)
        results = [await check.check() for _ in range(20)]
    assert [r.status for r in results] == [ProbeStatus.OK] * 20
    assert server.connections == 1


async def test_an_answer_asking_to_close_is_not_reused(client: ProbeClient) -> None:
    async with HealthServer() as server:
        server.extra_headers = "Connection: close\r\n"
        check = prober(server.url, client)
        results = [await check.check() for _ in range(3)]
    assert [r.status for r in results] == [ProbeStatus.OK] * 3
    assert server.connections == 3


@pytest.mark.parametrize(
    ("answer", "close"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b'8\r\n{"status\r\n'
            b'e\r\n": "degraded"}\r\n'
            b"0\r\n\r\n",
            False,
        ),
        (b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"status": "degraded"}', True),
    ],
    ids=["chunked", "http-1.0-until-close"],
)
async def test_bodies_of_every_framing_are_read_and_parsed(
    client: ProbeClient, answer: bytes, close: bool
) -> None:
    async with ScriptServer(answer, close=close) as server:
        result = await prober(server.url, client).check()
    assert (result.status, result.status_code) == (ProbeStatus.DEGRADED, 200)


async def test_a_connection_closed_by_the_server_while_idle_is_replaced(
    client: ProbeClient,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with ScriptServer(answer, close=True) as server:
        check = prober(server.url, client)
        first = await check.check()
        await await_until(lambda: not server._handlers, what="the server closed its side")
        second = await check.check()
    assert (first.status, second.status) == (ProbeStatus.OK, ProbeStatus.OK)
    assert server.connections == 2


async def test_a_reset_before_the_answer_is_retried_on_a_new_connection(
    client: ProbeClient,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with ScriptServer(answer, reset_first=True) as server:
        result = await prober(server.url, client).check()
    assert result.status is ProbeStatus.OK
    assert server.connections == 2


async def test_an_answer_that_is_not_http_is_a_protocol_error(client: ProbeClient) -> None:
    async with ScriptServer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as server:
        result = await prober(server.url, client).check()
    assert result.status is ProbeStatus.FAILED
    assert result.reason.startswith("protocol error")


async def test_a_request_failing_to_connect_names_the_cause(client: ProbeClient) -> None:
    result = await prober("http://127.0.0.1:1/health", client).check()  # nothing listens on 1
    assert (result.status, result.reason) == (ProbeStatus.FAILED, "connection refused")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-days", "2", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", *subject, *files],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_is_verified_against_the_given_context(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"status": "ok"}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    tls = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_side)
    url = f"https://127.0.0.1:{tls.sockets[0].getsockname()[1]}/health"
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        async with make_client(ssl_context=trusting) as trusted:
            ok = [await prober(url, trusted).check() for _ in range(2)]
        async with make_client() as default:  # the CA bundle does not know this certificate
            refused = await prober(url, default).check()
    finally:
        tls.close()
        await tls.wait_closed()
    assert [r.status for r in ok] == [ProbeStatus.OK, ProbeStatus.OK]
    assert refused.status is ProbeStatus.FAILED
    assert "CERTIFICATE_VERIFY_FAILED" in refused.reason
