from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from erpwatch_healthkit import HealthKit
from tests.helpers import await_until


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handling alone
        yield


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` behind a real uvicorn on 127.0.0.1:<ephemeral>, and a client for it."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await await_until(lambda: server.started or task.done(), what="uvicorn started")
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("erp home")


def erp_app(kit: HealthKit) -> Starlette:
    """How a backend mounts the kit: its own routes, the kit under a prefix."""
    return Starlette(routes=[Route("/", _home), Mount("/ops", app=kit.app)])


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_health_is_ok_without_running_checks() -> None:
    calls: list[str] = []

    async def db() -> None:
        calls.append("db")

    kit = HealthKit(version="1.2.3", checks={"db": db})
    async with serve(erp_app(kit)) as client:
        response = await client.get("/ops/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert (await client.get("/")).text == "erp home"
    assert calls == []


async def test_status_ok_with_process_figures_and_check_details() -> None:
    async def db() -> dict[str, int]:
        return {"connections": 3}

    async def cache() -> object:
        return object()  # not JSON: no detail

    clock = FakeTime()
    kit = HealthKit(version="1.2.3", checks={"db": db, "cache": cache}, clock=clock)
    clock.now += 42.5
    async with serve(erp_app(kit)) as client:
        body = (await client.get("/ops/status")).json()
    assert body["status"] == "ok"
    assert body["version"] == "1.2.3"
    assert body["uptime"] == 42.5
    assert body["pid"] == os.getpid()
    assert body["process"]["rss_mb"] > 0 and body["process"]["threads"] >= 1
    assert "cpu_percent" in body["process"]
    assert body["checks"]["db"]["status"] == "ok"
    assert body["checks"]["db"]["detail"] == {"connections": 3}
    assert body["checks"]["cache"]["status"] == "ok" and "detail" not in body["checks"]["cache"]


async def test_failed_and_slow_checks_degrade_the_status() -> None:
    async def db() -> None:
        raise ConnectionRefusedError("db down")

    async def queue() -> None:
        await asyncio.sleep(30)

    async def cache() -> str:
        return "warm"

    kit = HealthKit(checks={"db": db, "queue": queue, "cache": cache}, check_timeout=0.1)
    async with serve(erp_app(kit)) as client:
        response = await client.get("/ops/status")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["checks"]["db"] == {
        "status": "failed",
        "error": "ConnectionRefusedError: db down",
        "latency_ms": body["checks"]["db"]["latency_ms"],
    }
    assert body["checks"]["queue"]["status"] == "failed"
    assert body["checks"]["queue"]["error"] == "timed out after 0.1s"
    assert body["checks"]["cache"] == {
        "status": "ok",
        "detail": "warm",
        "latency_ms": body["checks"]["cache"]["latency_ms"],
    }


async def test_status_is_cached_for_the_ttl() -> None:
    calls: list[int] = []

    async def db() -> int:
        calls.append(1)
        return len(calls)

    clock = FakeTime()
    kit = HealthKit(checks={"db": db}, cache_ttl=2.0, clock=clock)
    async with serve(kit.app) as client:
        first = (await client.get("/status")).json()
        clock.now += 1.9
        second = (await client.get("/status")).json()
        assert len(calls) == 1 and first == second
        clock.now += 0.2
        third = (await client.get("/status")).json()
    assert len(calls) == 2
    assert third["checks"]["db"]["detail"] == 2


async def test_concurrent_requests_share_one_computation() -> None:
    calls: list[int] = []
    release = asyncio.Event()

    async def db() -> None:
        calls.append(1)
        await release.wait()

    kit = HealthKit(checks={"db": db}, check_timeout=10)
    async with serve(kit.app) as client:
        requests = [asyncio.create_task(client.get("/status")) for _ in range(5)]
        await await_until(lambda: len(calls) == 1, what="the check to start")
        release.set()
        responses = await asyncio.gather(*requests)
    assert [r.json()["status"] for r in responses] == ["ok"] * 5
    assert len(calls) == 1


CHILD = """
import asyncio, socket, sys
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from erpwatch_healthkit import HealthKit

async def db():
    await asyncio.sleep(0)
    return "connected"

kit = HealthKit(version="9.9", checks={"db": db})
app = Starlette(routes=[Mount("/", app=kit.app)])
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off")).run(sockets=[sock])
"""


@pytest.fixture
def child_backend(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    script = tmp_path / "backend.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_kit_in_a_real_backend_process(
    child_backend: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = child_backend

    async def status() -> Any:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{url}/status")).json()
        except httpx.TransportError:
            return None  # not accepting yet: poll again

    body = await await_until(status, what="the child backend's /status")
    assert body["status"] == "ok" and body["version"] == "9.9"
    assert body["pid"] == proc.pid
    assert body["checks"]["db"]["detail"] == "connected"
    async with httpx.AsyncClient(timeout=2) as client:
        assert (await client.get(f"{url}/health")).json() == {"status": "ok"}


def test_erpwatch_still_ships_the_kit_under_its_old_name() -> None:
    import erpwatch_healthkit
    import watchdog.healthkit

    assert watchdog.healthkit.HealthKit is erpwatch_healthkit.HealthKit
    assert watchdog.healthkit.Check is erpwatch_healthkit.Check


# --- the kit as a distribution of its own, in a backend's environment --------------------

REPO = Path(__file__).resolve().parents[2]
# What a build leaves in a source tree, and what is not the project's: builds run on a copy.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "test-artifacts"
)

BACKEND_CHECK = """
import asyncio, importlib.util, json

# The backend's environment: the kit and its two dependencies, no erpwatch.
missing = [n for n in ("watchdog", "alerting", "erpwatch_templates") if importlib.util.find_spec(n)]
assert not missing, f"importable without erpwatch: {missing}"

from erpwatch_healthkit import HealthKit


async def get(app, path):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


async def db():
    return "connected"


async def main():
    kit = HealthKit(version="7.0", checks={"db": db})
    health = await get(kit.app, "/health")
    status = await get(kit.app, "/status")
    import erpwatch_healthkit
    print(json.dumps({"health": health, "status": status, "file": erpwatch_healthkit.__file__}))


asyncio.run(main())
"""


@pytest.mark.slow
def test_the_kit_installs_into_a_backends_venv_without_watchdog(tmp_path: Path) -> None:
    """`pip install ./healthkit` into a fresh venv: `erpwatch_healthkit` imports and serves,
    and nothing named `watchdog` comes along (the backend may use the PyPI library)."""
    source = shutil.copytree(REPO / "healthkit", tmp_path / "healthkit", ignore=NOT_SOURCE)
    venv = tmp_path / "backend-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    installed = subprocess.run(
        [*pip, "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "would be ignored" not in installed.stderr
    names = subprocess.run(
        [*pip, "list", "--format=json"], capture_output=True, text=True, env=env, check=True
    )
    dists = {d["name"].lower() for d in json.loads(names.stdout)}
    assert "erpwatch-healthkit" in dists and "erpwatch" not in dists
    assert {"starlette", "psutil"} <= dists
    ran = subprocess.run(
        [str(python), "-I", "-c", BACKEND_CHECK],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(ran.stdout)
    assert result["health"] == [200, {"status": "ok"}]
    status_code, status = result["status"]
    assert status_code == 200 and status["status"] == "ok" and status["version"] == "7.0"
    assert status["checks"]["db"]["detail"] == "connected"
    assert Path(result["file"]).is_relative_to(venv)


@pytest.mark.slow
def test_erpwatchs_wheel_ships_the_kit_and_builds_without_warnings(tmp_path: Path) -> None:
    """erpwatch's own wheel (what `pip install .` installs) carries `erpwatch_healthkit`, the
    demo and every template, and the build names no "Package would be ignored"."""
    source = shutil.copytree(REPO, tmp_path / "erpwatch", ignore=NOT_SOURCE)
    out = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", str(source), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert "would be ignored" not in output and "absent from the `packages`" not in output
    (wheel,) = out.glob("erpwatch-*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    assert {"erpwatch_healthkit/__init__.py", "erpwatch_healthkit/py.typed"} <= files
    assert {"watchdog/healthkit.py", "watchdog/py.typed", "alerting/py.typed"} <= files
    demo = {f"watchdog/demo/{p.name}" for p in (REPO / "watchdog" / "demo").glob("*.py")}
    assert demo and demo <= files
    templates = {
        "erpwatch_templates/" + p.relative_to(REPO / "templates").as_posix()
        for p in (REPO / "templates").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert templates and templates - files == set()
