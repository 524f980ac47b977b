"""The local control socket: `erpwatch restart|stop|start|reload` reach the running erpwatch.

A Unix socket (``ERPWATCH_CONTROL_SOCKET``, default ``LOG_PATH/erpwatch.sock``) created mode
0600, so only its owner (and root) can use it. A stale socket file left by a killed run is
replaced; one that still answers means another erpwatch runs for this configuration, and
start-up refuses rather than steal it.

Protocol: one JSON object per line each way.

    → {"command": "restart", "targets": ["backend"], "reason": "deploy"}
    ← {"ok": true, "results": [{"target": "backend", "ok": true, "message": "restarted, pid 4242"}]}

``command`` is ``restart``, ``stop``, ``start`` (``targets`` empty = all) or ``reload``; a
refusal is ``{"ok": false, "error": "…"}``. The peer's Unix user (SO_PEERCRED) becomes the
actor recorded in the events: ``operator (alice)``.

At most `MAX_CLIENTS` connections are served at once (each for at most `READ_TIMEOUT` before
its line is in); one more is answered ``{"ok": false, "error": "busy: …"}`` and closed, so a
flood of clients that connect and send nothing cannot take erpwatch's descriptors (EMFILE
fails its own workers, and then the systemd ping is withheld).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
READ_TIMEOUT = 10.0
MAX_CLIENTS = 32  # served at once; one more is answered "busy" and closed
COMMANDS = frozenset({"restart", "stop", "start", "reload"})
_BUSY = f"busy: {MAX_CLIENTS} control clients at once; try again"


class ControlError(RuntimeError):
    """The control socket cannot be set up (another erpwatch owns it, a file in the way)."""


class NotRunning(ConnectionError):
    """No erpwatch answers on the control socket."""


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int | None
    uid: int | None
    user: str | None

    @property
    def actor(self) -> str:
        return f"operator ({self.user})" if self.user else "operator"


Handler = Callable[[Mapping[str, Any], Peer], Awaitable[dict[str, Any]]]


def peer_of(sock: socket.socket | None) -> Peer:
    """Who is on the other end of a Unix socket (Linux SO_PEERCRED)."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return Peer(None, None, None)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    except OSError:
        return Peer(None, None, None)
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Peer(pid, uid, user)


def validate(request: object) -> dict[str, Any]:
    """The request as a dict, or ValueError naming what is wrong."""
    if not isinstance(request, dict):
        raise ValueError("the request must be a JSON object")
    command = request.get("command")
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r} (expected one of {sorted(COMMANDS)})")
    targets = request.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError("targets must be a list of names")
    reason = request.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ValueError("reason must be a text of at most 500 characters")
    return {"command": command, "targets": targets, "reason": reason}


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._clients = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._clear_stale()
        old_umask = os.umask(0o177)  # the socket is created 0600: no window for others
        try:
            with _short_path(self.path) as address:
                self._server = await asyncio.start_unix_server(
                    self._serve_client, path=address, limit=MAX_REQUEST
                )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino
        log.info("control socket on %s", self.path)

    async def _clear_stale(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{self.path} exists and is not a socket; not replacing it")
        if await asyncio.to_thread(_answers, self.path):
            raise ControlError(f"another erpwatch is running with the control socket {self.path}")
        log.info("replacing the stale control socket %s (left by a killed run)", self.path)
        self.path.unlink()

    async def ensure_bound(self) -> bool:
        """Bind the socket again when its file is gone (``rm -rf LOG_PATH`` took it):
        ``erpwatch ctl`` would find nothing until erpwatch restarts. Something else put at
        the path since is left alone. True when it was bound again; erpwatch calls this
        every few seconds, so a failure (EMFILE, a full disk) is logged and tried again."""
        if self._server is None:
            return False
        try:
            self.path.lstat()
            return False
        except FileNotFoundError:
            pass
        except OSError:
            return False
        old, self._server = self._server, None
        old.close()  # clients already connected are served to the end
        try:
            await self.start()
        except (OSError, ControlError) as exc:
            self._server = old  # closed: kept so that the next call tries again, stop() too
            log.warning("control socket %s is gone and cannot be made again: %s", self.path, exc)
            return False
        log.warning("control socket %s was deleted; listening there again", self.path)
        return True

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:  # still ours, not a newer run's
                self.path.unlink()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._clients >= MAX_CLIENTS:
            log.warning("control: %d clients at once; refusing one more", self._clients)
            writer.write(json.dumps({"ok": False, "error": _BUSY}).encode() + b"\n")
            writer.close()  # the answer fits the socket buffer: close() sends it
            return
        self._clients += 1
        try:
            await self._serve(reader, writer)
        finally:
            self._clients -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_of(writer.get_extra_info("socket"))
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            try:
                request = validate(json.loads(line))
            except ValueError as exc:  # includes JSONDecodeError
                response: dict[str, Any] = {"ok": False, "error": str(exc)}
            else:
                log.info(
                    "control: %s %s by %s",
                    request["command"],
                    ", ".join(request["targets"]) or "(all)",
                    peer.actor,
                )
                response = await self._handler(request, peer)
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.warning("control: a client went wrong: %s", exc)
        except Exception:
            log.exception("control: request failed")
            with contextlib.suppress(Exception):
                writer.write(json.dumps({"ok": False, "error": "internal error"}).encode() + b"\n")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """An address for ``path`` within AF_UNIX's 108 bytes: a long path is reached through
    its directory's descriptor (``/proc/self/fd/N/name``)."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _connect(sock: socket.socket, path: Path) -> None:
    with _short_path(path) as address:
        sock.connect(address)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            _connect(sock, path)
        except OSError:
            return False
    return True


def call(path: Path, request: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one request and wait for its answer (blocking: for the CLI).

    Raises `NotRunning` when nothing listens on ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            _connect(sock, path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise NotRunning(f"no erpwatch is running (no answer on {path})") from exc
            raise
        sock.sendall(json.dumps(dict(request)).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise NotRunning(f"erpwatch closed the control socket {path} without answering")
    answer: dict[str, Any] = json.loads(data)
    return answer
