"""The hook transport: ``ERPWATCH_HOOK_COMMAND`` run for an event, never through a shell.

The event arrives as JSON on stdin and as ``ERPWATCH_EVENT_*`` variables (ID, TS, TARGET,
HOST, KIND, SEVERITY, MESSAGE). The command inherits erpwatch's environment *without* any
``ERPWATCH_*`` setting (SMTP password, status token, webhook secrets) and without systemd's
per-service variables. It runs in erpwatch's log directory, in a process group of its own
(killed whole on a timeout) inside erpwatch's session, so the stray reaper leaves its exit
status to us.

Outcome, in the outbox's terms:

* exit 0 — done (``alert-sent`` with the exit status and the output's tail);
* exit 75 (``EX_TEMPFAIL``), a run past ``ERPWATCH_HOOK_TIMEOUT`` (its whole process group
  is killed) or a start that failed for want of resources (EMFILE, EAGAIN, ENOMEM) —
  transient: retried with the outbox's backoff;
* any other exit, or a command that cannot be run at all (not found, not executable) —
  permanent: a dead letter and an ``alert-failed`` event with the exit status and output.

stdout and stderr are read together into a bounded tail (`OUTPUT_TAIL_BYTES`); a hook that
writes without end is read and discarded, never buffered. The hook's exit is seen through a
pidfd, never through its output's EOF, which a process it left behind could hold open; once
it has exited, what it left running in its process group is killed (as systemd does for a
oneshot service), so a hook leaves nothing behind that nobody waits for.

While it runs, the hook is recorded in the children ledger (`watchdog.leftovers.HookLedger`):
if erpwatch dies meanwhile (SIGKILL, OOM), the next run ends it before retrying it.

A hung hook delays only the hook's own outbox lane: supervision, mail and webhooks run in
their own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alerting.receivers import Receiver
from alerting.render import Mail
from alerting.transport import ConnectionlessSession, DeliveryError
from watchdog.process import inherited_environment, wait_exit

if TYPE_CHECKING:
    from watchdog.leftovers import HookLedger

EX_TEMPFAIL = 75
OUTPUT_TAIL_BYTES = 2048
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})
_READ_CHUNK = 65536


def hook_environment(event: dict[str, object]) -> dict[str, str]:
    env = inherited_environment()
    for key in ("id", "ts", "target", "host", "kind", "severity", "message"):
        value = event.get(key)
        env[f"ERPWATCH_EVENT_{key.upper()}"] = "" if value is None else str(value)[:4096]
    return env


def tail_text(data: bytes) -> str:
    return data[-OUTPUT_TAIL_BYTES:].decode("utf-8", "replace").strip()


class HookTransport:
    noun = "hook"
    receiver = "hook"

    def __init__(
        self,
        receiver: Receiver,
        *,
        timeout: float,
        workdir: Path,
        ledger: HookLedger | None = None,
    ) -> None:
        self.argv = receiver.argv
        self.timeout = timeout
        self.workdir = workdir
        self.ledger = ledger  # None: not recorded (`erpwatch test-alert`)

    def describe(self) -> str:
        return f"hook {self.argv[0]}"

    def secrets(self) -> list[str]:
        return []

    def sent_text(self, mail: Mail, response: str) -> str:
        return f"hook {self.argv[0]} ran for {mail.subject[:120]}: {response}"

    def session(self) -> _HookSession:
        return _HookSession(self)


class _HookSession(ConnectionlessSession):
    def __init__(self, transport: HookTransport) -> None:
        self._transport = transport

    async def send(self, data: bytes, sender: str, recipients: Sequence[str]) -> str:
        transport = self._transport
        env = hook_environment(json.loads(data))
        with contextlib.suppress(OSError):
            transport.workdir.mkdir(parents=True, exist_ok=True)
        try:
            proc, output = self._spawn(data, env)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            raise DeliveryError(
                f"hook {transport.argv[0]} could not start ({name}: {exc.strerror or exc})",
                permanent=exc.errno not in _RESOURCE_ERRNOS,
                whole_batch=exc.errno in _RESOURCE_ERRNOS,
            ) from None
        tail = _Tail()
        loop = asyncio.get_running_loop()
        try:
            if transport.ledger is not None:
                await transport.ledger.spawned(proc.pid, transport.argv)
            loop.add_reader(output, tail.read, output)
            try:
                async with asyncio.timeout(transport.timeout):
                    code: int | None = await wait_exit(proc)
            except TimeoutError:
                code = None
        finally:
            _kill_group(proc.pid)  # the hook, or what it left behind in its group
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(output)
            tail.read(output)  # what it wrote just before the end
            os.close(output)
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 5)
            if transport.ledger is not None:
                await transport.ledger.ended()
        text = tail_text(bytes(tail.kept))
        shown = f"; output: {text[-300:]}" if text else ""
        if code is None:
            raise DeliveryError(
                f"hook timed out after {transport.timeout:g}s (process group killed){shown}",
                permanent=False,
                whole_batch=False,
            )
        if code == 0:
            return f"exit 0{shown}"
        status = f"killed by {_signal_name(-code)}" if code < 0 else f"exit {code}"
        raise DeliveryError(
            f"hook {status}{shown}", permanent=code != EX_TEMPFAIL, whole_batch=False
        )

    def _spawn(self, data: bytes, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
        """Start the hook: stdin an in-memory file holding the event, stdout and stderr one
        pipe; returns the process and the pipe's read end (non-blocking)."""
        transport = self._transport
        stdin = os.memfd_create("erpwatch-hook-event", os.MFD_CLOEXEC)
        try:
            os.write(stdin, data)
            os.lseek(stdin, 0, os.SEEK_SET)
            read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                proc = subprocess.Popen(
                    transport.argv,
                    stdin=stdin,
                    stdout=write_end,
                    stderr=write_end,
                    env=env,
                    cwd=transport.workdir if transport.workdir.is_dir() else None,
                    process_group=0,  # its own group (killed whole), in our session
                    close_fds=True,
                )
            except BaseException:
                os.close(read_end)
                raise
            finally:
                os.close(write_end)
        finally:
            os.close(stdin)
        return proc, read_end


class _Tail:
    """The last `OUTPUT_TAIL_BYTES` of what the hook wrote; the rest is discarded."""

    def __init__(self) -> None:
        self.kept = bytearray()

    def read(self, fd: int) -> None:
        for _ in range(16):  # bounded work per loop turn; the loop calls again if more
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not chunk:
                return
            self.kept.extend(chunk)
            del self.kept[: max(len(self.kept) - OUTPUT_TAIL_BYTES, 0)]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
