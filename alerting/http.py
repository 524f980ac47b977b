"""HTTP transports: webhooks and Prometheus Alertmanager (httpx), one client per batch.

`classify_response` sorts what came back, in the outbox's terms (`DeliveryError`):

* 2xx: delivered;
* transient, retried with backoff: no connection, a timeout, a broken response, any 5xx,
  408, 425 and 429 (its ``Retry-After``, seconds or an HTTP date, is honoured, at most
  `RETRY_AFTER_MAX`);
* permanent, a dead letter with the status and the start of the response: any other 4xx,
  and 3xx (a redirect is not followed: the URL is wrong).

At most `RESPONSE_READ_MAX` bytes of a response are read, as they came over the wire: the
request asks for ``Accept-Encoding: identity`` and a body encoded anyway (gzip, ...) is
never decoded (a few KiB of doubly gzipped zeros inflate to gigabytes, a whole network read
at a time) and not quoted in a reason. The whole exchange has one deadline (the receiver's
timeout); once the status line has come, a body cut short by it (or by a lost connection)
changes nothing: the status decides, so a 2xx dripping its body is delivered, not posted
again on every retry. A webhook URL is a secret (its path carries the token): only the
receiver's name and host appear in logs, reasons and events, and the headers of
``ERPWATCH_WEBHOOK_HEADERS`` and the signing key never do.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any

import httpx

from alerting.payloads import ALERTMANAGER_PATH, with_ends_at
from alerting.receivers import Receiver
from alerting.render import Mail
from alerting.transport import DeliveryError, redact
from watchdog.settings import url_secrets, url_shown

RESPONSE_READ_MAX = 4096
RETRY_AFTER_MAX = 3600.0
USER_AGENT = "erpwatch"
_TRANSIENT_4XX = frozenset({408, 425, 429})


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), bounded."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def classify_response(
    status: int, reason_text: str, headers: Mapping[str, str], now: datetime
) -> DeliveryError | None:
    if 200 <= status < 300:
        return None
    reason = f"HTTP {status}" + (f": {reason_text}" if reason_text else "")
    if status >= 500 or status in _TRANSIENT_4XX:
        wait = retry_after(headers.get("retry-after"), now) if status in (429, 503) else None
        return DeliveryError(reason, permanent=False, whole_batch=False, retry_after=wait)
    if 300 <= status < 400:
        where = headers.get("location", "")
        # Only the host: the path of where it points may be a (new) token.
        shown = url_shown(where)[:80] if "://" in where else "a path on the same host"
        return DeliveryError(
            f"{reason} (a redirect{' to ' + shown if where else ''} is not followed: fix the URL)",
            permanent=True,
            whole_batch=False,
        )
    return DeliveryError(reason, permanent=True, whole_batch=False)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class HttpTransport:
    """One webhook URL or one Alertmanager instance."""

    def __init__(
        self,
        receiver: Receiver,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
        resend_interval: float = 60.0,
        wall: Any = None,
    ) -> None:
        assert receiver.url is not None
        self._configured_url = receiver.url
        self.receiver = receiver.name
        self.kind = receiver.kind
        self.url = receiver.url + (ALERTMANAGER_PATH if receiver.kind == "alertmanager" else "")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._secret = secret
        self.resend_interval = resend_interval
        self._wall = wall or (lambda: datetime.now(UTC))
        self.noun = "Alertmanager alert" if receiver.kind == "alertmanager" else "webhook"

    def describe(self) -> str:
        return self.receiver

    def secrets(self) -> list[str]:
        found = [self.url, *url_secrets(self._configured_url)]
        found += [value for value in self.headers.values() if len(value) >= 4]
        if self._secret:
            found.append(self._secret)
        return found

    def sent_text(self, mail: Mail, response: str) -> str:
        verb = "sent to" if self.kind == "alertmanager" else "posted to"
        return f"{mail.purpose} {self.noun} {verb} {self.receiver}: {mail.subject} ({response})"

    def session(self) -> _HttpSession:
        return _HttpSession(self)

    def request(self, data: bytes) -> tuple[bytes, dict[str, str]]:
        """The body as sent now and its headers (the signature is of that body)."""
        now = self._wall()
        if self.kind == "alertmanager":
            data = with_ends_at(data, now + timedelta(seconds=4 * self.resend_interval))
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "accept-encoding": "identity",
            "x-erpwatch-delivery": hashlib.sha256(data).hexdigest()[:24],
            **self.headers,
        }
        if self._secret:
            stamp = str(int(time.time()))
            headers["x-erpwatch-timestamp"] = stamp
            headers["x-erpwatch-signature"] = sign(self._secret, stamp, data)
        return data, headers


class _HttpSession:
    def __init__(self, transport: HttpTransport) -> None:
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> _HttpSession:
        self._client = httpx.AsyncClient(
            timeout=self._transport.timeout, follow_redirects=False, trust_env=False
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def alive(self) -> bool:
        return self._client is not None

    async def send(self, data: bytes, sender: str, recipients: Sequence[str]) -> str:
        transport, client = self._transport, self._client
        assert client is not None
        body, headers = transport.request(data)
        secrets = transport.secrets()
        response: httpx.Response | None = None  # once its status line and headers came
        head = b""
        try:
            # One deadline for the whole exchange: httpx's timeouts are per read, so a
            # receiver dripping a byte at a time would otherwise hold the lane for hours.
            async with asyncio.timeout(transport.timeout):
                request = client.build_request("POST", transport.url, content=body, headers=headers)
                response = await client.send(request, stream=True)
                try:
                    async for chunk in response.aiter_raw():  # never inflated
                        head += chunk
                        if len(head) >= RESPONSE_READ_MAX:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            if response is None:
                raise DeliveryError(
                    f"no complete answer within {transport.timeout:g}s",
                    permanent=False,
                    whole_batch=False,
                ) from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            if response is None:
                raise DeliveryError(
                    redact(f"{type(exc).__name__}: {exc}", secrets),
                    permanent=isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL),
                    whole_batch=isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout),
                ) from None
        # The status decides, also when the body was cut short (deadline, lost connection): a
        # 2xx means the receiver took the notification, and a retry would post it again.
        encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        text = "" if encoded else " ".join(head[:200].decode("utf-8", "replace").split())
        error = classify_response(response.status_code, text, response.headers, self._now())
        if error is not None:
            raise DeliveryError(
                redact(error.reason, secrets),
                permanent=error.permanent,
                whole_batch=error.whole_batch,
                retry_after=error.retry_after,
            )
        return f"HTTP {response.status_code}"

    def _now(self) -> datetime:
        value: datetime = self._transport._wall()
        return value
