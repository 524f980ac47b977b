"""erpwatch's health kit: health endpoints for the ERP backend to mount, on Starlette alone.

Install it into the backend's environment (``pip install ./healthkit`` from erpwatch's
repository, or ``erpwatch-healthkit``); it needs only Starlette and psutil, and it does not
bring erpwatch's ``watchdog`` import package, so it cannot collide with the PyPI ``watchdog``
library that backends such as Odoo use. erpwatch itself ships it too.

    from erpwatch_healthkit import HealthKit

    kit = HealthKit(version="2.3.1", checks={"db": ping_db}, check_timeout=2.0, cache_ttl=2.0)

    # Starlette:  Starlette(routes=[..., Mount("/ops", app=kit.app)])
    # FastAPI:    app.mount("/ops", kit.app)      (or app.router.routes.extend(kit.routes))

    GET /health  → 200 {"status": "ok"}: no I/O, answers as long as the event loop does.
    GET /status  → 200 {"status": "ok" | "degraded", "version", "uptime", "pid",
                        "process": {"cpu_percent", "rss_mb", "threads"},
                        "checks": {"db": {"status": "ok", "latency_ms": 1.2}, ...}}
                   Each check runs with its own timeout; a failure or timeout makes the whole
                   status "degraded" with the check's error. The payload is cached for
                   ``cache_ttl`` seconds and concurrent requests share one computation.

Point erpwatch's health URL at ``/status`` to see "degraded" (erpwatch reads the JSON body),
or at ``/health`` for plain liveness.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import psutil
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

__version__ = "0.1.0"
__all__ = ["Check", "HealthKit"]

Check = Callable[[], Awaitable[Any]]

_JSON_SCALARS = (str, int, float, bool, type(None))


class HealthKit:
    def __init__(
        self,
        *,
        version: str = "unknown",
        checks: Mapping[str, Check] | None = None,
        check_timeout: float = 2.0,
        cache_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``checks`` are async callables; one that returns is ok (a JSON-friendly return
        value is shown as its ``detail``), one that raises or outlasts ``check_timeout`` is
        failed."""
        self.version = version
        self.checks = dict(checks or {})
        self.check_timeout = check_timeout
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._started = clock()
        self._process = psutil.Process(os.getpid())
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._inflight: asyncio.Task[dict[str, Any]] | None = None
        self.routes: list[BaseRoute] = [
            Route("/health", self._health, methods=["GET"]),
            Route("/status", self._status, methods=["GET"]),
        ]
        self.app = Starlette(routes=self.routes)

    async def _health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def _status(self, request: Request) -> JSONResponse:
        return JSONResponse(await self.status(), headers={"Cache-Control": "no-store"})

    async def status(self) -> dict[str, Any]:
        """The /status payload, from the cache when it is younger than ``cache_ttl``."""
        now = self._clock()
        if self._cached is not None and now - self._cached[0] < self.cache_ttl:
            return self._cached[1]
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._compute())
            self._inflight.add_done_callback(self._computed)
        # shield: a client that hangs up does not cancel the others' computation
        return await asyncio.shield(self._inflight)

    def _computed(self, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _compute(self) -> dict[str, Any]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run_check(self.checks[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        process = await asyncio.to_thread(self._process_sample)
        degraded = any(result["status"] != "ok" for result in checks.values())
        now = self._clock()
        payload: dict[str, Any] = {
            "status": "degraded" if degraded else "ok",
            "version": self.version,
            "uptime": round(now - self._started, 3),
            "pid": self._process.pid,
            "process": process,
            "checks": checks,
        }
        self._cached = (now, payload)
        return payload

    async def _run_check(self, check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            value = await asyncio.wait_for(check(), timeout=self.check_timeout)
        except TimeoutError:
            return {
                "status": "failed",
                "error": f"timed out after {self.check_timeout:g}s",
                "latency_ms": _ms_since(started),
            }
        except Exception as exc:  # the check's failure is the result, reported in full
            return {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                "latency_ms": _ms_since(started),
            }
        result: dict[str, Any] = {"status": "ok", "latency_ms": _ms_since(started)}
        if value is not None and _json_friendly(value):
            result["detail"] = value
        return result

    def _process_sample(self) -> dict[str, Any]:
        # Runs in a worker thread; cpu_percent covers the time since the previous sample.
        with self._process.oneshot():
            return {
                "cpu_percent": self._process.cpu_percent(interval=None),
                "rss_mb": round(self._process.memory_info().rss / 1024 / 1024, 1),
                "threads": self._process.num_threads(),
            }


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _json_friendly(value: Any) -> bool:
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(_json_friendly(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_friendly(v) for k, v in value.items())
    return False
