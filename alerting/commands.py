"""``erpwatch silence``, ``erpwatch unsilence``, ``erpwatch test-email`` and
``erpwatch test-alert``."""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alerting import silences
from alerting.lanes import transport_of
from alerting.payloads import PayloadRenderer
from alerting.receivers import Receiver, receivers_from
from alerting.render import Renderer
from alerting.stages import Notification
from alerting.transport import (
    DELIVERY_ERRORS,
    PartlyAccepted,
    SmtpTransport,
    Transport,
    classify,
    transport_for,
)
from watchdog.config import load_settings
from watchdog.events import SYSTEM_TARGET
from watchdog.resources import host_snapshot
from watchdog.settings import Settings

EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_SILENCE = timedelta(days=365)


def register(subparsers: Any) -> None:
    silence = subparsers.add_parser(
        "silence",
        help="hold alert mail about a target for a while",
        description="Hold alert mail about TARGET (events are still recorded). If the target "
        "is still down when the silence ends, the alert goes out then.",
    )
    silence.add_argument("target", nargs="?", help="target name")
    silence.add_argument(
        "--for", dest="duration", help="how long, e.g. 30m, 2h, 1h30m, 1d (at most 365d)"
    )
    silence.add_argument("--reason", default="", help="why (shown in held-alert records)")
    silence.add_argument("--list", action="store_true", help="list active silences")
    silence.add_argument(
        "--force", action="store_true", help="silence TARGET even when no target has that name"
    )
    silence.set_defaults(handler=silence_command)

    unsilence = subparsers.add_parser("unsilence", help="end a target's silence now")
    unsilence.add_argument("target", help="target name")
    unsilence.set_defaults(handler=unsilence_command)

    test = subparsers.add_parser(
        "test-email", help="send a test alert mail with the current settings"
    )
    test.set_defaults(handler=test_email_command)

    test_alert = subparsers.add_parser(
        "test-alert",
        help="send a test notification to every configured receiver (mail, webhooks, ...)",
        description="Send one test notification to each configured receiver (or only those "
        "named) directly, not through the outbox, and print what each answered. Webhooks "
        "get their template's body, Alertmanager an info alert that ends after 5 minutes, "
        "the hook an event of kind test. Exit 1 if any failed.",
    )
    test_alert.add_argument(
        "receivers",
        nargs="*",
        metavar="RECEIVER",
        help="a receiver's name (as alert-sent events give it) or kind: email, webhook, "
        "alertmanager, hook",
    )
    test_alert.set_defaults(handler=test_alert_command)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=5.0)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def parse_silence(text: str) -> timedelta:
    """``--for``: a positive duration of at most `MAX_SILENCE`; `ValueError` with one line."""
    try:
        as_number = float(text)
    except ValueError:
        as_number = None
    if as_number is not None and not math.isfinite(as_number):
        raise ValueError(f"duration {text!r} is not a finite number of seconds")
    too_long = ValueError(
        f"duration {text!r} is too long: at most {MAX_SILENCE.days} days "
        "(`erpwatch unsilence` ends a silence early)"
    )
    try:
        duration = silences.parse_duration(text)
    except OverflowError:
        raise too_long from None
    if duration > MAX_SILENCE:
        raise too_long
    return duration


def _unknown_target(settings: Settings, target: str) -> str | None:
    """Why ``target`` is no configured target (a typo would leave the real one unsilenced).
    With no target configured at all there is nothing to compare with: a note, no refusal."""
    configured = {config.name.lower(): config.name for config in settings.targets_resolved()}
    if not configured:
        print(
            f"erpwatch silence: note: no target is configured here, so {target!r} is not "
            "checked (is this erpwatch's configuration? ERPWATCH_DB_PATH is "
            f"{settings.event_db_path})",
            file=sys.stderr,
        )
        return None
    names = {**configured, SYSTEM_TARGET: SYSTEM_TARGET}  # erpwatch's own alerts too
    if target.lower() in names:
        return None
    known = ", ".join(sorted(names.values()))
    return f"unknown target {target!r} (configured: {known}); --force silences it anyway"


def _usage(message: str) -> int:
    print(f"erpwatch silence: {message}", file=sys.stderr)
    return EXIT_USAGE


