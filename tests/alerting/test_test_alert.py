"""``erpwatch test-alert``: one test notification to each configured receiver, sent for real
to a real SMTP server, a real webhook receiver, Debian's real Alertmanager and a real hook,
each answer reported, no secret printed."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerting.payloads import PayloadRenderer
from alerting.receivers import Receiver
from tests.alerting.conftest import SmtpServer
from tests.alerting.http_receiver import HttpReceiver
from tests.alerting.test_alertmanager import BINARY, Alertmanager
from tests.helpers import free_port
from watchdog.cli import main
from watchdog.events import Severity

TOKEN = "t0ken-in-the-path"  # HttpReceiver's URL carries it, as a Slack URL does
SECRET = "webhook-signing-s3cret"
HOOK = (
    "import json, os, sys; event = json.load(sys.stdin); "
    "open(sys.argv[1], 'w').write(json.dumps([event, os.environ['ERPWATCH_EVENT_KIND']]))"
)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    if BINARY is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus-alertmanager is not installed (apt-get install it)")
        pytest.skip("prometheus-alertmanager is not installed")
    instance = Alertmanager(tmp_path / "am")
    yield instance
    instance.stop()


@pytest.fixture
def webhook() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver().start()
    yield receiver
    receiver.stop()


def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **settings: str) -> None:
    monkeypatch.setenv("ERPWATCH_LOG_PATH", str(tmp_path / "logs"))
    monkeypatch.setenv("ERPWATCH_DB_PATH", str(tmp_path / "erpwatch.db"))
    for key, value in settings.items():
        monkeypatch.setenv(f"ERPWATCH_{key.upper()}", value)


def test_every_receiver_gets_a_test_and_each_answer_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    smtp: SmtpServer, webhook: HttpReceiver, alertmanager: Alertmanager,
) -> None:  # fmt: skip
    dead = f"http://127.0.0.1:{free_port()}/hook/{TOKEN}"  # nothing listens there
    ran = tmp_path / "hook.json"
    configure(
        monkeypatch, tmp_path,
        smtp_host="127.0.0.1", smtp_port=str(smtp.port), smtp_security="none",
        alert_to="ops@example.com",
        webhook_urls=f"{webhook.url},{dead}", webhook_templates="slack,json",
        webhook_secret=SECRET, alertmanager_url=alertmanager.url,
        hook_command=shlex.join([sys.executable, "-c", HOOK, str(ran)]),
    )  # fmt: skip

    assert main(["test-alert"]) == 1  # one receiver failed
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert (
        list(lines)
        == [
            "email",
            *(n for n in lines if n.startswith("webhook-127.0.0.1-")),
            *(n for n in lines if n.startswith("alertmanager-")),
            "hook",
        ]
        and len(lines) == 5
    ), out
    failed = [name for name, result in lines.items() if result.startswith("FAILED")]
    assert len(failed) == 1, out
    assert lines[failed[0]].startswith("FAILED (transient): ConnectError"), out
    assert all(result.startswith("sent: ") for name, result in lines.items() if name not in failed)
    assert TOKEN not in out and SECRET not in out

    assert len(smtp.messages) == 1 and "TEST" in smtp.messages[0]["Subject"]
    (posted,) = webhook.requests
    slack = posted.json()  # the Slack template rendered the test body
    assert slack["text"].startswith(":information_source: test notification from erpwatch@")
    assert posted.headers["x-erpwatch-signature"].startswith("sha256=")
    (alert,) = alertmanager.alerts()
    assert alert["labels"]["alertname"] == "ErpwatchTest"
    assert alert["labels"]["severity"] == "info" and alert["labels"]["target"] == "erpwatch"
    event, kind = json.loads(ran.read_text())
    assert kind == "test" and event["kind"] == "test" and event["severity"] == "info"


def test_named_receivers_only_and_an_unknown_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    webhook: HttpReceiver,
) -> None:  # fmt: skip
    configure(monkeypatch, tmp_path, webhook_urls=webhook.url)

    assert main(["test-alert", "webhook"]) == 0  # by kind: no mail written
    out = capsys.readouterr().out
    assert out.startswith("webhook-127.0.0.1-") and "sent: HTTP 200" in out
    body = webhook.requests[0].json()
    assert body["status"] == body["notification"] == "test" and body["incident"] is None
    assert not (tmp_path / "logs" / "mail").exists()

    assert main(["test-alert", "email"]) == 0  # no SMTP host: an .eml file, as in the lane
    assert "sent: written to" in capsys.readouterr().out
    assert len(list((tmp_path / "logs" / "mail").glob("*.eml"))) == 1

    assert main(["test-alert", "pager"]) == 2
    err = capsys.readouterr().err
    assert "no receiver 'pager'" in err and "email, webhook-127.0.0.1-" in err
    assert TOKEN not in err and len(webhook.requests) == 1


def test_test_payloads_are_marked_test_and_the_alert_ends_by_itself() -> None:
    wall = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    payloads = PayloadRenderer(hostname="erp1", status_url="https://erp1.example.com/w/")
    am = Receiver("alertmanager-am-1", "alertmanager", Severity.INFO, url="http://am:9093")
    (alert,) = json.loads(payloads.test(am, wall))
    assert alert["labels"]["kind"] == "test" and alert["generatorURL"].startswith("https://")
    ends = datetime.fromisoformat(alert["endsAt"]) - datetime.fromisoformat(alert["startsAt"])
    assert ends == timedelta(minutes=5)
    teams = Receiver("webhook-teams-1", "webhook", Severity.INFO, url="http://x", template="teams")
    card = json.loads(payloads.test(teams, wall))
    title = card["attachments"][0]["content"]["body"][0]
    assert title["color"] == "accent" and title["text"] == "test notification from erpwatch@erp1"
    hook = Receiver("hook", "hook", Severity.INFO, argv=("true",))
    assert json.loads(payloads.test(hook, wall))["ts"] == "2026-12-01T12:00:00Z"
