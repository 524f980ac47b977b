"""erpwatch's memory under a hostile /health: a 100 MB body, an endless chunked body and a
trickling one (a script, not a test). The server runs in a child process so that only the
prober's memory is measured here (RSS of this process, psutil).

    .venv/bin/python bench/bench_probe_rss.py            # prints RSS before/after per case

Loopback only; fixed counts; stops by itself.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watchdog.clock import RealClock
from watchdog.probe import Prober, make_client

SERVER = textwrap.dedent(
    """
    import asyncio, sys

    async def serve(reader, writer):
        try:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            path = head.split(b" ")[1]
            if path == b"/big":
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % (100 * 2**20))
                block = b"x" * 65536
                for _ in range(1600):
                    writer.write(block); await writer.drain()
            elif path == b"/endless":
                writer.write(b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
                block = b"10000\\r\\n" + b"y" * 65536 + b"\\r\\n"
                while True:
                    writer.write(block); await writer.drain()
            else:  # /trickle: one byte every 50 ms, for ever
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 100000000\\r\\n\\r\\n")
                while True:
                    writer.write(b"z"); await writer.drain(); await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
    """
)
CHECKS = 20


def rss_mib() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


async def measure(port: int) -> list[tuple[str, float, float]]:
    rows = []
    async with make_client(max_connections=2) as client:
        for case, timeout in (("big", 10.0), ("endless", 10.0), ("trickle", 1.0)):
            prober = Prober(
                f"http://127.0.0.1:{port}/{case}",
                timeout=timeout,
                degraded_latency=10.0,
                client=client,
                clock=RealClock(),
            )
            await prober.check()  # warm-up: imports, connection pool
            before = rss_mib()
            for _ in range(CHECKS):
                await prober.check()
            rows.append((case, before, rss_mib()))
    return rows


def main() -> int:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        start = rss_mib()
        rows = asyncio.run(asyncio.wait_for(measure(port), 300))
    finally:
        server.kill()
        server.wait(10)
    print(f"RSS at start {start:.1f} MiB; {CHECKS} checks per case (64 KiB read cap):")
    for case, before, after in rows:
        print(
            f"  {case:8s} RSS {before:6.1f} -> {after:6.1f} MiB (growth {after - before:+.1f} MiB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
