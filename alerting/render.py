"""Rendering: a notification becomes a MIME mail (text + autoescaped HTML) with threading
headers. Anything that reaches a header is stripped of control characters (no CR/LF header
injection); anything that reaches HTML is escaped by jinja2's autoescape.

What an incident mail says (``templates/email/incident.*.j2``):

* DOWN (``firing``), UPDATE (``update``: the kinds that came after the first mail), STILL
  DOWN (``reminder``): the cause (the latest crash's one line), what erpwatch did, *what to do
  next* as the exact commands (``erpwatch logs T``, ``erpwatch start T`` once erpwatch gave up,
  or ``erpwatch restart T`` while it still restarts, ``erpwatch history --target T``), and
  when erpwatch retries by itself (``next_retry_at`` of the latest restart-limit, crash-loop
  or down event; nothing is claimed when the events do not say), then the stderr tail.
* RECOVERED (``resolved``): a summary of the outage (how long, restarts, what brought it
  back, the last crash's cause labelled as from the outage); no stderr, no "Exit code" as if
  current.

Times are UTC, with the local time added only where it differs (`Renderer` ``tz``).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from alerting.incidents import (
    ONE_SHOT_KINDS,
    RETRY_KINDS,
    RETRY_SECONDS,
    EventSummary,
    Incident,
)
from alerting.stages import Ctx, Notification
from watchdog.bus import StoreTrouble
from watchdog.events import SYSTEM_TARGET, Event, Kind
from watchdog.templating import LazyEnvironment

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


def _times(ts: datetime, tz: tzinfo | None = None) -> dict[str, str]:
    """``utc``, ``local`` (in ``tz``, the host's zone when None) and ``text``: the UTC time,
    followed by the local one only where it differs (no "UTC / UTC")."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    utc = ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    here = ts.astimezone(tz)
    local = here.strftime("%Y-%m-%d %H:%M:%S %Z")
    if here.utcoffset() == timedelta(0):
        return {"utc": utc, "local": local, "text": utc}
    short = here.strftime(
        "%H:%M:%S %Z" if here.date() == ts.astimezone(UTC).date() else "%Y-%m-%d %H:%M:%S %Z"
    )
    return {"utc": utc, "local": local, "text": f"{utc} ({short})"}


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _event_row(event: Event | EventSummary, tz: tzinfo | None = None) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "severity": str(event.severity),
        "message": event.message,
        **_times(event.ts, tz),
    }


# Kinds after which erpwatch has stopped restarting (until its slow retry or an operator).
_GAVE_UP = frozenset({Kind.RESTART_LIMIT_REACHED})
_STARTS = frozenset({Kind.RESTARTED, Kind.STARTED})
_TROUBLE = frozenset({Kind.CRASHED, Kind.UNHEALTHY, Kind.DOWN, Kind.CRASH_LOOP})
# Kinds about the target itself (not about erpwatch or its mail): the commands apply.
_TARGET_KINDS = frozenset({*RETRY_KINDS, Kind.CRASHED, Kind.UNHEALTHY})


