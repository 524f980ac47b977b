"""A tiny sd_notify client: tell systemd we are ready, alive, or stopping.

The protocol is one ``AF_UNIX`` datagram of newline-separated ``KEY=value`` assignments sent to
the socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace).
Outside systemd the variable is unset and every function here is a no-op returning False.

The watchdog ping (``WATCHDOG=1``) must come from the event loop that does the real work, so a
blocked loop stops the pings and systemd restarts us: run `keepalive` as a task in that loop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

from watchdog.clock import Clock

logger = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def _socket_address(env: Mapping[str, str]) -> str | None:
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if not address.startswith("/"):
        logger.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying", address)
        return None
    return address


def notify(message: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1\\nSTATUS=supervising 2 targets"``) to systemd.

    Returns True when sent, False when ``NOTIFY_SOCKET`` is unset or sending failed (the failure
    is logged: a lost notification must not take the watchdog down).
    """
    address = _socket_address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        logger.warning("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
        return False
    return True


def ready(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (with an optional ``STATUS=`` line): start-up is complete."""
    return notify(READY if status is None else f"{READY}\nSTATUS={_one_line(status)}", env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """``STATUS=...``: the free-form line ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}", env=env)


def watchdog_ping(*, env: Mapping[str, str] | None = None) -> bool:
    """``WATCHDOG=1``: we are alive; systemd restarts us when these stop for ``WatchdogSec``."""
    return notify(WATCHDOG, env=env)


def stopping(status: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1``: shutdown has begun."""
    message = STOPPING if status is None else f"{STOPPING}\nSTATUS={_one_line(status)}"
    return notify(message, env=env)


def watchdog_timeout(*, env: Mapping[str, str] | None = None) -> float | None:
    """systemd's watchdog timeout in seconds (``WATCHDOG_USEC``), None when not enabled.

    Like ``sd_watchdog_enabled()``: when ``WATCHDOG_PID`` is set it must name this process.
    """
    values = os.environ if env is None else env
    usec = values.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = values.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        timeout = int(usec) / 1_000_000
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r is not an integer; watchdog pings disabled", usec)
        return None
    return timeout if timeout > 0 else None


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``WATCHDOG_USEC``; None when not enabled."""
    timeout = watchdog_timeout(env=env)
    return None if timeout is None else timeout / 2


async def keepalive(
    clock: Clock,
    *,
    alive: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
    recheck: float | None = None,
) -> None:
    """Ping systemd every `watchdog_interval` until cancelled; returns at once if disabled.

    ``alive`` (optional) is asked before each ping; when it returns False (or raises) the ping
    is withheld, so a wedged supervisor (not just a wedged loop) also gets us restarted. After
    a withheld ping it is asked again every ``recheck`` seconds (default: a tenth of the
    interval), so a short trouble does not cost a whole interval: a single withheld ping
    already leaves systemd's whole timeout between two pings.
    """
    interval = watchdog_interval(env=env)
    if interval is None:
        return
    retry = interval / 10 if recheck is None else min(max(recheck, 0.0), interval)
    withheld = False
    while True:
        ok = _ask(alive)
        if ok:
            if withheld:
                logger.info("liveness check passes again; resuming the systemd watchdog ping")
            watchdog_ping(env=env)
        elif not withheld:
            logger.warning("liveness check failed; withholding the systemd watchdog ping")
        withheld = not ok
        await clock.sleep(retry if withheld else interval)


def _ask(alive: Callable[[], bool] | None) -> bool:
    if alive is None:
        return True
    try:
        return bool(alive())
    except Exception as exc:
        logger.warning("liveness check raised %r; counting it as failed", exc)
        return False


def _one_line(text: str) -> str:
    return " ".join(text.split())
