"""Benchmark the status server (a script, not a test). Loopback only, bounded in time.

The server (real `StatusServer`, store, bus; a stand-in source with a few targets) runs in
this process's event loop next to a 0.1 s ticker standing in for the probe schedule, whose
lag is recorded. Load comes from child processes (so the client's CPU is not the server's
loop): a paced httpx client (open loop, N requests at R/s) and a process holding C SSE
streams. Phases:

  0  the floor: a bare ASGI app answering fixed bytes on the same embedded uvicorn
  A  /status at R/s, no SSE clients
  B  /status at R/s with C SSE clients connected and 10 events/s published to them
  C  /status?fresh=1 (no cache) at a lower rate, for reference
  then `StatusServer.stop()` with the C streams still open.

    .venv/bin/python bench/bench_status.py                  # 200/s x 2000, 50 SSE clients
    .venv/bin/python bench/bench_status.py --rate 200 --requests 1000 --sse-clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

P99_LIMIT_MS = 5.0
TICK_S = 0.1


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50": round(statistics.median(ms), 3),
        "p95": round(percentile(ms, 95), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms), 3),
    }


# --- child roles ----------------------------------------------------------------------------


class RawClient:
    """HTTP/1.1 keep-alive GETs on a plain socket: almost no client-side overhead."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
        self.buffer = b""

    def get(self) -> int:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length")
        )
        while len(self.buffer) < length:
            self.buffer += self._recv()
        self.buffer = self.buffer[length:]
        return int(lines[0].split()[1])

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def role_load(url: str, rate: float, count: int, kind: str) -> None:
    """Open-loop paced GETs on one keep-alive connection; prints latencies as JSON."""
    import httpx

    latencies: list[float] = []
    late = 0
    with httpx.Client(timeout=5, trust_env=False) as client:
        raw = RawClient(url) if kind == "raw" else None

        def get() -> int:
            return raw.get() if raw is not None else client.get(url).status_code

        get()  # connect + warm
        start = time.perf_counter()
        for i in range(count):
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            elif now - due > 1 / rate:
                late += 1
            sent = time.perf_counter()
            status = get()
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                raise SystemExit(f"HTTP {status}")
        wall = time.perf_counter() - start
        if raw is not None:
            raw.close()
    print(json.dumps({"latencies": latencies, "late": late, "achieved_rate": count / wall}))


async def _sse_role(url: str, clients: int, seconds: float) -> None:
    """C SSE streams on plain asyncio sockets (cheap, so the clients do not starve the
    server on a small machine); counts the ``id:`` lines each receives."""
    parts = urlsplit(url)
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    request += "Accept: text/event-stream\r\n\r\n"
    received = [0] * clients

    async def one(index: int) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(request.encode())
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"SSE: {status!r}")
            while line := await reader.readline():
                if line.startswith(b"id:"):
                    received[index] += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    done, _ = await asyncio.wait(tasks, timeout=seconds)
    ended_by_server = sum(1 for task in done if task.exception() is None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"received": received, "ended_by_server": ended_by_server}))


# --- the server side ------------------------------------------------------------------------


class Ticker:
    """A 0.1 s periodic task (like the probe schedule); records how late each tick wakes."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + TICK_S
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.lags.append(max(0.0, loop.time() - due))
            due += TICK_S

    def take(self) -> list[float]:
        """The lags so far; starts a new phase (and the CPU meter)."""
        lags, self.lags = self.lags, []
        return lags

    def start_phase(self) -> None:
        self.lags = []
        METER.reset()


CLIENT = ["raw"]  # set from --client in main(); passed to the load children


async def child(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", CLIENT[0], *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed with {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


async def wait_for(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


class CpuMeter:
    """This process's CPU use (all threads) between two readings, as % of one core."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def take(self) -> float:
        cpu, wall = time.process_time() - self.cpu, time.perf_counter() - self.wall
        self.reset()
        return 100 * cpu / wall


METER = CpuMeter()


def print_phase(name: str, load: dict[str, Any], lags: list[float]) -> float:
    server_cpu = METER.take()
    stats = summary_ms(load["latencies"])
    lag = summary_ms(lags) if lags else {}
    print(
        f"{name:<44} {stats['n']:>5} req at {load['achieved_rate']:6.1f}/s  "
        f"p50 {stats['p50']:.2f}  p95 {stats['p95']:.2f}  p99 {stats['p99']:.2f}  "
        f"max {stats['max']:.2f} ms  (late sends {load['late']})"
    )
    if lag:
        print(
            f"{'':<44} ticker lag over {lag['n']} ticks: p50 {lag['p50']:.2f}  "
            f"p99 {lag['p99']:.2f}  max {lag['max']:.2f} ms; server process CPU "
            f"{server_cpu:.0f}% of a core"
        )
    return stats["p99"]


async def floor_phase(args: argparse.Namespace) -> None:
    """The same load against a bare ASGI app on the same embedding: this machine's floor."""
    import uvicorn

    from watchdog.api import _bind, _EmbeddedServer

    body = b'{"ok":true}'

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    sock = await _bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(bare, log_config=None, access_log=False, lifespan="off")
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve([sock]))
    await server.ready.wait()
    ticker = Ticker()
    tick_task = asyncio.create_task(ticker.run())
    ticker.start_phase()
    try:
        url = f"http://127.0.0.1:{port}/"
        load = await child("--role", "load", url, str(args.rate), str(args.requests))
        print_phase("0 bare ASGI app (floor), no SSE clients", load, ticker.take())
    finally:
        tick_task.cancel()
        await asyncio.gather(tick_task, return_exceptions=True)
        server.should_exit = True
        await task


