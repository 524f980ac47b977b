"""The demo's ERP backend as users run theirs: a Starlette app on uvicorn that mounts
erpwatch's health kit, with the same fault switches as `watchdog.demo.backend`.

    python -m watchdog.demo.erp_app --port P [--fault-file PATH]

/health and /status come from `erpwatch_healthkit.HealthKit`; a "database" check reports the
fault state, so ``degrade`` shows up as ``"status": "degraded"`` on /status. Faults:
``crash`` exits with code 3 (at the next request; a fault file that says ``crash`` also
makes every start die at once, before it listens), ``hang`` blocks the event loop (a real
deadlock: every request, /health included, stops answering), ``slow:X`` delays every
request by X seconds. A fault switched over HTTP (``POST /fault/hang``) lives in this
process only, so the next start is clean; one in the fault file persists across restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from erpwatch_healthkit import HealthKit
from watchdog import __version__
from watchdog.demo.backend import FAULTS, Faults, crash


class DatabaseDegraded(RuntimeError):
    pass


def create_app(faults: Faults) -> ASGIApp:
    async def database() -> str:
        if faults.current()[0] == "degrade":
            raise DatabaseDegraded("replica lagging (demo fault)")
        return "connected"

    async def set_fault(request: Request) -> Response:
        fault = request.path_params["fault"]
        if fault not in (*FAULTS, "recover"):
            return JSONResponse({"error": "unknown fault"}, status_code=404)
        if fault == "crash":
            asyncio.get_running_loop().call_later(0.01, crash)
        else:
            seconds = float(request.query_params.get("seconds", "1"))
            faults.set("ok" if fault == "recover" else fault, seconds)
        return JSONResponse({"fault": fault})

    kit = HealthKit(version=__version__, checks={"database": database}, cache_ttl=0.0)
    app = Starlette(
        routes=[Route("/fault/{fault}", set_fault, methods=["POST"]), Mount("/", kit.app)]
    )
    return FaultMiddleware(app, faults)


class FaultMiddleware:
    """Applies the current fault to every request before the app sees it."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/fault/"):
            mode, seconds = self.faults.current()
            if mode == "crash":
                crash()
            elif mode == "hang":
                while self.faults.current()[0] == "hang":
                    time.sleep(0.05)  # noqa: ASYNC251 - blocks the event loop on purpose
            elif mode == "slow":
                await asyncio.sleep(seconds)
        await self.app(scope, receive, send)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m watchdog.demo.erp_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fault-file", type=Path)
    args = parser.parse_args(argv)
    faults = Faults(args.fault_file)
    if faults.current()[0] == "crash":
        crash()  # a start that dies at once, as with a broken configuration or migration
    app = create_app(faults)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
