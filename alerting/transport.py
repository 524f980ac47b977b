"""Mail transports: SMTP (aiosmtplib, one connection per batch) or ``.eml`` files.

What a delivery can raise (`DELIVERY_ERRORS`) is sorted into a `DeliveryError`:

* **transient** — retried with backoff: connection refused or reset, EOF (also mid-DATA),
  timeouts, TLS errors (handshake and certificate), an unexpected or malformed reply, any
  4xx (a 4xx to AUTH included);
* **permanent** — dead letter: authentication refused (5xx), any other 5xx, an address that
  cannot be sent, an extension the mail needs and the server lacks (`SMTPNotSupported`).

`classify` sorts the errors any transport can raise; aiosmtplib's own (replies, AUTH, a
missing extension) are sorted by `alerting.smtp.classify_smtp`, where aiosmtplib is imported:
the SMTP session raises them already classified. aiosmtplib (~1 MiB) is thus loaded with the
first SMTP session, not by `erpwatch run` writing ``.eml`` files or sending nothing.

``whole_batch`` says whether the connection is still usable after the failure: a 4xx/5xx to
one mail's MAIL/RCPT/DATA leaves it in a clean state (aiosmtplib sent RSET), while a lost
connection, a timeout, a malformed or unexpected reply and ``421`` (the server is closing the
channel) do not; the session then closes the connection without QUIT.

A mail the server takes for some recipients while it refuses others at RCPT TO is no
failure (aiosmtplib raises only when every recipient is refused): the session answers
`PartlyAccepted`, each group of refused recipients with its `DeliveryError` (4xx: retried,
5xx: dead letter), and the delivery records the accepted ones as sent.

The password is only ever handed to aiosmtplib; `describe`, `secrets` redaction and every
message built here leave it out (also its base64 forms, which a server may echo back), and a
reason is bounded to `REASON_MAX` characters.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from watchdog.settings import Settings

if TYPE_CHECKING:
    from alerting.render import Mail
    from alerting.smtp import SmtpSession

DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
REASON_MAX = 500  # characters of a failure reason kept (outbox row, log, alert-failed event)


class DeliveryError(Exception):
    """A failed delivery, already classified; ``str()`` is safe to log and mail."""

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool,
        whole_batch: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.whole_batch = whole_batch  # the connection is unusable, not just this message
        self.retry_after = retry_after  # seconds the receiver asked to wait (429)


# What a delivery can raise besides bugs: network, TLS and timeouts (`OSError`), an EOF, an
# address or message that cannot be sent (`ValueError`), and what the transports (SMTP, HTTP,
# the hook) raise already classified.
DELIVERY_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, ValueError, DeliveryError)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without any of ``secrets``, bounded to `REASON_MAX` characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    if len(text) > REASON_MAX:
        text = text[: REASON_MAX - 1] + "…"
    return text


def classify(exc: BaseException, secrets: Sequence[str] = ()) -> DeliveryError:
    """Sort a delivery failure (see the module docstring); the reason is redacted."""
    if isinstance(exc, DeliveryError):
        return exc
    reason = redact(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, OSError | EOFError | asyncio.TimeoutError):
        return DeliveryError(reason, permanent=False, whole_batch=True)  # lost, TLS, timeout
    if isinstance(exc, ValueError):  # aiosmtplib refuses an address or message before sending
        return DeliveryError(reason, permanent=True, whole_batch=False)
    return DeliveryError(reason, permanent=False, whole_batch=True)


@dataclass(frozen=True, slots=True)
class Refused:
    """Recipients of an accepted mail that the server refused, and why (one outcome)."""

    recipients: tuple[str, ...]
    error: DeliveryError


class PartlyAccepted(str):
    """`Session.send`'s answer when the mail was accepted for some recipients only.

    As a ``str`` it is the reply to DATA followed by the refusals (what a caller that only
    reports the answer shows); ``refused`` groups the refused recipients by outcome, at most
    one group retried (4xx) and one dead (5xx)."""

    response: str  # the server's reply to DATA
    refused: tuple[Refused, ...]

    def __new__(cls, response: str, refused: tuple[Refused, ...]) -> Self:
        reasons = "; ".join(group.error.reason for group in refused)
        answer = super().__new__(cls, f"{response} (refused: {reasons})")
        answer.response = response
        answer.refused = refused
        return answer


class Session(Protocol):
    @property
    def alive(self) -> bool:
        """False once the connection is known to be gone (no mail can go on it)."""
        ...

    async def send(self, data: bytes, sender: str, recipients: Sequence[str]) -> str:
        """The receiver's answer once it accepted the mail (`PartlyAccepted`: for some)."""
        ...


class Transport(Protocol):
    receiver: str  # the receiver's name (`alerting.receivers`)
    noun: str  # what it delivers, in messages: "mail", "webhook", ...

    def describe(self) -> str: ...

    def secrets(self) -> list[str]: ...

    def sent_text(self, mail: Mail, response: str) -> str:
        """The ``alert-sent`` message: what was delivered, where, truthfully."""
        ...

    def session(self) -> SessionContext: ...


class SessionContext(Protocol):
    async def __aenter__(self) -> Session: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class SmtpTransport:
    receiver = "email"
    noun = "mail"

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

    def sent_text(self, mail: Mail, response: str) -> str:
        return f"{mail.purpose} mail sent to {', '.join(mail.recipients)}: {mail.subject}"

    def secrets(self) -> list[str]:
        """The password and the base64 forms AUTH PLAIN/LOGIN put on the wire (to redact)."""
        if self._password is None or not self._password.get_secret_value():
            return []
        password = self._password.get_secret_value()
        plain = f"\0{self.username or ''}\0{password}".encode()
        return [
            password,
            base64.b64encode(plain).decode(),
            base64.b64encode(password.encode()).decode(),
        ]

    def session(self) -> SmtpSession:
        from alerting.smtp import SmtpSession  # aiosmtplib loads with the first SMTP session

        return SmtpSession(self, self._password)


class ConnectionlessSession:
    """A session with no connection to open or lose (files, a command): always alive."""

    async def __aenter__(self) -> Self:
        return self

    @property
    def alive(self) -> bool:
        return True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _EmlSession(ConnectionlessSession):
    def __init__(self, directory: Path) -> None:
        self._dir = directory

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

    receiver = "email"
    noun = "mail"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> str:
        return f"eml {self.directory}"

    def sent_text(self, mail: Mail, response: str) -> str:
        return (
            f"{mail.purpose} mail for {', '.join(mail.recipients)} {response} "
            f"(no ERPWATCH_SMTP_HOST: not sent): {mail.subject}"
        )

    def secrets(self) -> list[str]:
        return []

    def session(self) -> _EmlSession:
        return _EmlSession(self.directory)


def transport_for(settings: Settings) -> SmtpTransport | EmlTransport:
    if settings.smtp_host:
        return SmtpTransport(settings)
    return EmlTransport(settings.alert_mail_dir or settings.log_path / "mail")
