"""Mail transports: SMTP (aiosmtplib, one connection per batch) or ``.eml`` files.

`classify` sorts failures into transient (retry with backoff) and permanent (dead letter).
The password is only ever handed to aiosmtplib; `describe` and every message built here
leave it out.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

import aiosmtplib

from watchdog.config import Settings

DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}


class DeliveryError(Exception):
    """A failed delivery, already classified; ``str()`` is safe to log and mail."""

    def __init__(self, reason: str, *, permanent: bool, whole_batch: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.whole_batch = whole_batch  # the connection is unusable, not just this message


def classify(exc: BaseException, secrets: Sequence[str] = ()) -> DeliveryError:
    """Transient: connection refused/reset, timeouts, 4xx. Permanent: auth refused, 5xx,
    TLS verification or a server without STARTTLS (configuration errors)."""
    reason = f"{type(exc).__name__}: {exc}"
    for secret in secrets:
        if secret:
            reason = reason.replace(secret, "***")
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return DeliveryError(f"authentication refused ({reason})", permanent=True, whole_batch=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        permanent = bool(codes) and all(code >= 500 for code in codes)
        return DeliveryError(reason, permanent=permanent, whole_batch=False)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        permanent = exc.code >= 500
        return DeliveryError(reason, permanent=permanent, whole_batch=False)
    if isinstance(exc, aiosmtplib.SMTPNotSupported | ssl.SSLCertVerificationError):
        return DeliveryError(reason, permanent=True, whole_batch=True)
    if isinstance(exc, aiosmtplib.SMTPException | OSError | asyncio.TimeoutError):
        return DeliveryError(reason, permanent=False, whole_batch=True)
    return DeliveryError(reason, permanent=False, whole_batch=True)


class Session(Protocol):
    async def send(self, data: bytes, sender: str, recipients: Sequence[str]) -> str: ...


class Transport(Protocol):
    def describe(self) -> str: ...

    def session(self) -> SessionContext: ...


class SessionContext(Protocol):
    async def __aenter__(self) -> Session: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _SmtpSession:
    def __init__(self, transport: SmtpTransport) -> None:
        self._transport = transport
        self._client: aiosmtplib.SMTP | None = None

    async def __aenter__(self) -> _SmtpSession:
        client = self._transport.client()
        await client.connect()
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()  # the mails are already accepted; a failed QUIT changes nothing

    async def send(self, data: bytes, sender: str, recipients: Sequence[str]) -> str:
        assert self._client is not None
        errors, response = await self._client.sendmail(sender, list(recipients), data)
        if errors:
            refused = ", ".join(f"{r}: {resp.code} {resp.message}" for r, resp in errors.items())
            return f"{response} (refused: {refused})"
        return response


class SmtpTransport:
    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host is not None
        self.host = settings.smtp_host
        self.security = settings.smtp_security
        self.port = settings.smtp_port or DEFAULT_PORTS[self.security]
        self.username = settings.smtp_username
        self._password = settings.smtp_password
        self.ca_file = settings.smtp_ca_file
        self.timeout = settings.smtp_timeout

    def describe(self) -> str:
        return f"smtp {self.host}:{self.port}"

    def secrets(self) -> list[str]:
        return [self._password.get_secret_value()] if self._password else []

    def client(self) -> aiosmtplib.SMTP:
        context = None
        if self.security != "none":
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username if self._password is not None else None,
            password=self._password.get_secret_value() if self._password else None,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            tls_context=context,
            timeout=self.timeout,
        )

    def session(self) -> _SmtpSession:
        return _SmtpSession(self)


class _EmlSession:
    def __init__(self, directory: Path) -> None:
        self._dir = directory

    async def __aenter__(self) -> _EmlSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def send(self, data: bytes, sender: str, recipients: Sequence[str]) -> str:
        return await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> str:
        # Named by content: writing the same mail again (after a crash) replaces the file.
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"erpwatch-{hashlib.sha256(data).hexdigest()[:20]}.eml"
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(data)
        os.replace(partial, path)
        return f"written to {path}"


class EmlTransport:
    """No SMTP server configured: each mail becomes an ``.eml`` file (the demo's inbox)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> str:
        return f"eml {self.directory}"

    def secrets(self) -> list[str]:
        return []

    def session(self) -> _EmlSession:
        return _EmlSession(self.directory)


def transport_for(settings: Settings) -> SmtpTransport | EmlTransport:
    if settings.smtp_host:
        return SmtpTransport(settings)
    return EmlTransport(settings.alert_mail_dir or settings.log_path / "mail")
