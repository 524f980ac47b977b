"""What receivers other than mail are sent: a webhook body, Alertmanager alerts, a hook's
event. Rendered when the pipeline step decides (so the outbox holds what was decided);
only what depends on the moment of sending (Alertmanager's ``endsAt`` of a firing alert,
the webhook signature) is added at delivery.

The webhook JSON body, version 1 (`WEBHOOK_VERSION`; fields are only ever added):

    version      "1"
    status       "firing" | "resolved" | "test"
    notification "firing" | "update" | "reminder" | "resolved" | "test" (`erpwatch test-alert`)
    incident     the incident id (the same for every notification of one outage)
    target, host, kind (the gravest kind announced), kinds, severity, summary
    started_at   ISO-8601 UTC, when the outage began
    ended_at     ISO-8601 UTC when resolved, else null
    restarts     automatic restarts during the incident
    events       up to 10 recent events: ts, kind, severity, message
    status_url   the status page (ERPWATCH_STATUS_PAGE_URL) or null
    affected     targets that depend on this one (AFTER) and failed with it: target -> kinds

The shipped ``slack`` and ``teams`` templates (``templates/webhook/``) turn that body into
what Slack's and Microsoft Teams' incoming webhooks accept; a template gets ``body`` (the
mapping above) and the filter ``tojson``, and must render JSON.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alerting.incidents import Incident
from alerting.receivers import SEVERITY_RANK, Receiver, severity_of
from alerting.render import Mail, phrase
from alerting.stages import Notification
from watchdog.events import SYSTEM_TARGET, Event, Severity
from watchdog.templating import LazyEnvironment

if TYPE_CHECKING:
    from jinja2 import Template

log = logging.getLogger(__name__)

WEBHOOK_VERSION = "1"
RECENT = 10  # events listed in a webhook body
ALERTMANAGER_PATH = "/api/v2/alerts"
FIRING, RESOLVED = "firing", "resolved"
REFRESH = "refresh"  # an Alertmanager re-send (`alerting.outbox.REFRESH`)
TEST = "test"  # `erpwatch test-alert`: proves a receiver is reached, reports no outage
TEST_ALERT_LIFETIME = timedelta(minutes=5)  # a test alert at Alertmanager resolves by itself


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts is not None else None


def _camel(kind: str) -> str:
    return "Erpwatch" + "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", kind))


def announced_kinds(note: Notification) -> list[str]:
    """The kinds a notification is about: its own, or the incident's for resolved ones."""
    if note.kinds:
        return list(note.kinds)
    if note.incident is not None:
        return sorted(note.incident.notified_kinds) or list(note.incident.alert_kinds)
    return []


def summary_of(note: Notification, host: str) -> str:
    if note.purpose == TEST:
        return f"test notification from erpwatch@{host}"
    words = ", ".join(phrase(kind) for kind in announced_kinds(note))
    if note.purpose == RESOLVED:
        return f"{note.target}@{host} recovered" + (f" (was: {words})" if words else "")
    state = "still down" if note.purpose == "reminder" else "down"
    return f"{note.target}@{host} {state}" + (f": {words}" if words else "")


def webhook_body(
    note: Notification, *, host: str, status_url: str | None, wall: datetime
) -> dict[str, Any]:
    incident = note.incident
    kinds = announced_kinds(note)
    gravest = max(kinds, key=lambda k: SEVERITY_RANK[severity_of([k])], default=note.purpose)
    events = list(incident.events)[-RECENT:] if incident is not None else []
    return {
        "version": WEBHOOK_VERSION,
        "status": note.purpose if note.purpose in (RESOLVED, TEST) else FIRING,
        "notification": note.purpose,
        "incident": incident.id if incident else None,
        "target": note.target,
        "host": host,
        "kind": gravest,
        "kinds": kinds,
        "severity": str(severity_of(kinds)),
        "summary": summary_of(note, host),
        "started_at": iso(incident.opened_at) if incident else iso(wall),
        "ended_at": iso(incident.recovered_at or wall)
        if incident and note.purpose == RESOLVED
        else None,
        "restarts": incident.restarts if incident else 0,
        "events": [
            {"ts": iso(e.ts), "kind": e.kind, "severity": e.severity, "message": e.message}
            for e in events
        ],
        "status_url": status_url,
        # Dependents whose alerts were folded into this incident: target -> kinds.
        "affected": {t: list(k) for t, k in incident.affected.items()} if incident else {},
    }


