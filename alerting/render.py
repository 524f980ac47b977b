"""Rendering: a notification becomes a MIME mail (text + autoescaped HTML) with threading
headers. Anything that reaches a header is stripped of control characters (no CR/LF header
injection); anything that reaches HTML is escaped by jinja2's autoescape.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2

from alerting.incidents import ONE_SHOT_KINDS, EventSummary, Incident
from alerting.stages import Ctx, Notification
from watchdog.bus import StoreTrouble
from watchdog.events import SYSTEM_TARGET, Event, Kind
from watchdog.templating import environment

PHRASES: Mapping[str, str] = {
    Kind.RESTART_LIMIT_REACHED: "restart limit reached",
    Kind.CRASH_LOOP: "crash loop",
    Kind.DOWN: "down",
    Kind.ALERT_FAILED: "alert delivery failed",
    Kind.CRASHED: "crashed",
    Kind.UNHEALTHY: "unhealthy",
    Kind.WATCHDOG_FAULT: "internal fault",
    Kind.STORE_FAILING: "event store failing",
    Kind.EVENTS_DROPPED: "events dropped",
}
STORE_MAIL = "store-failing"  # purpose (and template) of the direct store-trouble mail
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_NOT_ID = re.compile(r"[^A-Za-z0-9._-]+")
_NOT_DOMAIN = re.compile(r"[^A-Za-z0-9.-]+")


def clean_header(text: str, limit: int = 200) -> str:
    """One safe header line: control characters (CR, LF, …) become spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


def phrase(kind: str) -> str:
    return PHRASES.get(kind, kind)


@dataclass(frozen=True, slots=True)
class Mail:
    """A rendered notification for one receiver, ready for the outbox: a MIME mail for
    ``email``; for other receivers (`alerting.payloads`) the body they are sent, with
    ``subject`` a one-line summary and no recipients."""

    purpose: str
    target: str
    incident_id: str | None
    recipients: tuple[str, ...]
    subject: str
    message_id: str
    data: bytes
    trigger_kinds: tuple[str, ...] = ()
    receiver: str = "email"


def _times(ts: datetime) -> dict[str, str]:
    return {
        "utc": ts.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "local": ts.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _event_row(event: Event | EventSummary) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "severity": str(event.severity),
        "message": event.message,
        **_times(event.ts),
    }


def _actions(incident: Incident) -> list[str]:
    """What erpwatch did, in plain words, from the incident's events."""
    actions: list[str] = []
    reasons = incident.restart_reasons()
    if reasons or incident.restarts:
        actions.append(f"restarted the target {max(incident.restarts, len(reasons))} time(s)")
        actions.extend(f"restart reason: {reason}" for reason in reasons[-5:])
    for event in incident.events:
        if event.kind == Kind.RESTART_LIMIT_REACHED:
            actions.append(f"stopped restarting: {event.message}")
        elif event.kind == Kind.WATCHDOG_FAULT:
            actions.append(f"recorded a fault of its own: {event.message}")
    return actions or ["watched the target; no restart was needed"]


