"""Receivers: where notifications go. Mail, each webhook URL, each Alertmanager instance
and the hook are receivers of their own, each with a durable outbox lane (rows of
``alert_outbox`` with its name) and a delivery worker, so a dead webhook never delays mail.

Names are stable across restarts and reloads and never show a URL's path (a Slack or Teams
URL carries its token): ``email``, ``hook``, ``webhook-<host>-<hash>`` and
``alertmanager-<host>-<hash>``, the hash being of the whole URL. A row whose receiver is no
longer configured after a reload becomes a dead letter saying so.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from watchdog.events import DEFAULT_SEVERITY, Severity
from watchdog.settings import Settings, split_command, url_host

EMAIL, HOOK = "email", "hook"
ReceiverKind = Literal["email", "webhook", "alertmanager", "hook"]
SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_NOT_NAME = re.compile(r"[^A-Za-z0-9.-]+")


def severity_of(kinds: Iterable[str]) -> Severity:
    """The gravest default severity among ``kinds`` (info when there is none)."""
    ranked = [DEFAULT_SEVERITY.get(kind, Severity.WARNING) for kind in kinds]
    return max(ranked, key=SEVERITY_RANK.__getitem__, default=Severity.INFO)


def url_name(kind: str, url: str) -> str:
    """``webhook-hooks.slack.com-1a2b3c``: the host and a hash of the whole URL."""
    host = url_host(url)
    digest = hashlib.sha256(url.encode()).hexdigest()[:6]
    return f"{kind}-{_NOT_NAME.sub('-', host)[:60]}-{digest}"


def auto_template(url: str) -> str:
    host = url_host(url).rsplit(":", 1)[0].lower()
    if host == "hooks.slack.com":
        return "slack"
    if host.endswith((".webhook.office.com", ".logic.azure.com")):
        return "teams"
    return "json"


@dataclass(frozen=True, slots=True)
class Receiver:
    name: str
    kind: ReceiverKind
    min_severity: Severity
    url: str | None = None  # webhook / Alertmanager
    template: str = "json"  # webhook body: json | slack | teams | <file>.j2
    argv: tuple[str, ...] = ()  # hook

    def accepts(self, severity: Severity) -> bool:
        return SEVERITY_RANK[severity] >= SEVERITY_RANK[self.min_severity]

    def shown(self) -> str:
        """How logs and events name it (never a URL's path)."""
        return self.name


def receivers_from(settings: Settings) -> list[Receiver]:
    out = [Receiver(EMAIL, "email", Severity(settings.email_min_severity))]
    templates = list(settings.webhook_templates)
    for index, url in enumerate(dict.fromkeys(settings.webhook_urls)):
        chosen = templates[index] if index < len(templates) else "auto"
        out.append(
            Receiver(
                url_name("webhook", url),
                "webhook",
                Severity(settings.webhook_min_severity),
                url=url,
                template=auto_template(url) if chosen == "auto" else chosen,
            )
        )
    for url in dict.fromkeys(settings.alertmanager_url):
        out.append(
            Receiver(
                url_name("alertmanager", url),
                "alertmanager",
                Severity(settings.alertmanager_min_severity),
                url=url.rstrip("/"),
            )
        )
    if settings.hook_command:
        out.append(
            Receiver(
                HOOK,
                "hook",
                Severity(settings.hook_min_severity),
                argv=tuple(split_command(settings.hook_command)),
            )
        )
    return out
