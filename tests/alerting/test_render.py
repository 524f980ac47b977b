"""What the incident mails say, rendered from the pure pipeline on fake time: the DOWN mail's
next steps and next retry, the RECOVERED mail's outage summary, times, and the phone layout."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

from alerting.incidents import CAUSE_MAX, EventSummary, TargetTrack, TimeBase
from alerting.render import Renderer, next_retry
from alerting.stages import Notification
from tests.alerting.test_stages import T0, Harness, ev
from watchdog.events import SYSTEM_TARGET, Event, Kind

STDERR = [
    "Traceback (most recent call last):",
    '  File "/srv/erp/app.py", line 12, in <module>',
    "ConnectionError: could not connect to postgres",
]
CAUSE = "exit code 1: ConnectionError: could not connect to postgres"


class Mails(Harness):
    """The stage harness whose events happen at its (fake) wall time, each notification
    rendered at the step that produced it, as the service does."""

    def __init__(self, tz: Any = UTC, **policy: Any) -> None:
        policy.setdefault("group_wait", 10.0)
        policy.setdefault("group_interval", 300.0)
        super().__init__(**policy)
        self.renderer = Renderer(hostname="erp1", sender="erpwatch@erp1", stderr_lines=20, tz=tz)
        self.mails: list[EmailMessage] = []
        self.notes: list[Notification] = []

    def at(self, kind: Kind, target: str = "backend", **details: Any) -> Event:
        return ev(kind, target, **details)  # stamped when it runs

    def iso_in(self, seconds: float) -> str:
        """``seconds`` after the current step, as ``next_retry_at`` is written."""
        return (self.wall + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    def run(self, *events: Event) -> list[Notification]:
        notes = super().run(*(dataclasses.replace(e, ts=self.wall) for e in events))
        for note in notes:
            data = self.renderer.render(note, self.wall).data
            message = message_from_bytes(data, policy=policy.default)
            assert isinstance(message, EmailMessage)
            self.mails.append(message)
        self.notes.extend(notes)
        return notes

    def crash_loop(self) -> None:
        """healthy, a crash with a traceback, a restart, the crash loop (at t = 1 s)."""
        self.run(self.at(Kind.HEALTHY))
        crash = self.at(Kind.CRASHED, exit_code=1, stderr_tail=STDERR, cause=CAUSE)
        self.after(1, crash, self.at(Kind.RESTARTED, reason="crashed (exit code 1)"))
        self.run(self.at(Kind.CRASH_LOOP))


def body(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def test_down_mail_says_what_to_do_next_with_the_exact_commands() -> None:
    h = Mails()
    h.crash_loop()
    h.after(10)
    (down,) = h.mails
    assert down["Subject"] == "[erpwatch] DOWN backend@erp1: crash loop"
    text = body(down)
    assert f"Cause:         {CAUSE}" in text
    assert "What to do next:" in text
    for command in ("erpwatch logs backend", "erpwatch history --target backend"):
        assert f"      {command}\n" in text, command
    # erpwatch still restarts it: "start" would do nothing, "restart" does it now
    assert "erpwatch restart backend" in text and "erpwatch start backend" not in text
    assert "Next retry" not in text  # the events announce none: nothing is claimed
    html = body(down, "html")
    assert "<code" in html and "erpwatch logs backend</code>" in html


def test_update_after_the_restart_limit_says_start_and_when_erpwatch_retries() -> None:
    h = Mails()
    h.crash_loop()
    h.after(10)
    retry = h.iso_in(20 + 900)  # announced at t = 31 s for 15 min later
    h.after(20, h.at(Kind.RESTART_LIMIT_REACHED, next_retry_at=retry, next_retry_in_s=900.0))
    h.after(26, h.at(Kind.DOWN, next_retry_at=retry, next_retry_in_s=874.0))
    h.after(254)  # t = 311 s: the interval since the DOWN mail (t = 11 s) has passed
    down, update = h.mails
    assert update["Subject"] == "[erpwatch] UPDATE backend@erp1: restart limit reached, down"
    assert update["In-Reply-To"] == down["Message-ID"]
    text = body(update)
    assert "Next retry:    erpwatch retries by itself at 2026-01-01 12:15:31 UTC (in 10m 20s)" in (
        text
    )
    assert "erpwatch start backend" in text and "erpwatch restart backend" not in text
    assert "erpwatch logs backend" in text and "erpwatch history --target backend" in text
    assert "erpwatch retries by itself at 2026-01-01 12:15:31 UTC" in body(update, "html")


def test_next_retry_renders_gracefully_without_next_retry_at() -> None:
    h = Mails(group_wait=0)
    h.run(h.at(Kind.RESTART_LIMIT_REACHED, retry_in_s=900.0))  # the older detail: its time + s
    assert "erpwatch retries by itself at 2026-01-01 12:15:00 UTC (in 15m 00s)" in body(h.mails[0])
    h = Mails(group_wait=0)
    h.run(h.at(Kind.RESTART_LIMIT_REACHED))  # nothing scheduled
    text = body(h.mails[0])
    assert "Next retry:    none scheduled" in text and "erpwatch start backend" in text
    h = Mails(group_wait=0)
    h.run(h.at(Kind.CRASH_LOOP, next_retry_at="not a time"))  # dropped, not shown, no crash
    assert "Next retry" not in body(h.mails[0])


def test_a_retry_that_has_happened_is_not_announced_again() -> None:
    h = Mails(group_wait=0, reminder_interval=1000)
    h.run(h.at(Kind.RESTART_LIMIT_REACHED, next_retry_at=h.iso_in(900)))
    h.after(900, h.at(Kind.RESTARTED, reason="slow retry after the restart limit"))
    h.after(100)  # the reminder, after the retry ran
    reminder = body(h.mails[-1])
    assert "STILL DOWN" in reminder and "Next retry" not in reminder
    assert "erpwatch restart backend" in reminder  # it is restarting again, not given up


def test_next_retry_reads_the_latest_announcement_only() -> None:
    def summary(kind: Kind, **details: Any) -> EventSummary:
        return EventSummary(None, T0, kind, "critical", str(kind), details)

    at = "2026-01-01T12:15:00Z"
    assert next_retry([summary(Kind.RESTART_LIMIT_REACHED, next_retry_at=at)]) == (
        T0 + timedelta(minutes=15),
        True,
    )
    assert next_retry([summary(Kind.RESTART_LIMIT_REACHED, next_retry_at=at),
                       summary(Kind.STARTED)]) == (None, False)  # fmt: skip
    assert next_retry([summary(Kind.CRASH_LOOP)]) == (None, False)


def test_recovered_mail_summarises_the_outage_without_quoting_the_old_stderr() -> None:
    h = Mails(recovery_after=60)
    h.crash_loop()
    h.after(10)
    h.after(20, h.at(Kind.RESTART_LIMIT_REACHED, next_retry_at=h.iso_in(900)))
    retried = dataclasses.replace(
        h.at(Kind.RESTARTED, reason="slow retry after the restart limit"),
        message="restarted (slow retry after the restart limit)",
    )
    h.after(900, retried)
    h.after(5, h.at(Kind.HEALTHY))
    h.after(60)
    recovered = h.mails[-1]
    assert recovered["Subject"] == "[erpwatch] RECOVERED backend@erp1"
    text, html = body(recovered), body(recovered, "html")
    assert "has RECOVERED: the outage lasted 15m 35s." in text
    assert "From:          2026-01-01 12:00:01 UTC" in text  # its first crash
    assert "To:            2026-01-01 12:15:36 UTC, healthy again" in text
    assert "Restarts:      2" in text
    back = "restarted (slow retry after the restart limit) at 2026-01-01 12:15:31 UTC"
    assert f"Brought back:  {back}" in text
    assert "Alerts:        crash loop, restart limit reached" in text
    assert f"Last crash during the outage (not current): {CAUSE}" in text
    for stale in ("Traceback", "Exit code", "Event:", "healthy: healthy", "Next retry",
                  "What to do next", "Cause:"):  # fmt: skip
        assert stale not in text, stale
        assert stale not in html, stale
    assert "Events of the outage:" in text


def test_recovered_mail_tells_when_no_restart_brought_it_back() -> None:
    h = Mails(group_wait=0, recovery_after=60)
    h.run(h.at(Kind.UNHEALTHY))
    h.run(h.at(Kind.DOWN))
    h.after(30, h.at(Kind.HEALTHY))
    h.after(60)
    text = body(h.mails[-1])
    assert "Brought back:  it passed its health check again without a restart" in text
    assert "Last crash during the outage" not in text


def test_local_time_is_shown_only_where_it_differs_from_utc() -> None:
    h = Mails(group_wait=0)
    h.run(h.at(Kind.DOWN))
    text = body(h.mails[0])
    assert "UTC / UTC" not in text and "UTC (" not in text
    assert "opened 2026-01-01 12:00:00 UTC\n" in text
    h = Mails(group_wait=0, tz=ZoneInfo("Europe/Berlin"))
    h.run(h.at(Kind.DOWN))
    text = body(h.mails[0])
    assert "opened 2026-01-01 12:00:00 UTC (13:00:00 CET)" in text
    h = Mails(group_wait=0, tz=ZoneInfo("Pacific/Auckland"))  # another day there: dated
    h.run(h.at(Kind.DOWN))
    assert "opened 2026-01-01 12:00:00 UTC (2026-01-02 01:00:00 NZDT)" in body(h.mails[0])


def test_stderr_wraps_on_a_phone_and_is_escaped() -> None:
    h = Mails(group_wait=0)
    long_line = "E" * 400 + " <script>alert(1)</script>"
    h.run(h.at(Kind.CRASHED, exit_code=1, stderr_tail=[long_line]), h.at(Kind.CRASH_LOOP))
    html = body(h.mails[0], "html")
    match = re.search(r'<pre style="([^"]*)">', html)
    assert match is not None, html
    style = match.group(1)
    assert "white-space: pre-wrap" in style and "word-break: break-all" in style
    assert "max-width: 100%" in style
    assert 'name="viewport"' in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_hostile_target_names_are_quoted_in_commands_and_escaped_in_html() -> None:
    h = Mails(group_wait=0)
    target = "a b;<rm -rf>"
    h.run(h.at(Kind.CRASH_LOOP, target=target))
    text, html = body(h.mails[0]), body(h.mails[0], "html")
    assert "erpwatch logs 'a b;<rm -rf>'" in text
    assert "erpwatch logs &#39;a b;&lt;rm -rf&gt;&#39;</code>" in html


def test_mail_about_erpwatch_itself_suggests_its_history_only() -> None:
    h = Mails(group_wait=0, alert_on=frozenset({"watchdog-fault"}))
    h.run(h.at(Kind.WATCHDOG_FAULT, target=SYSTEM_TARGET))
    text = body(h.mails[0])
    assert "erpwatch history --target erpwatch" in text
    assert "erpwatch logs" not in text and "erpwatch start" not in text


def test_summaries_keep_cause_and_retry_bounded_and_round_trip() -> None:
    crash = ev(Kind.CRASHED, exit_code=1, cause="x" * 5000, next_retry_at="2026-01-01T12:15:00Z")
    summary = EventSummary.of(crash)
    assert len(json.dumps(summary.details["cause"])) <= CAUSE_MAX
    assert "next_retry_at" not in summary.details  # only the kinds that schedule a retry
    limit = ev(Kind.RESTART_LIMIT_REACHED, next_retry_at="2026-01-01T12:15:00Z",
               next_retry_in_s=900, cause="only crashes carry a cause")  # fmt: skip
    kept = EventSummary.of(limit).details
    assert kept == {"next_retry_at": "2026-01-01T12:15:00Z", "next_retry_in_s": 900.0}
    assert EventSummary.from_json(EventSummary.of(limit).to_json()).details == kept
    hostile = ev(Kind.DOWN, next_retry_at="9" * 1000, next_retry_in_s="soon")
    assert EventSummary.of(hostile).details == {}
    h = Harness(group_wait=0)
    h.run(ev(Kind.CRASHED, cause=CAUSE), limit)
    base = TimeBase(h.clock.now(), T0)
    track = TargetTrack.from_json(
        json.loads(json.dumps(h.book.track("backend").to_json(base))), base
    )
    assert track.incident is not None and track.incident.crash is not None
    assert track.incident.crash.details["cause"] == CAUSE