def silence_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    now = datetime.now(UTC)
    item: silences.Silence | None = None
    if not args.list:
        if not args.target or not args.duration:
            return _usage("give TARGET and --for DURATION (or --list)")
        try:
            duration = parse_silence(args.duration)
        except ValueError as exc:
            return _usage(str(exc))
        problem = None if args.force else _unknown_target(settings, args.target)
        if problem is not None:
            return _usage(problem)
        item = silences.Silence(args.target, now + duration, args.reason)
    path = settings.event_db_path
    try:
        conn = _connect(path)
    except (OSError, sqlite3.Error) as exc:
        print(f"erpwatch silence: cannot open the event database {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if item is None:
            silences.ensure_schema(conn)
            active = silences.load(conn, now)
            if not active:
                print("no active silences")
            for active_item in active:
                left = int((active_item.until - now).total_seconds())
                print(f"{active_item.describe()}  [{left}s left]")
            return 0
        silences.add(conn, item, now)
        print(f"silenced: {item.describe()}")
        return 0
    except sqlite3.Error as exc:
        print(f"erpwatch silence: cannot use the event database {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        conn.close()


def unsilence_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    conn = _connect(settings.event_db_path)
    try:
        removed = silences.remove(conn, args.target)
    finally:
        conn.close()
    print(f"unsilenced {args.target}" if removed else f"{args.target} was not silenced")
    return 0


def describe_settings(settings: Settings) -> list[str]:
    """What a test mail will use; the password is reported as set or not, never shown."""
    transport = transport_for(settings)
    lines = [f"transport:  {transport.describe()}"]
    if isinstance(transport, SmtpTransport):
        lines.append(f"security:   {transport.security}")
        lines.append(f"username:   {transport.username or '(none)'}")
        lines.append(f"password:   {'set' if settings.smtp_password else 'not set'}")
        if transport.ca_file:
            lines.append(f"ca file:    {transport.ca_file}")
    lines.append(f"from:       {settings.alert_from}")
    lines.append(f"to:         {', '.join(settings.alert_to or [settings.alert_from])}")
    return lines


async def _send(
    transport: Transport, data: bytes, sender: str, recipients: list[str]
) -> tuple[bool, str]:
    """One test, directly (not through the outbox): (sent?, what to tell the user)."""
    try:
        async with transport.session() as session:
            response = await session.send(data, sender, recipients)
    except DELIVERY_ERRORS as exc:  # reported to the user
        error = classify(exc, transport.secrets())
        kind = "permanent" if error.permanent else "transient"
        return False, f"FAILED ({kind}): {error.reason}"
    if isinstance(response, PartlyAccepted):  # some recipients refused: not a pass
        return False, f"FAILED for some recipients: {response}"
    return True, f"sent: {response}"


async def send_test_email(settings: Settings, hostname: str | None = None) -> tuple[bool, str]:
    """Render and send one test mail."""
    renderer = Renderer(
        hostname=hostname or socket.gethostname(),
        sender=settings.alert_from,
        stderr_lines=settings.alert_stderr_lines,
        status_url=str(settings.status_page_url) if settings.status_page_url else None,
        template_dir=settings.alert_template_dir,
        snapshot=lambda: host_snapshot([settings.log_path]),
    )
    recipients = list(settings.alert_to or [settings.alert_from])
    mail = renderer.render(Notification("test", "erpwatch", recipients), datetime.now(UTC))
    return await _send(transport_for(settings), mail.data, settings.alert_from, recipients)


async def send_test(
    settings: Settings, receiver: Receiver, hostname: str | None = None
) -> tuple[bool, str]:
    """Render and send one test notification to ``receiver``, as its lane would."""
    hostname = hostname or socket.gethostname()
    if receiver.kind == "email":
        return await send_test_email(settings, hostname)
    payloads = PayloadRenderer(
        hostname=hostname,
        status_url=str(settings.status_page_url) if settings.status_page_url else None,
        template_dir=settings.alert_template_dir,
    )
    data = payloads.test(receiver, datetime.now(UTC))
    transport = transport_of(receiver, settings, lambda: datetime.now(UTC))
    return await _send(transport, data, settings.alert_from, [])


def choose_receivers(
    receivers: list[Receiver], wanted: list[str]
) -> tuple[list[Receiver], list[str]]:
    """The receivers named (by name or kind; all when none is) and the words matching none."""
    if not wanted:
        return receivers, []
    unknown = [w for w in wanted if not any(w in (r.name, r.kind) for r in receivers)]
    return [r for r in receivers if r.name in wanted or r.kind in wanted], unknown


def test_email_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    for line in describe_settings(settings):
        print(line)
    ok, result = asyncio.run(send_test_email(settings))
    print(result)
    return 0 if ok else EXIT_FAILED


def test_alert_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    receivers, unknown = choose_receivers(receivers_from(settings), args.receivers)
    if unknown:
        known = ", ".join(r.name for r in receivers_from(settings))
        print(
            f"erpwatch test-alert: no receiver {', '.join(map(repr, unknown))} "
            f"(configured: {known})",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def send_all() -> bool:
        ok = True
        for receiver in receivers:
            sent, result = await send_test(settings, receiver)
            print(f"{receiver.name}: {result}", flush=True)
            ok = ok and sent
        return ok

    return 0 if asyncio.run(send_all()) else EXIT_FAILED