async def main_bench(args: argparse.Namespace) -> int:
    from watchdog.api import StatusServer
    from watchdog.bus import EventBus
    from watchdog.config import load_settings
    from watchdog.events import Event, Kind
    from watchdog.monitor import TargetStatus
    from watchdog.probe import ProbeResult, ProbeStatus
    from watchdog.states import TargetState
    from watchdog.store import EventStore

    class Source:
        def statuses(self) -> list[TargetStatus]:
            probe = ProbeResult(ProbeStatus.OK, 0.004, 200, "HTTP 200", time.monotonic())
            return [
                TargetStatus(
                    name=f"target-{n}",
                    state=TargetState.HEALTHY,
                    pid=1000 + n,
                    uptime=3600.0,
                    restarts_in_window=0,
                    restarts_total=1,
                    health_url="http://127.0.0.1:1/health",
                    last_probe=probe,
                    last_event=None,
                    probe_age=0.2,
                )
                for n in range(args.targets)
            ]

    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        store = EventStore(Path(tmp) / "events.db")
        for n in range(args.events):
            store.append(Event.of(f"target-{n % args.targets}", Kind.HEALTHY, f"filler {n}"))
        bus = EventBus(store)
        settings = load_settings(status_port=0, log_path=Path(tmp), status_cache_ttl=2.0)
        server = StatusServer(settings, source=Source(), store=store, bus=bus)
        await server.start()
        ticker = Ticker()
        tick_task = asyncio.create_task(ticker.run())
        base = f"http://127.0.0.1:{server.port}"
        print(
            f"status server on {base}; {args.targets} targets, {store.count()} stored events, "
            f"cache ttl {settings.status_cache_ttl}s"
        )
        ok = True
        await floor_phase(args)
        try:
            ticker.start_phase()
            load = await child(
                "--role", "load", f"{base}/status", str(args.rate), str(args.requests)
            )
            p99 = print_phase("A /status, no SSE clients", load, ticker.take())
            ok &= p99 <= P99_LIMIT_MS

            seconds = args.requests / args.rate + 30
            sse = asyncio.create_task(
                child("--role", "sse", f"{base}/events", str(args.sse_clients), str(seconds))
            )
            await wait_for(lambda: server.hub.count >= args.sse_clients, 30, "SSE clients")
            published = 0

            async def publish() -> None:
                nonlocal published
                while True:
                    await bus.publish(Event.of("target-0", Kind.DEGRADED, f"bench {published}"))
                    published += 1
                    await asyncio.sleep(0.1)

            publisher = asyncio.create_task(publish())
            ticker.start_phase()
            load = await child(
                "--role", "load", f"{base}/status", str(args.rate), str(args.requests)
            )
            lags_b = ticker.take()
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            name = f"B /status, {server.hub.count} SSE clients, 10 ev/s"
            p99 = print_phase(name, load, lags_b)
            ok &= p99 <= P99_LIMIT_MS
            lag_p99 = summary_ms(lags_b)["p99"]

            # let the last events reach every stream, then stop with the streams still open
            await asyncio.sleep(0.3)
            stop_started = time.perf_counter()
            await server.stop()
            stop_s = time.perf_counter() - stop_started
            sse_result = await sse
            received = sse_result["received"]
            print(
                f"{'':<44} {published} events published; each SSE client received "
                f"min {min(received)} / max {max(received)}"
            )
            print(
                f"stop() with {args.sse_clients} SSE streams open: {stop_s * 1000:.0f} ms "
                f"({sse_result['ended_by_server']} streams ended by the server)"
            )
            ok &= min(received) == published
        finally:
            tick_task.cancel()
            await asyncio.gather(tick_task, return_exceptions=True)
            await server.stop()
            await bus.close()

        # Phase C on a fresh server: no cache at all (every request builds the document).
        bus = EventBus(store)
        server = StatusServer(settings, source=Source(), store=store, bus=bus)
        await server.start()
        ticker = Ticker()
        tick_task = asyncio.create_task(ticker.run())
        ticker.start_phase()
        try:
            url = f"http://127.0.0.1:{server.port}/status?fresh=1"
            count = max(50, args.requests // 4)
            load = await child("--role", "load", url, str(args.rate / 4), str(count))
            print_phase("C /status?fresh=1 (uncached), reference", load, ticker.take())
        finally:
            tick_task.cancel()
            await asyncio.gather(tick_task, return_exceptions=True)
            await server.stop()
            await bus.close()
            store.close()
    print(
        f"target: /status p99 <= {P99_LIMIT_MS} ms at {args.rate:.0f}/s, ticker lag p99 with "
        f"SSE clients {lag_p99:.2f} ms -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("main", "load", "sse"), default="main")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load client: raw keep-alive socket (default) or httpx.Client",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase")
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--events", type=int, default=5000, help="events stored up front")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    if args.role == "load":
        url, rate, count = args.rest
        role_load(url, float(rate), int(count), args.client)
        return 0
    if args.role == "sse":
        url, clients, seconds = args.rest
        asyncio.run(_sse_role(url, int(clients), float(seconds)))
        return 0
    if args.requests < 1 or args.requests > 20_000 or args.rate > 2000:
        parser.error("keep it bounded: --requests 1..20000, --rate <= 2000")
    CLIENT[0] = args.client
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; client {args.client}")
    return asyncio.run(main_bench(args))


if __name__ == "__main__":
    sys.exit(main())
