"""Many cheap health endpoints in one asyncio process, logging when each request arrives.

    python -m bench.scale_backend --count N --out FILE

Binds N loopback listeners on free ports, prints their ports as one JSON line, answers every
``GET`` with ``200 {"status": "ok"}`` (keep-alive), and records the monotonic arrival time of
each request per listener. On SIGTERM it writes ``{"ports": [...], "arrivals": [[t, ...],
...]}`` to FILE and exits. Measuring probe times here, on the backends' side, does not depend
on what the watchdog reports about itself.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import signal
import socket
import time
from pathlib import Path

BODY = b'{"status": "ok"}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Health(asyncio.Protocol):
    def __init__(self, arrivals: list[float]) -> None:
        self.arrivals = arrivals
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.arrivals.append(now)
            assert self.transport is not None
            self.transport.write(ANSWER)


async def serve(count: int, out: Path) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    arrivals: list[list[float]] = [[] for _ in range(count)]
    servers = []
    ports = []
    for index in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        ports.append(sock.getsockname()[1])
        log = arrivals[index]
        servers.append(await loop.create_server(functools.partial(Health, log), sock=sock))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(json.dumps(ports), flush=True)
    await stop.wait()
    out.write_text(json.dumps({"ports": ports, "arrivals": arrivals}))  # noqa: ASYNC240
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.count, args.out))


if __name__ == "__main__":
    main()
