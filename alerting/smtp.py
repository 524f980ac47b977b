"""The SMTP session on aiosmtplib, and what aiosmtplib's errors mean for a mail.

Only `SmtpTransport.session` imports this module, so aiosmtplib (~1 MiB, 15 modules) loads
with the first mail sent over SMTP: an `erpwatch run` that writes ``.eml`` files or sends
nothing never holds it. A session raises what a delivery can fail with as a `DeliveryError`,
classified here (`classify_smtp`, the sorting `alerting.transport` describes), so nothing
outside this module needs aiosmtplib's exception classes. Recipients refused while others
were accepted come back classified too, as `PartlyAccepted`.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiosmtplib
from aiosmtplib import SMTPResponse

from alerting.transport import DeliveryError, PartlyAccepted, Refused, classify, redact

if TYPE_CHECKING:
    from alerting.transport import SmtpTransport
    from watchdog.settings import Secret

# What an SMTP session can fail with besides bugs: SMTP replies and protocol errors, network,
# TLS and timeouts (`OSError`), an EOF, an address or message that cannot be sent.
SMTP_ERRORS: tuple[type[Exception], ...] = (aiosmtplib.SMTPException, OSError, EOFError, ValueError)

_CLOSING = 421  # "service not available, closing transmission channel"
# The wait for the reply to a mail's DATA, RFC 5321 4.5.3.2 (the "DATA Termination" time):
# a server that is slow there (a content scanner, a busy relay) has the whole mail, and
# giving up after SMTP_TIMEOUT sends it again on every retry while the server stays slow.
DATA_REPLY_TIMEOUT = 600.0


class _Client(aiosmtplib.SMTP):
    """aiosmtplib's client, waiting `DATA_REPLY_TIMEOUT` (or SMTP_TIMEOUT, if longer) for
    DATA's replies; every other command keeps SMTP_TIMEOUT. erpwatch's stop cancels a wait."""

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: Any = None,  # noqa: ASYNC109 (aiosmtplib's signature; not used)
    ) -> SMTPResponse:
        wait = max(self.timeout or 0.0, DATA_REPLY_TIMEOUT)
        return await super().data(message, timeout=wait)


def _connection_broken(code: int) -> bool:
    """A reply code after which the connection cannot carry another mail."""
    return code == _CLOSING or not 400 <= code < 600


def classify_smtp(exc: BaseException, secrets: Sequence[str] = ()) -> DeliveryError:
    """`transport.classify`, knowing aiosmtplib's replies; the reason is redacted."""
    reason = redact(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        if 400 <= exc.code < 500:
            return DeliveryError(
                f"authentication failed temporarily ({reason})", permanent=False, whole_batch=True
            )
        return DeliveryError(f"authentication refused ({reason})", permanent=True, whole_batch=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        permanent = bool(codes) and all(code >= 500 for code in codes)
        broken = any(_connection_broken(code) for code in codes)
        return DeliveryError(reason, permanent=permanent and not broken, whole_batch=broken)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if _connection_broken(exc.code):  # 421, malformed (-1) or out-of-place (2xx/3xx) reply
            return DeliveryError(reason, permanent=False, whole_batch=True)
        return DeliveryError(reason, permanent=exc.code >= 500, whole_batch=False)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DeliveryError(reason, permanent=True, whole_batch=True)
    if isinstance(exc, aiosmtplib.SMTPException):
        return DeliveryError(reason, permanent=False, whole_batch=True)  # lost, timeout
    return classify(exc, secrets)


class SmtpSession:
    """One SMTP connection: connect (EHLO, STARTTLS, AUTH) on enter, QUIT on a clean exit;
    a failure leaves it as a `DeliveryError`."""

    def __init__(self, transport: SmtpTransport, password: Secret | None) -> None:
        self._transport = transport
        self._password = password
        self._secrets = transport.secrets()
        self._client: aiosmtplib.SMTP | None = None

    def _new_client(self) -> _Client:
        transport = self._transport
        context = None
        if transport.security != "none":
            cafile = str(transport.ca_file) if transport.ca_file else None
            context = ssl.create_default_context(cafile=cafile)
        return _Client(
            hostname=transport.host,
            port=transport.port,
            username=transport.username if self._password is not None else None,
            password=self._password.get_secret_value() if self._password else None,
            use_tls=transport.security == "tls",
            start_tls=transport.security == "starttls",
            tls_context=context,
            timeout=transport.timeout,
        )

    async def __aenter__(self) -> SmtpSession:
        try:
            client = self._new_client()
            await client.connect()  # on any failure aiosmtplib closes what it opened
        except SMTP_ERRORS as exc:
            raise classify_smtp(exc, self._secrets) from exc
        self._client = client
        return self

    @property
    def alive(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        if exc is not None:
            client.close()  # leaving on an error (or a cancel): no QUIT on a doubtful stream
            return
        try:
            await client.quit()
        except SMTP_ERRORS:
            client.close()  # the mails are already accepted; a failed QUIT changes nothing

    async def send(self, data: bytes, sender: str, recipients: Sequence[str]) -> str:
        """Send one mail; returns the server's reply to DATA once it accepted it (2xx), with
        the recipients it refused (`PartlyAccepted`) if it accepted only some."""
        client = self._client
        if client is None or not client.is_connected:
            raise classify_smtp(
                aiosmtplib.SMTPServerDisconnected("connection lost before this mail")
            )
        try:
            errors, response = await client.sendmail(sender, list(recipients), data)
        except SMTP_ERRORS as exc:
            error = classify_smtp(exc, self._secrets)
            if error.whole_batch:
                client.close()  # unusable: the next mail of the batch must not use it
            raise error from exc
        if errors:
            return PartlyAccepted(response, self._refused(errors))
        return response

    def _refused(self, errors: dict[str, aiosmtplib.SMTPResponse]) -> tuple[Refused, ...]:
        """The refused recipients in two groups at most: retried (4xx) and dead (5xx)."""
        groups: dict[bool, list[tuple[str, str]]] = {}
        for recipient, reply in errors.items():
            refusal = aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            permanent = classify_smtp(refusal).permanent
            reason = f"RCPT TO {recipient} refused: {reply.code} {reply.message}"
            groups.setdefault(permanent, []).append((recipient, reason))
        return tuple(
            Refused(
                tuple(recipient for recipient, _ in group),
                DeliveryError(  # the connection stays usable: `alive` tells if it is not
                    redact("; ".join(reason for _, reason in group), self._secrets),
                    permanent=permanent,
                    whole_batch=False,
                ),
            )
            for permanent, group in groups.items()
        )
