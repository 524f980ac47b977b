"""``erpwatch silence``, ``erpwatch unsilence`` and ``erpwatch test-email``."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib

from alerting import silences
from alerting.render import Renderer
from alerting.stages import Notification
from alerting.transport import SmtpTransport, classify, transport_for
from watchdog.config import Settings, load_settings
from watchdog.resources import host_snapshot

EXIT_FAILED = 1


def register(subparsers: Any) -> None:
    silence = subparsers.add_parser(
        "silence",
        help="hold alert mail about a target for a while",
        description="Hold alert mail about TARGET (events are still recorded). If the target "
        "is still down when the silence ends, the alert goes out then.",
    )
    silence.add_argument("target", nargs="?", help="target name")
    silence.add_argument("--for", dest="duration", help="how long, e.g. 30m, 2h, 1h30m, 1d")
    silence.add_argument("--reason", default="", help="why (shown in held-alert records)")
    silence.add_argument("--list", action="store_true", help="list active silences")
    silence.set_defaults(handler=silence_command)

    unsilence = subparsers.add_parser("unsilence", help="end a target's silence now")
    unsilence.add_argument("target", help="target name")
    unsilence.set_defaults(handler=unsilence_command)

    test = subparsers.add_parser(
        "test-email", help="send a test alert mail with the current settings"
    )
    test.set_defaults(handler=test_email_command)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=5.0)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def silence_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    now = datetime.now(UTC)
    conn = _connect(settings.event_db_path)
    try:
        if args.list:
            silences.ensure_schema(conn)
            active = silences.load(conn, now)
            if not active:
                print("no active silences")
            for item in active:
                left = int((item.until - now).total_seconds())
                print(f"{item.describe()}  [{left}s left]")
            return 0
        if not args.target or not args.duration:
            print("erpwatch silence: give TARGET and --for DURATION (or --list)")
            return 2
        try:
            duration = silences.parse_duration(args.duration)
        except ValueError as exc:
            print(f"erpwatch silence: {exc}")
            return 2
        item = silences.Silence(args.target, now + duration, args.reason)
        silences.add(conn, item, now)
        print(f"silenced: {item.describe()}")
        return 0
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


async def send_test_email(settings: Settings, hostname: str | None = None) -> tuple[bool, str]:
    """Render and send one test mail directly (not through the outbox)."""
    transport = transport_for(settings)
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
    try:
        async with transport.session() as session:
            response = await session.send(mail.data, settings.alert_from, recipients)
    except (aiosmtplib.SMTPException, OSError, ValueError) as exc:  # reported to the user
        error = classify(exc, transport.secrets())
        kind = "permanent" if error.permanent else "transient"
        return False, f"FAILED ({kind}): {error.reason}"
    return True, f"sent: {response}"


def test_email_command(args: argparse.Namespace) -> int:
    settings = load_settings()
    for line in describe_settings(settings):
        print(line)
    ok, result = asyncio.run(send_test_email(settings))
    print(result)
    return 0 if ok else EXIT_FAILED