class Renderer:
    """Renders notifications into mails; the template dir may override any template."""

    def __init__(
        self,
        *,
        hostname: str,
        sender: str,
        stderr_lines: int,
        status_url: str | None = None,
        template_dir: Path | None = None,
        snapshot: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.hostname = clean_header(hostname, 64) or "localhost"
        self.domain = _NOT_DOMAIN.sub("-", self.hostname) or "localhost"
        self.sender = sender
        self.stderr_lines = stderr_lines
        self.status_url = status_url
        self.env: jinja2.Environment = environment(template_dir)
        self._snapshot = snapshot

    def exec(self, ctx: Ctx, notes: list[Notification]) -> tuple[Ctx, list[Mail]]:
        return ctx, [self.render(note, ctx.wall) for note in notes]

    def message_id(self, key: str, seq: int) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        slug = _NOT_ID.sub("-", key)[:40]
        return f"<erpwatch.{slug}.{digest}.{seq}@{self.domain}>"

    def subject(self, note: Notification) -> str:
        who = f"{note.target}@{self.hostname}"
        if note.purpose == "resolved":
            text = f"[erpwatch] RECOVERED {who}"
        elif note.purpose == "test":
            text = f"[erpwatch] TEST mail from {self.hostname}"
        elif note.purpose == "digest":
            text = f"[erpwatch] DIGEST: {len(note.held)} mail(s) held back by the rate limit"
        else:
            state = "STILL DOWN" if note.purpose == "reminder" else "DOWN"
            if note.kinds and all(k in ONE_SHOT_KINDS for k in note.kinds):
                state = "FAULT"
            words = ", ".join(phrase(k) for k in note.kinds)
            text = f"[erpwatch] {state} {who}: {words}" if words else f"[erpwatch] {state} {who}"
        return clean_header(text)

    def render(self, note: Notification, wall: datetime) -> Mail:
        context: dict[str, Any] = {
            "purpose": note.purpose,
            "target": note.target,
            "host": self.hostname,
            "now": _times(wall),
            "status_url": self.status_url,
            "snapshot": dict(self._snapshot()) if self._snapshot else None,
            "kinds": [{"kind": k, "phrase": phrase(k)} for k in note.kinds],
            "held": [h.to_json() for h in note.held],
        }
        incident = note.incident
        references: list[str] = []
        if incident is not None:
            message_id = self.message_id(incident.id, incident.thread_count)
            references = list(incident.thread[:1] + incident.thread[-9:][1:])
            incident.add_message_id(message_id)
            context.update(self._incident_context(incident, note, wall))
            template = "email/incident"
        else:
            message_id = self.message_id(f"{note.purpose}-{wall.isoformat()}", 0)
            template = f"email/{note.purpose}"
        subject = self.subject(note)
        context["subject"] = subject
        text = self.env.get_template(f"{template}.txt.j2").render(context)
        html = self.env.get_template(f"{template}.html.j2").render(context)
        message = self.build(subject, note.recipients, message_id, text, html, wall, references)
        return Mail(
            purpose=note.purpose,
            target=note.target,
            incident_id=incident.id if incident else None,
            recipients=tuple(note.recipients),
            subject=subject,
            message_id=message_id,
            data=message.as_bytes(policy=SMTP),
            trigger_kinds=tuple(incident.alert_kinds if incident else note.kinds),
        )

    def render_store_trouble(
        self,
        trouble: StoreTrouble,
        recipients: list[str] | tuple[str, ...],
        wall: datetime,
        *,
        path: Path,
        buffer_limit: int,
    ) -> Mail:
        """The direct mail that the event store is failing (it bypasses the outbox)."""
        subject = clean_header(
            f"[erpwatch] STORE FAILING on {self.hostname}: event store failing ({trouble.reason})"
        )
        context: dict[str, Any] = {
            "purpose": STORE_MAIL,
            "target": SYSTEM_TARGET,
            "host": self.hostname,
            "now": _times(wall),
            "subject": subject,
            "status_url": self.status_url,
            "snapshot": dict(self._snapshot()) if self._snapshot else None,
            "store": {
                "reason": trouble.reason,
                "since": _times(trouble.since),
                "path": str(path),
                "buffered": trouble.buffered,
                "buffer_limit": buffer_limit,
                "dropped": trouble.dropped,
            },
        }
        message_id = self.message_id(f"{STORE_MAIL}-{trouble.since.isoformat()}", 0)
        text = self.env.get_template(f"email/{STORE_MAIL}.txt.j2").render(context)
        html = self.env.get_template(f"email/{STORE_MAIL}.html.j2").render(context)
        message = self.build(subject, recipients, message_id, text, html, wall, [])
        return Mail(
            purpose=STORE_MAIL,
            target=SYSTEM_TARGET,
            incident_id=None,
            recipients=tuple(recipients),
            subject=subject,
            message_id=message_id,
            data=message.as_bytes(policy=SMTP),
            trigger_kinds=(Kind.STORE_FAILING,),
        )

    def _incident_context(
        self, incident: Incident, note: Notification, wall: datetime
    ) -> dict[str, Any]:
        alerting = [e for e in incident.events if e.kind in note.kinds] or list(incident.events)
        latest = alerting[-1] if alerting else None
        crash = incident.last_crash()
        end = (
            incident.recovered_at if note.purpose == "resolved" and incident.recovered_at else wall
        )
        return {
            "incident": {
                "id": incident.id,
                "opened": _times(incident.opened_at),
                "duration": _duration((end - incident.opened_at).total_seconds()),
                "restarts": incident.restarts,
                "duplicates": incident.duplicates,
                "kinds": [phrase(k) for k in incident.alert_kinds],
                "recovered": _times(incident.recovered_at) if incident.recovered_at else None,
            },
            "event": _event_row(latest) if latest else None,
            "actions": _actions(incident),
            "exit_code": crash.details.get("exit_code", crash.details.get("returncode"))
            if crash
            else None,
            "signal": crash.details.get("signal") if crash else None,
            "stderr_tail": incident.stderr_tail(self.stderr_lines),
            "events": [_event_row(e) for e in list(incident.events)[-15:]],
            # Dependents whose alerts were folded into this incident (inhibition).
            "affected": [
                {"target": name, "kinds": [phrase(k) for k in kinds]}
                for name, kinds in sorted(incident.affected.items())
            ],
        }

    def build(
        self,
        subject: str,
        recipients: list[str] | tuple[str, ...],
        message_id: str,
        text: str,
        html: str,
        wall: datetime,
        references: list[str],
    ) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = clean_header(subject)
        message["From"] = clean_header(self.sender)
        message["To"] = ", ".join(clean_header(r) for r in recipients)
        message["Date"] = format_datetime(wall)
        message["Message-ID"] = message_id
        message["X-Erpwatch-Host"] = self.hostname
        if references:
            message["In-Reply-To"] = references[-1]
            message["References"] = " ".join(references)
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message
