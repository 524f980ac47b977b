"""A sample ERP backend: a health endpoint plus switchable faults. Stdlib only, starts fast.

    python -m watchdog.demo.backend --port P [--host 127.0.0.1] [--fault-file PATH]
        [--spawn-grandchild] [--grandchild-setsid] [--ignore-sigterm] [--crash-after SECONDS]

GET  /health          200 {"status": "ok"} (or the current fault's behaviour)
GET  /status          {"pid", "uptime", "fault"}
POST /fault/crash     answers, writes a FATAL line to stderr, exits with code 3
POST /fault/hang      /health stops answering (its handler blocks) until recover
POST /fault/degrade   /health answers 200 {"status": "degraded"}
POST /fault/slow?seconds=X   /health answers after X seconds
POST /fault/recover   back to ok

``--fault-file``: read on every /health; a non-empty content (``crash``, ``hang``, ``degrade``,
``slow:2.5``) overrides the HTTP switch, so a fault can persist across restarts.
Prints ``LISTENING <port>`` (and ``GRANDCHILD <pid>``) on stdout once ready (``--port 0`` works).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import parse_qs, urlsplit

CRASH_EXIT_CODE = 3
CRASH_LINE = "FATAL: simulated crash (demo fault)"
FAULTS = ("ok", "crash", "hang", "degrade", "slow")


def crash() -> None:
    sys.stdout.flush()
    sys.stderr.write(CRASH_LINE + "\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)  # at once, like a real crash: no cleanup, threads or not


class Faults:
    """The current fault, switched over HTTP or read from the fault file."""

    def __init__(self, fault_file: Path | None) -> None:
        self.fault_file = fault_file
        self._mode = "ok"
        self._slow = 0.0
        self._changed = threading.Condition()

    def set(self, mode: str, slow: float = 0.0) -> None:
        with self._changed:
            self._mode, self._slow = mode, slow
            self._changed.notify_all()
        print(f"fault: {mode}" + (f" {slow}s" if mode == "slow" else ""), file=sys.stderr)

    def current(self) -> tuple[str, float]:
        if self.fault_file is not None:
            try:
                text = self.fault_file.read_text().strip().lower()
            except FileNotFoundError:
                text = ""
            if text:
                mode, _, seconds = text.partition(":")
                return (mode if mode in FAULTS else "ok"), float(seconds or 0)
        with self._changed:
            return self._mode, self._slow

    def wait_while_hung(self) -> None:
        """Block while the fault is "hang"; an HTTP recover wakes us, the file is re-read."""
        with self._changed:
            while self.current()[0] == "hang":
                self._changed.wait(timeout=0.5)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a shared probe client reuses connections
    server: Backend

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self._health()
        elif path == "/status":
            uptime = time.monotonic() - self.server.started
            fault = self.server.faults.current()[0]
            self._json(200, {"pid": os.getpid(), "uptime": round(uptime, 3), "fault": fault})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        fault = url.path.removeprefix("/fault/")
        if not url.path.startswith("/fault/") or fault not in (*FAULTS, "recover"):
            self._json(404, {"error": "not found"})
            return
        if fault == "crash":
            self._json(200, {"fault": "crash"})
            crash()
        seconds = float(parse_qs(url.query).get("seconds", ["1"])[0])
        self.server.faults.set("ok" if fault == "recover" else fault, seconds)
        self._json(200, {"fault": fault})

    def _health(self) -> None:
        mode, seconds = self.server.faults.current()
        if mode == "crash":
            crash()
        elif mode == "hang":
            self.server.faults.wait_while_hung()
            mode, seconds = self.server.faults.current()
        if mode == "slow":
            time.sleep(seconds)
        self._json(200, {"status": "degraded" if mode == "degrade" else "ok"})

    def _json(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the prober gave up (timeout); nothing to answer

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log: probes every second would bury the interesting stderr lines."""


class Backend(ThreadingHTTPServer):
    daemon_threads = True  # hung handlers must not keep the process alive

    def __init__(self, address: tuple[str, int], faults: Faults) -> None:
        super().__init__(address, Handler)
        self.faults = faults
        self.started = time.monotonic()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    print("received SIGTERM, shutting down", file=sys.stderr, flush=True)
    raise SystemExit(0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m watchdog.demo.backend")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fault-file", type=Path)
    parser.add_argument("--spawn-grandchild", action="store_true")
    parser.add_argument("--grandchild-setsid", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--crash-after", type=float, metavar="SECONDS")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else _on_sigterm)
    server = Backend((args.host, args.port), Faults(args.fault_file))
    if args.spawn_grandchild:
        grandchild = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            start_new_session=args.grandchild_setsid,
        )
        print(f"GRANDCHILD {grandchild.pid}", flush=True)
    if args.crash_after is not None:
        timer = threading.Timer(args.crash_after, crash)
        timer.daemon = True
        timer.start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
