"""A real SMTP server on loopback (aiosmtpd), a real SQLite event store, a self-signed cert."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.helpers import free_port
from watchdog.bus import EventBus
from watchdog.config import load_settings
from watchdog.settings import Settings
from watchdog.store import EventStore

USER = "alerts"
PASSWORD = "s3cr3t-Pa55word-never-shown"


@dataclass
class Recorder:
    """aiosmtpd handler: keeps every accepted message; ``reply`` overrides the DATA answer."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    reply: str | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply is not None:
            return self.reply
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


class SmtpServer:
    """Start/stop an aiosmtpd Controller on a fixed loopback port (port=0 is broken there)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.recorder = Recorder()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[EmailMessage]:
        return self.recorder.messages

    def start(self, *, tls: ssl.SSLContext | None = None, auth: bool = False) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs.update(tls_context=tls, require_starttls=True)
        if auth:
            kwargs.update(authenticator=_authenticator, auth_required=True)
        self._controller = Controller(
            self.recorder, hostname="127.0.0.1", port=self.port, ready_timeout=5, **kwargs
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI); it is its own CA file."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def server_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    events = EventStore(tmp_path / "erpwatch.db")
    yield events
    events.close()


@pytest.fixture
async def bus(store: EventStore) -> AsyncIterator[EventBus]:
    events = EventBus(store)
    yield events
    await events.close()


def make_settings(tmp_path: Path, smtp: SmtpServer | None, **overrides: Any) -> Settings:
    """Alerting settings for a test: short group wait and recovery, SMTP on ``smtp``."""
    values: dict[str, Any] = {
        "log_path": tmp_path / "logs",
        "db_path": tmp_path / "erpwatch.db",
        "alert_to": ["ops@example.com"],
        "alert_from": "erpwatch@example.com",
        "alert_group_wait": 0.05,
        "alert_recovery_after": 0.2,
    }
    if smtp is not None:
        values.update(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none")
    values.update(overrides)
    return load_settings(**values)


REPO = Path(__file__).resolve().parents[2]


def spawn_alerting(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """Start ``alert_process.py`` (the alert service alone) and wait until it is ready."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "alerting" / "alert_process.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill_alerting(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
