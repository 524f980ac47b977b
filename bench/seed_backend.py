"""The benchmark's backend: the seed's stack, a Starlette app on uvicorn with erpwatch's
health kit mounted (as users mount it in their ERP backend).

    python bench/seed_backend.py --port P [--spawn-grandchild] [--grandchild-setsid]

GET  /health        from `watchdog.healthkit.HealthKit` (200 {"status": "ok"}, no I/O)
GET  /status        from the health kit (version, uptime, pid, process sample, checks)
POST /fault/hang    answers 200, then blocks the event loop with a synchronous
                    ``time.sleep`` (as a blocking call in an ``async def`` handler does):
                    every request, /health included, stops answering, and SIGTERM is not
                    acted on (uvicorn's handler only sets a flag the blocked loop never reads)
POST /fault/crash   answers, then exits with code 3 at once

The crash rows SIGKILL the process from outside; the hang rows use ``POST /fault/hang``.
``--heartbeat-port U`` sends ``pid;timestamp`` by UDP to 127.0.0.1:U every second from the
event loop (circus's watchdog plugin; a blocked loop stops them). ``--spawn-grandchild``
starts ``python -c "import time; time.sleep(3600)"`` first (in its own session with
``--grandchild-setsid``), for the orphan row. The fault lives in memory, so the process that
replaces a hung one is healthy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

# Run as a script from anywhere (the watchdogs start it from their temp dirs).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from watchdog.healthkit import HealthKit

HANG_SECONDS = 3600.0
CRASH_EXIT_CODE = 3


async def _database() -> str:
    await asyncio.sleep(0)
    return "connected"


async def _hang_now() -> None:
    time.sleep(HANG_SECONDS)  # noqa: ASYNC251 - the fault: a blocking call on the event loop


async def hang(request: Request) -> JSONResponse:
    # The answer goes out first (so the bench knows the moment), then the loop blocks.
    return JSONResponse({"fault": "hang"}, background=BackgroundTask(_hang_now))


async def crash(request: Request) -> JSONResponse:
    asyncio.get_running_loop().call_later(0.01, os._exit, CRASH_EXIT_CODE)
    return JSONResponse({"fault": "crash"})


async def _heartbeat(port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
    )
    try:
        while True:
            transport.sendto(f"{os.getpid()};{time.time()}".encode())
            await asyncio.sleep(1.0)
    finally:
        transport.close()


def create_app(heartbeat_port: int | None = None) -> Starlette:
    kit = HealthKit(version="bench", checks={"database": _database}, cache_ttl=0.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = None
        if heartbeat_port is not None:
            task = asyncio.create_task(_heartbeat(heartbeat_port))
        yield
        if task is not None:
            task.cancel()

    return Starlette(
        routes=[
            Route("/fault/hang", hang, methods=["POST"]),
            Route("/fault/crash", crash, methods=["POST"]),
            Mount("/", kit.app),
        ],
        lifespan=lifespan,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/seed_backend.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--spawn-grandchild", action="store_true")
    parser.add_argument("--grandchild-setsid", action="store_true")
    parser.add_argument("--heartbeat-port", type=int)
    args = parser.parse_args(argv)
    if args.spawn_grandchild:
        grandchild = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            start_new_session=args.grandchild_setsid,
        )
        print(f"GRANDCHILD {grandchild.pid}", flush=True)
    uvicorn.run(
        create_app(args.heartbeat_port),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
