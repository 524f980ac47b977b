"""Probe latency on loopback (a script, not a test: the figures depend on the machine's load).

Starts a keep-alive HTTP server on 127.0.0.1 in this process (it shares the event loop, so
the figures include its share of the CPU) and times `watchdog.probe.Prober.check`:

- one prober, sequential checks on a kept-alive connection;
- 50 probers sharing one client, all checking at once, for a few rounds (the case
  tests/watchdog/test_probe.py::test_many_probers_share_one_client covers for correctness);
- the same 50 probers with one small client each (``make_client(max_connections=2)``);
- one check of a 100 MiB body, which reads only the first 64 KiB;
- CPU time per check (this process's, sequential checks against a server in another
  process, `bench/scale_backend.py`): erpwatch's client (`make_client`: h11 on asyncio)
  beside a plain ``httpx.AsyncClient`` (httpcore's pool on anyio) in the same run: the cost
  that decides how many targets one core can check every second.

Prints min / median / p99 / max per case and stops by itself (fixed counts, 120 s cap).

    .venv/bin/python -m bench.bench_probe
    .venv/bin/python bench/bench_probe.py --checks 500 --rounds 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

# `python bench/<this>.py` works as well as `python -m bench.<this>`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watchdog.clock import RealClock
from watchdog.probe import Prober, ProbeStatus, make_client

BODY = b'{"status": "ok"}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
BIG = 100 * 2**20
PROBERS = 50
TOTAL_BUDGET_S = 120.0


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``/big`` answers with a 100 MiB body, anything else with a small JSON document."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if not head.startswith(b"GET /big"):
                writer.write(ANSWER)
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            block = b"x" * 2**16
            for _ in range(BIG // len(block)):
                writer.write(block)
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client closed the connection
    finally:
        writer.close()


def stats(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


def prober(url: str, client: Any) -> Prober:
    return Prober(url, timeout=10.0, degraded_latency=10.0, client=client, clock=RealClock())


def start_backend() -> tuple[subprocess.Popen[bytes], str]:
    """`bench/scale_backend.py` with one health URL, in its own process."""
    backend = subprocess.Popen(
        [sys.executable, "-m", "bench.scale_backend", "--count", "1", "--out", "/dev/null"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert backend.stdout is not None
    port = json.loads(backend.stdout.readline())[0]
    return backend, f"http://127.0.0.1:{port}/health"


async def cpu_per_check(url: str, checks: int) -> dict[str, float]:
    """Milliseconds of this process's CPU per sequential check, for each client."""
    result: dict[str, float] = {}
    clients: list[tuple[str, Any]] = [
        ("erpwatch", make_client(max_connections=2)),
        ("httpx_default", httpx.AsyncClient(trust_env=False, follow_redirects=False)),
    ]
    for name, client in clients:
        async with client:
            check = prober(url, client)
            for _ in range(50):  # warm: connection open, code paths taken
                await check.check()
            began = time.process_time()
            for _ in range(checks):
                await check.check()
            result[name] = (time.process_time() - began) / checks * 1000
    return result


async def run(checks: int, rounds: int, other_process_url: str) -> dict[str, Any]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    failures: list[str] = []
    figures: dict[str, Any] = {}

    def latencies(results: list[Any]) -> list[float]:
        failures.extend(r.reason for r in results if r.status is not ProbeStatus.OK)
        return [r.latency for r in results]

    try:
        async with make_client(max_connections=2) as client:
            one = prober(f"{url}/health", client)
            await one.check()  # opens the connection
            figures["sequential"] = stats(latencies([await one.check() for _ in range(checks)]))
            big = await prober(f"{url}/big", client).check()
            figures["body_100MiB"] = stats(latencies([big]))
        async with make_client(max_connections=PROBERS) as shared:
            many = [prober(f"{url}/health", shared) for _ in range(PROBERS)]
            samples: list[float] = []
            for _ in range(rounds):
                samples += latencies(list(await asyncio.gather(*(p.check() for p in many))))
            figures["shared_client"] = stats(samples)
        clients = [make_client(max_connections=2) for _ in range(PROBERS)]
        try:
            own = [prober(f"{url}/health", c) for c in clients]
            samples = []
            for _ in range(rounds):
                samples += latencies(list(await asyncio.gather(*(p.check() for p in own))))
            figures["client_each"] = stats(samples)
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
    finally:
        server.close()
    figures["cpu_ms_per_check"] = await cpu_per_check(other_process_url, max(checks, 2000))
    figures["failures"] = failures[:10]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checks", type=int, default=200, help="sequential checks")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the 50 probers")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    async def bounded(url: str) -> dict[str, Any]:
        async with asyncio.timeout(TOTAL_BUDGET_S):
            return await run(args.checks, args.rounds, url)

    backend, url = start_backend()
    try:
        figures = asyncio.run(bounded(url))
    finally:
        backend.terminate()
        backend.wait(timeout=10)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, label in (
            ("sequential", "one prober, sequential"),
            ("shared_client", f"{PROBERS} probers at once, one shared client"),
            ("client_each", f"{PROBERS} probers at once, a client each"),
            ("body_100MiB", "one check of a 100 MiB body (64 KiB read)"),
        ):
            s = figures[key]
            print(
                f"{label} ({s['n']} checks): min {s['min'] * 1000:.2f} ms, "
                f"median {s['median'] * 1000:.2f} ms, p99 {s['p99'] * 1000:.2f} ms, "
                f"max {s['max'] * 1000:.2f} ms"
            )
        cpu = figures["cpu_ms_per_check"]
        print(
            f"CPU per check (sequential, server in another process): erpwatch's client "
            f"{cpu['erpwatch']:.3f} ms, httpx.AsyncClient (httpcore) {cpu['httpx_default']:.3f} ms"
        )
        for failure in figures["failures"]:
            print(f"failure: {failure}")
    return 1 if figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
