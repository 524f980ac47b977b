"""Receivers from settings, and what each is sent (pure: no I/O, a fixed wall clock)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerting.http import classify_response, retry_after, sign
from alerting.incidents import IncidentBook
from alerting.payloads import PayloadRenderer, with_ends_at
from alerting.receivers import Receiver, auto_template, receivers_from, severity_of, url_name
from alerting.stages import Notification
from tests.alerting.conftest import make_settings
from watchdog.config import ConfigError
from watchdog.events import Event, Kind, Severity

WALL = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SLACK = "https://hooks.slack.com/services/T0/B0/secret"
TEAMS = "https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/def"


def incident_note(
    purpose: str = "firing", kinds: tuple[str, ...] = ("crash-loop",)
) -> Notification:
    book = IncidentBook()
    track = book.track("backend")
    event = Event.of("backend", Kind.CRASH_LOOP, 'crashed 3 times; "quotes" <and> tags')
    event = dataclasses.replace(event, id=41, ts=WALL)
    track.observe(event, 0.0)
    incident = track.open_incident(event, 0.0)
    incident.notified_kinds.update(kinds)
    if purpose == "resolved":
        incident.recovered_at = WALL + timedelta(minutes=5)
    return Notification(
        purpose, "backend", [], incident, list(kinds) if purpose != "resolved" else []
    )


def renderer(tmp_path: Path | None = None) -> PayloadRenderer:
    return PayloadRenderer(hostname="erp1", status_url="http://erp1:8765/", template_dir=tmp_path)


def test_receivers_have_stable_names_that_never_show_a_url_path(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, None,
        webhook_urls=[SLACK, TEAMS, "http://127.0.0.1:9000/x"],
        webhook_templates=["auto", "json"],
        alertmanager_url=["http://am1:9093/", "http://am2:9093"],
        hook_command="/usr/local/bin/page --team ops",
    )  # fmt: skip
    receivers = receivers_from(settings)
    names = [r.name for r in receivers]
    assert names[0] == "email" and names[-1] == "hook"
    assert names[1] == url_name("webhook", SLACK) and names[1].startswith(
        "webhook-hooks.slack.com-"
    )
    assert all("secret" not in n and "webhookb2" not in n for n in names)
    assert [r.template for r in receivers if r.kind == "webhook"] == ["slack", "json", "json"]
    assert [r.url for r in receivers if r.kind == "alertmanager"] == [
        "http://am1:9093", "http://am2:9093",
    ]  # fmt: skip
    assert receivers[-1].argv == ("/usr/local/bin/page", "--team", "ops")
    assert receivers_from(settings) == receivers  # the same names every time


def test_auto_template_and_severity() -> None:
    assert auto_template(SLACK) == "slack" and auto_template(TEAMS) == "teams"
    assert auto_template("https://prod-1.westeurope.logic.azure.com/workflows/x") == "teams"
    assert auto_template("https://example.com/hooks.slack.com") == "json"
    assert severity_of(["crashed", "down"]) == Severity.CRITICAL
    assert severity_of([]) == Severity.INFO
    email = Receiver("email", "email", Severity.WARNING)
    assert email.accepts(Severity.CRITICAL) and not email.accepts(Severity.INFO)


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"webhook_urls": "ftp://x/y"}, "ERPWATCH_WEBHOOK_URLS"),
        ({"webhook_urls": "https://a/b", "webhook_templates": "slack,teams"},
         "ERPWATCH_WEBHOOK_TEMPLATES"),
        ({"webhook_urls": "https://a/b", "webhook_templates": "fancy"},
         "ERPWATCH_WEBHOOK_TEMPLATES"),
        ({"webhook_headers": "X-Token: abc"}, "ERPWATCH_WEBHOOK_HEADERS"),
        ({"hook_on": "down,crashloop"}, "ERPWATCH_HOOK_ON"),
        ({"webhook_min_severity": "loud"}, "ERPWATCH_WEBHOOK_MIN_SEVERITY"),
        ({"alertmanager_url": "am1:9093"}, "ERPWATCH_ALERTMANAGER_URL"),
    ],
)  # fmt: skip
def test_wrong_receiver_settings_name_the_variable_and_never_echo_secrets(
    tmp_path: Path, values: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings(tmp_path, None, **values)
    assert variable in str(info.value)
    assert "abc" not in str(info.value)  # a header value is a secret


def test_webhook_json_body_version_1() -> None:
    note = incident_note()
    row = renderer().webhook(
        Receiver("webhook-x", "webhook", Severity.INFO, "http://x"), note, WALL
    )
    body = json.loads(row.data)
    assert body == {
        "version": "1",
        "status": "firing",
        "notification": "firing",
        "incident": note.incident.id if note.incident else None,
        "target": "backend",
        "host": "erp1",
        "kind": "crash-loop",
        "kinds": ["crash-loop"],
        "severity": "critical",
        "summary": "backend@erp1 down: crash loop",
        "started_at": "2026-12-01T12:00:00Z",
        "ended_at": None,
        "restarts": 0,
        "events": [{"ts": "2026-12-01T12:00:00Z", "kind": "crash-loop", "severity": "critical",
                    "message": 'crashed 3 times; "quotes" <and> tags'}],
        "status_url": "http://erp1:8765/",
        "affected": {},
    }  # fmt: skip
    assert row.receiver == "webhook-x" and row.recipients == ()


@pytest.mark.parametrize("purpose", ["firing", "resolved"])
def test_slack_and_teams_bodies_are_json_those_services_accept(purpose: str) -> None:
    note = incident_note(purpose)
    slack = json.loads(
        renderer().webhook(Receiver("w", "webhook", Severity.INFO, SLACK, "slack"), note, WALL).data
    )
    assert slack["text"].endswith("crash loop" if purpose == "firing" else "(was: crash loop)")
    assert slack["blocks"][0]["type"] == "section"
    assert any(b["type"] == "actions" for b in slack["blocks"])  # the status page button
    assert '"quotes" <and> tags' in json.dumps(slack, ensure_ascii=False).replace("\\", "")
    teams = json.loads(
        renderer().webhook(Receiver("w", "webhook", Severity.INFO, TEAMS, "teams"), note, WALL).data
    )
    assert teams["type"] == "message"
    (attachment,) = teams["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (
        card["type"] == "AdaptiveCard"
        and card["body"][0]["text"] == slack["text"][slack["text"].index(" ") + 1 :]
    )
    assert card["actions"][0]["url"] == "http://erp1:8765/"


def test_a_broken_user_template_falls_back_to_the_json_body(tmp_path: Path) -> None:
    (tmp_path / "mine.json.j2").write_text("{{ body.no_such_field }} not json")
    receiver = Receiver("w", "webhook", Severity.INFO, "http://x", "mine.json.j2")
    body = json.loads(renderer(tmp_path).webhook(receiver, incident_note(), WALL).data)
    assert body["version"] == "1"
    (tmp_path / "good.json.j2").write_text('{"msg": {{ body.summary | tojson }}}')
    receiver = Receiver("w", "webhook", Severity.INFO, "http://x", "good.json.j2")
    assert json.loads(renderer(tmp_path).webhook(receiver, incident_note(), WALL).data) == {
        "msg": "backend@erp1 down: crash loop"
    }


def test_alertmanager_alerts_get_ends_at_only_at_delivery_unless_resolved() -> None:
    am = Receiver("am", "alertmanager", Severity.INFO, "http://am:9093")
    firing = renderer().alertmanager(am, incident_note(kinds=("crash-loop", "down")), WALL)
    assert firing is not None
    alerts = json.loads(firing.data)
    assert [a["labels"]["alertname"] for a in alerts] == ["ErpwatchCrashLoop", "ErpwatchDown"]
    assert all("endsAt" not in a for a in alerts)
    later = json.loads(with_ends_at(firing.data, WALL + timedelta(minutes=4)))
    assert {a["endsAt"] for a in later} == {"2026-12-01T12:04:00Z"}
    resolved = renderer().alertmanager(am, incident_note("resolved", ("crash-loop", "down")), WALL)
    assert resolved is not None
    done = json.loads(resolved.data)
    assert {a["endsAt"] for a in done} == {"2026-12-01T12:05:00Z"}
    assert json.loads(with_ends_at(resolved.data, WALL + timedelta(hours=1))) == done


def test_http_classification() -> None:
    assert classify_response(204, "", {}, WALL) is None
    slow = classify_response(429, "slow down", {"retry-after": "12"}, WALL)
    assert slow is not None and not slow.permanent and slow.retry_after == 12
    dated = classify_response(503, "", {"retry-after": "Tue, 01 Dec 2026 12:01:00 GMT"}, WALL)
    assert dated is not None and dated.retry_after == 60 and not dated.permanent
    huge = classify_response(429, "", {"retry-after": "99999999"}, WALL)
    assert huge is not None and huge.retry_after == 3600
    for status in (400, 401, 403, 404, 410, 413):
        error = classify_response(status, "no", {}, WALL)
        assert error is not None and error.permanent
    redirect = classify_response(301, "", {"location": "https://x/new?token=1"}, WALL)
    assert redirect is not None and redirect.permanent and "token" not in redirect.reason
    assert retry_after("soon", WALL) is None and retry_after("-5", WALL) == 0
    assert sign("k", "1700000000", b"{}") == sign("k", "1700000000", b"{}")
    assert sign("k", "1700000000", b"{}") != sign("k", "1700000001", b"{}")