def alertmanager_alerts(
    incident: Incident,
    kinds: list[str],
    *,
    host: str,
    status_url: str | None,
    resolved_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """One alert per kind announced in the incident (its identity: alertname + labels).

    ``endsAt`` is set here only for a resolved incident; a firing alert gets it at delivery
    (`with_ends_at`), so a body that waited in the outbox is never sent already expired."""
    alerts = []
    for kind in kinds:
        severity = severity_of([kind])
        messages = [e.message for e in incident.events if e.kind == kind]
        alert: dict[str, Any] = {
            "labels": {
                "alertname": _camel(kind),
                "target": incident.target,
                "instance": host,
                "severity": str(severity),
                "kind": kind,
                "job": "erpwatch",
            },
            "annotations": {
                "summary": f"{incident.target}@{host}: {phrase(kind)}",
                "description": messages[-1] if messages else phrase(kind),
                "incident": incident.id,
            },
            "startsAt": iso(incident.opened_at),
        }
        if status_url:
            alert["generatorURL"] = status_url
        if resolved_at is not None:
            alert["endsAt"] = iso(resolved_at)
        alerts.append(alert)
    return alerts


def test_alert(*, host: str, status_url: str | None, wall: datetime) -> dict[str, Any]:
    """The Alertmanager alert of `erpwatch test-alert`: severity info, ending by itself."""
    alert: dict[str, Any] = {
        "labels": {
            "alertname": _camel(TEST),
            "target": SYSTEM_TARGET,
            "instance": host,
            "severity": str(Severity.INFO),
            "kind": TEST,
            "job": "erpwatch",
        },
        "annotations": {
            "summary": f"test notification from erpwatch@{host}",
            "description": "sent by `erpwatch test-alert`: alerts reach this Alertmanager",
        },
        "startsAt": iso(wall),
        "endsAt": iso(wall + TEST_ALERT_LIFETIME),
    }
    if status_url:
        alert["generatorURL"] = status_url
    return alert


def with_ends_at(data: bytes, ends_at: datetime) -> bytes:
    """Alerts without ``endsAt`` (firing) get one: Alertmanager keeps them until then."""
    alerts = json.loads(data)
    for alert in alerts:
        alert.setdefault("endsAt", iso(ends_at))
    return json.dumps(alerts).encode()


def hook_event(event: Event, host: str) -> dict[str, Any]:
    return {
        "id": event.id,
        "ts": iso(event.ts),
        "target": event.target,
        "host": host,
        "kind": str(event.kind),
        "severity": str(event.severity),
        "message": event.message,
        "details": dict(event.details),
    }


class PayloadRenderer:
    """Turns notifications (and, for the hook, events) into outbox rows per receiver."""

    def __init__(
        self,
        *,
        hostname: str,
        status_url: str | None,
        template_dir: Path | None = None,
        hook_on: Iterable[str] = (),
    ) -> None:
        self.hook_on = frozenset(hook_on)
        self.hostname = hostname
        self.status_url = status_url
        self.template_dir = template_dir
        self.env = LazyEnvironment(template_dir)

    def webhook(self, receiver: Receiver, note: Notification, wall: datetime) -> Mail:
        body = webhook_body(note, host=self.hostname, status_url=self.status_url, wall=wall)
        return self._row(receiver, note, self._render_body(receiver, body), body["summary"])

    def alertmanager(self, receiver: Receiver, note: Notification, wall: datetime) -> Mail | None:
        incident = note.incident
        if incident is None:
            return None
        resolved_at = (incident.recovered_at or wall) if note.purpose == RESOLVED else None
        chosen = announced_kinds(note)
        if note.purpose != RESOLVED:
            chosen = sorted(set(chosen) | incident.notified_kinds)  # every kind still firing
        alerts = alertmanager_alerts(
            incident,
            chosen,
            host=self.hostname,
            status_url=self.status_url,
            resolved_at=resolved_at,
        )
        if not alerts:
            return None
        summary = summary_of(note, self.hostname)
        return self._row(receiver, note, json.dumps(alerts).encode(), summary)

    def test(self, receiver: Receiver, wall: datetime) -> bytes:
        """What `erpwatch test-alert` sends a receiver other than mail, rendered as for a
        real notification (a webhook's template included)."""
        if receiver.kind == "webhook":
            return self.webhook(receiver, Notification(TEST, SYSTEM_TARGET, []), wall).data
        if receiver.kind == "alertmanager":
            alert = test_alert(host=self.hostname, status_url=self.status_url, wall=wall)
            return json.dumps([alert]).encode()
        event: dict[str, Any] = {
            "id": None,
            "ts": iso(wall),
            "target": SYSTEM_TARGET,
            "host": self.hostname,
            "kind": TEST,
            "severity": str(Severity.INFO),
            "message": "test notification from erpwatch test-alert",
            "details": {},
        }
        return json.dumps(event).encode()

    def hook(self, receiver: Receiver, event: Event) -> Mail:
        data = json.dumps(hook_event(event, self.hostname), default=str).encode()
        return Mail(
            purpose="hook",
            target=event.target,
            incident_id=None,
            recipients=(),
            subject=f"{event.kind}: {event.message}"[:200],
            message_id=f"event-{event.id}",
            data=data,
            trigger_kinds=(str(event.kind),),
            receiver=receiver.name,
        )

    def exec(
        self,
        receivers: Sequence[Receiver],
        notes: Sequence[Notification],
        events: Sequence[Event],
        wall: datetime,
    ) -> list[Mail]:
        """The rows of every receiver but mail: the notifications for webhooks and
        Alertmanager (each filtered by its minimum severity), the events for the hook."""
        rows: list[Mail] = []
        for receiver in receivers:
            if receiver.kind == "hook":
                rows += [
                    self.hook(receiver, event)
                    for event in events
                    if event.kind in self.hook_on and receiver.accepts(event.severity)
                ]
                continue
            for note in notes:
                if receiver.kind == "email" or not receiver.accepts(note_severity(note)):
                    continue
                if receiver.kind == "webhook":
                    rows.append(self.webhook(receiver, note, wall))
                elif (row := self.alertmanager(receiver, note, wall)) is not None:
                    rows.append(row)
        return rows

    def refresh(
        self, receivers: Sequence[Receiver], incidents: Iterable[Incident], wall: datetime
    ) -> list[Mail]:
        """Re-sends of every incident still firing at Alertmanager (one row each)."""
        rows: list[Mail] = []
        firing = [i for i in incidents if i.notified_kinds and not i.closed]
        for receiver in receivers:
            if receiver.kind != "alertmanager":
                continue
            for incident in firing:
                kinds = sorted(incident.notified_kinds)
                if not receiver.accepts(severity_of(kinds)):
                    continue
                note = Notification(REFRESH, incident.target, [], incident, kinds)
                if (row := self.alertmanager(receiver, note, wall)) is not None:
                    rows.append(row)
        return rows

    def _row(self, receiver: Receiver, note: Notification, data: bytes, summary: str) -> Mail:
        incident = note.incident
        key = f"{incident.id}.{incident.thread_count}" if incident else note.purpose
        return Mail(
            purpose=note.purpose,
            target=note.target,
            incident_id=incident.id if incident else None,
            recipients=(),
            subject=summary[:200],
            message_id=f"{receiver.name}.{key}.{note.purpose}",
            data=data,
            trigger_kinds=tuple(incident.alert_kinds if incident else note.kinds),
            receiver=receiver.name,
        )

    def _render_body(self, receiver: Receiver, body: Mapping[str, Any]) -> bytes:
        from jinja2 import TemplateError

        if receiver.template == "json":
            return json.dumps(body).encode()
        name = (
            f"webhook/{receiver.template}.json.j2"
            if receiver.template in ("slack", "teams")
            else receiver.template
        )
        try:
            text = self._template(name).render(body=body)
            json.loads(text)  # a template must render JSON
        except (TemplateError, OSError, ValueError) as exc:
            log.warning(
                "webhook template %s for %s failed (%s: %s); sending the json body instead",
                name,
                receiver.name,
                type(exc).__name__,
                exc,
            )
            return json.dumps(body).encode()
        return text.encode()

    def _template(self, name: str) -> Template:
        path = Path(name)
        if path.is_absolute():
            return self.env.from_string(path.read_text(encoding="utf-8"))
        return self.env.get_template(name)


def note_severity(note: Notification) -> Severity:
    return severity_of(announced_kinds(note))