def _parse_time(text: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _retry_of(event: EventSummary) -> datetime | None:
    """The automatic retry ``event`` announces (``next_retry_at``, or its time plus
    ``next_retry_in_s`` / ``retry_in_s``), None if it announces none."""
    at = event.details.get("next_retry_at")
    if isinstance(at, str):
        parsed = _parse_time(at)
        if parsed is not None:
            return parsed
    for key in RETRY_SECONDS:
        seconds = event.details.get(key)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            return event.ts + timedelta(seconds=float(seconds))
    return None


def next_retry(events: Sequence[EventSummary]) -> tuple[datetime | None, bool]:
    """``(when, gave_up)``: the automatic retry the latest restart-limit, crash-loop or down
    event announced (None if none, or if a start or restart came after it), and whether
    erpwatch has stopped restarting (a restart limit with no start since)."""
    when: datetime | None = None
    for event in reversed(events):
        if event.kind in _STARTS or event.kind == Kind.HEALTHY:
            return when, False
        if when is None and event.kind in RETRY_KINDS:
            when = _retry_of(event)
        if event.kind in _GAVE_UP:
            return when, True
    return when, False


def cause_of(crash: EventSummary | None, stderr: Sequence[str]) -> str | None:
    """One line on why the target failed: the crash's ``cause``, else its exit code or
    signal with the last non-empty stderr line."""
    if crash is None:
        return None
    cause = crash.details.get("cause")
    if isinstance(cause, str) and cause:
        return cause
    code = crash.details.get("exit_code", crash.details.get("returncode"))
    signal = crash.details.get("signal")
    head = (
        f"signal {signal}"
        if signal is not None
        else f"exit code {code}"
        if code is not None
        else crash.message
    )
    last = next((line.strip() for line in reversed(stderr) if line.strip()), "")
    return f"{head}: {last}" if last else str(head)


def _brought_back(incident: Incident, tz: tzinfo | None) -> str:
    """What ended the outage, from the events before the healthy one that began recovery."""
    start: EventSummary | None = None
    for event in incident.events:
        if incident.recovered_at is not None and event.ts > incident.recovered_at:
            break
        if event.kind in _STARTS:
            start = event
        elif event.kind in _TROUBLE:
            start = None
    if start is None:
        return "it passed its health check again without a restart"
    return f"{start.message} at {_times(start.ts, tz)['text']}"


def next_steps(target: str, kinds: Sequence[str], gave_up: bool) -> list[dict[str, str]]:
    """The exact commands to run next, each with what it is for (shell-quoted names)."""
    name = shlex.quote(target)
    if target == SYSTEM_TARGET or not _TARGET_KINDS.intersection(kinds):
        steps = [
            {"what": "what happened", "command": f"erpwatch history --target {name}"},
        ]
        if Kind.ALERT_FAILED in kinds:
            steps.append({"what": "check the mail settings", "command": "erpwatch test-email"})
        return steps
    restart = (
        {"what": "once it is fixed, start it again", "command": f"erpwatch start {name}"}
        if gave_up
        else {
            "what": "once it is fixed, restart it at once (erpwatch still restarts it)",
            "command": f"erpwatch restart {name}",
        }
    )
    return [
        {"what": "see what it printed", "command": f"erpwatch logs {name}"},
        restart,
        {"what": "what happened so far", "command": f"erpwatch history --target {name}"},
    ]


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
        tz: tzinfo | None = None,
    ) -> None:
        self.hostname = clean_header(hostname, 64) or "localhost"
        self.tz = tz  # the local time zone mails show next to UTC (None: the host's)
        self.domain = _NOT_DOMAIN.sub("-", self.hostname) or "localhost"
        self.sender = sender
        self.stderr_lines = stderr_lines
        self.status_url = status_url
        self.env = LazyEnvironment(template_dir)
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
            state = {"reminder": "STILL DOWN", "update": "UPDATE"}.get(note.purpose, "DOWN")
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
            "now": _times(wall, self.tz),
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
        data = self.build(subject, note.recipients, message_id, text, html, wall, references)
        return Mail(
            purpose=note.purpose,
            target=note.target,
            incident_id=incident.id if incident else None,
            recipients=tuple(note.recipients),
            subject=subject,
            message_id=message_id,
            data=data,
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
            "now": _times(wall, self.tz),
            "subject": subject,
            "status_url": self.status_url,
            "snapshot": dict(self._snapshot()) if self._snapshot else None,
            "store": {
                "reason": trouble.reason,
                "since": _times(trouble.since, self.tz),
                "path": str(path),
                "buffered": trouble.buffered,
                "buffer_limit": buffer_limit,
                "dropped": trouble.dropped,
            },
        }
        message_id = self.message_id(f"{STORE_MAIL}-{trouble.since.isoformat()}", 0)
        text = self.env.get_template(f"email/{STORE_MAIL}.txt.j2").render(context)
        html = self.env.get_template(f"email/{STORE_MAIL}.html.j2").render(context)
        data = self.build(subject, recipients, message_id, text, html, wall, [])
        return Mail(
            purpose=STORE_MAIL,
            target=SYSTEM_TARGET,
            incident_id=None,
            recipients=tuple(recipients),
            subject=subject,
            message_id=message_id,
            data=data,
            trigger_kinds=(Kind.STORE_FAILING,),
        )

    def _incident_context(
        self, incident: Incident, note: Notification, wall: datetime
    ) -> dict[str, Any]:
        tz = self.tz
        resolved = note.purpose == "resolved"
        alerting = [e for e in incident.events if e.kind in note.kinds] or list(incident.events)
        latest = alerting[-1] if alerting else None
        crash = incident.last_crash()
        end = incident.recovered_at if resolved and incident.recovered_at else wall
        events = list(incident.events)
        retry_at, gave_up = next_retry(events)
        retry = None
        if retry_at is not None and retry_at > wall:
            retry = {**_times(retry_at, tz), "in": _duration((retry_at - wall).total_seconds())}
        cause = cause_of(crash, incident.stderr)
        code = crash.details.get("exit_code", crash.details.get("returncode")) if crash else None
        outage = None
        if resolved:
            outage = {
                "duration": _duration((end - incident.opened_at).total_seconds()),
                "start": _times(incident.opened_at, tz),
                "end": _times(end, tz),
                "restarts": incident.restarts,
                "back": _brought_back(incident, tz),
                "kinds": [phrase(k) for k in incident.alert_kinds],
                "last_crash": cause,
            }
        return {
            "incident": {
                "id": incident.id,
                "opened": _times(incident.opened_at, tz),
                "duration": _duration((end - incident.opened_at).total_seconds()),
                "restarts": incident.restarts,
                "duplicates": incident.duplicates,
                "kinds": [phrase(k) for k in incident.alert_kinds],
                "recovered": _times(incident.recovered_at, tz) if incident.recovered_at else None,
            },
            # The latest alerting event (none in a recovery mail: it would be "healthy").
            "event": _event_row(latest, tz) if latest and not resolved else None,
            "actions": _actions(incident),
            # Facts of the latest crash: current in a DOWN mail; a recovery mail tells them
            # only in ``outage``, labelled as from the outage.
            "exit_code": code if not resolved else None,
            "signal": crash.details.get("signal") if crash and not resolved else None,
            "cause": cause if not resolved else None,
            "stderr_tail": [] if resolved else incident.stderr_tail(self.stderr_lines),
            "next_retry": None if resolved else retry,
            "gave_up": gave_up and not resolved,
            "no_retry": gave_up and retry_at is None and not resolved,
            "next_steps": []
            if resolved
            else next_steps(incident.target, incident.alert_kinds, gave_up),
            "outage": outage,
            "events": [_event_row(e, tz) for e in events[-15:]],
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
    ) -> bytes:
        """The MIME mail, as sent (SMTP policy: CRLF line ends)."""
        # Imported here: the policy, header registry and generator (~0.5 MiB) load with the
        # first mail rendered, not with `erpwatch run`.
        from email.message import EmailMessage
        from email.policy import SMTP
        from email.utils import format_datetime

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
        return message.as_bytes(policy=SMTP)
