"""The pure pipeline on fake time: grouping, dedup, recovery, reminders, rate limit, silences."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from alerting.incidents import STDERR_BYTES_MAX, IncidentBook, TargetTrack, TimeBase
from alerting.render import Renderer
from alerting.silences import Silence, parse_duration
from alerting.stages import Ctx, Notification, Pipeline, Policy, RateLimiter, next_deadline
from watchdog.clock import FakeClock
from watchdog.events import Event, Kind

_ids = itertools.count(1)
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ev(kind: Kind, target: str = "backend", **details: Any) -> Event:
    return Event.of(target, kind, f"{kind} happened", **details).with_id(next(_ids))


class Harness:
    def __init__(self, **policy: Any) -> None:
        values: dict[str, Any] = {
            "alert_on": frozenset({"restart-limit-reached", "crash-loop", "down", "alert-failed"}),
            "recipients": ("ops@example.com",),
            "group_wait": 10.0,
            "recovery_after": 60.0,
            "reminder_interval": 4 * 3600.0,
            "rate_limit": 10,
            "rate_window": 3600.0,
        }
        values.update(policy)
        self.policy = Policy(**values)
        self.clock = FakeClock()
        self.start = self.clock.now()
        self.book = IncidentBook()
        self.limiter = RateLimiter(self.policy.rate_limit, self.policy.rate_window)
        self.pipeline = Pipeline()
        self.silences: list[Silence] = []
        self.decisions: list[str] = []

    @property
    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.clock.now() - self.start)

    def run(self, *events: Event) -> list[Notification]:
        ctx = Ctx(self.clock.now(), self.wall, self.policy, self.book, self.limiter, self.silences)
        ctx, notes = self.pipeline.exec(ctx, list(events))
        self.decisions.extend(d.message for d in ctx.decisions)
        self.last_ctx = ctx
        return notes

    def after(self, seconds: float, *events: Event) -> list[Notification]:
        self.clock.advance(seconds)
        return self.run(*events)


def test_group_wait_collects_a_targets_events_into_one_mail() -> None:
    h = Harness()
    assert h.run(ev(Kind.CRASH_LOOP)) == []
    assert h.after(5, ev(Kind.RESTART_LIMIT_REACHED)) == []
    notes = h.after(5)
    assert [(n.purpose, n.kinds) for n in notes] == [
        ("firing", ["crash-loop", "restart-limit-reached"])
    ]
    assert h.after(100) == []


def test_non_alerting_kinds_never_open_an_incident() -> None:
    h = Harness(group_wait=0)
    assert h.run(ev(Kind.CRASHED), ev(Kind.RESTARTED), ev(Kind.UNHEALTHY)) == []
    assert h.book.open_incidents() == []


def test_incident_adopts_the_streak_of_crashes_that_led_to_it() -> None:
    h = Harness(group_wait=0)
    h.run(ev(Kind.HEALTHY), ev(Kind.CRASHED, stderr_tail=["boom"]), ev(Kind.RESTARTED))
    (note,) = h.run(ev(Kind.CRASH_LOOP))
    assert note.incident is not None
    assert [e.kind for e in note.incident.events] == ["crashed", "restarted", "crash-loop"]
    assert note.incident.restarts == 1
    assert note.incident.stderr_tail(20) == ["boom"]


def test_repeated_kind_is_deduplicated_new_kind_is_an_update() -> None:
    h = Harness(group_wait=0)
    assert [n.purpose for n in h.run(ev(Kind.CRASH_LOOP))] == ["firing"]
    assert h.after(1, *[ev(Kind.CRASH_LOOP) for _ in range(50)]) == []
    assert any("50 repeated" in d for d in h.decisions)
    (update,) = h.after(1, ev(Kind.DOWN))
    assert (update.purpose, update.kinds) == ("update", ["down"])
    assert update.incident is not None and update.incident.duplicates == 50


def test_crash_loop_burst_of_500_events_gives_a_handful_of_notifications() -> None:
    h = Harness(group_wait=10)
    notes: list[Notification] = []
    for i in range(500):
        kind = [Kind.CRASHED, Kind.RESTARTED, Kind.CRASH_LOOP][i % 3]
        notes += h.after(0.05, ev(kind))
    notes += h.after(10, ev(Kind.RESTART_LIMIT_REACHED), ev(Kind.DOWN))
    notes += h.after(10)
    assert 1 <= len(notes) <= 3


def test_recovery_after_healthy_stretch_resolves_the_incident() -> None:
    h = Harness(group_wait=0, recovery_after=60)
    h.run(ev(Kind.DOWN))
    assert h.after(1, ev(Kind.HEALTHY)) == []
    assert h.after(59.9) == []
    (note,) = h.after(0.1)
    assert note.purpose == "resolved"
    assert h.book.open_incidents() == []


def test_bad_event_during_recovery_restarts_the_recovery_timer() -> None:
    h = Harness(group_wait=0, recovery_after=60)
    h.run(ev(Kind.DOWN))
    h.after(1, ev(Kind.HEALTHY))
    assert h.after(30, ev(Kind.CRASHED)) == []
    assert h.after(40, ev(Kind.HEALTHY)) == []
    assert h.after(59) == []
    assert [n.purpose for n in h.after(1)] == ["resolved"]


def test_next_incident_after_recovery_is_a_new_thread() -> None:
    h = Harness(group_wait=0, recovery_after=1)
    (first,) = h.run(ev(Kind.DOWN))
    h.after(1, ev(Kind.HEALTHY))
    h.after(1)
    (second,) = h.after(1, ev(Kind.DOWN))
    assert second.purpose == "firing"
    assert first.incident is not None and second.incident is not None
    assert first.incident.id != second.incident.id


def test_reminder_while_still_down() -> None:
    h = Harness(group_wait=0, reminder_interval=100)
    h.run(ev(Kind.DOWN))
    assert h.after(99) == []
    assert [n.purpose for n in h.after(1)] == ["reminder"]
    assert h.after(99) == []
    assert [n.purpose for n in h.after(1)] == ["reminder"]


def test_no_reminder_while_recovering() -> None:
    h = Harness(group_wait=0, reminder_interval=100, recovery_after=1000)
    h.run(ev(Kind.DOWN))
    h.after(1, ev(Kind.HEALTHY))
    assert h.after(200) == []


def test_rate_limit_holds_mail_and_sends_a_digest_when_the_window_frees() -> None:
    h = Harness(group_wait=0, rate_limit=2, rate_window=100, recovery_after=1)
    sent: list[Notification] = []
    for i in range(5):  # five separate incidents on five targets
        sent += h.after(1, ev(Kind.DOWN, target=f"t{i}"))
    assert [n.target for n in sent] == ["t0", "t1"]
    assert sum("rate limit" in d for d in h.decisions) == 3
    assert h.last_ctx and next_deadline(h.last_ctx) is not None
    digest = h.after(100)
    assert [n.purpose for n in digest] == ["digest"]
    assert [held.target for held in digest[0].held] == ["t2", "t3", "t4"]
    assert h.after(1) == []


def test_silence_holds_mail_and_it_goes_out_when_the_silence_ends() -> None:
    h = Harness(group_wait=0)
    h.silences.append(Silence("Backend", h.wall + timedelta(minutes=30), "maintenance"))
    assert h.run(ev(Kind.DOWN)) == []
    assert h.after(60, ev(Kind.CRASH_LOOP)) == []
    held = [d for d in h.decisions if "silenced" in d]
    assert len(held) == 1 and "maintenance" in held[0]
    notes = h.after(30 * 60)
    assert [(n.purpose, sorted(n.kinds)) for n in notes] == [("firing", ["crash-loop", "down"])]


def test_recovery_during_silence_sends_nothing() -> None:
    h = Harness(group_wait=0, recovery_after=1)
    h.silences.append(Silence("backend", h.wall + timedelta(minutes=30)))
    h.run(ev(Kind.DOWN))
    h.after(1, ev(Kind.HEALTHY))
    assert h.after(5) == []
    assert h.after(3600) == []
    assert h.book.open_incidents() == []


def test_alert_sent_and_held_never_reenter_and_recursive_failure_does_not_alert() -> None:
    h = Harness(group_wait=0)
    assert h.run(ev(Kind.ALERT_SENT), ev(Kind.ALERT_HELD)) == []
    assert h.run(ev(Kind.ALERT_FAILED, target="erpwatch", recursive=True)) == []
    (note,) = h.run(ev(Kind.ALERT_FAILED, target="erpwatch", reason="550"))
    assert note.kinds == ["alert-failed"]


def test_alert_failed_on_a_healthy_target_closes_after_the_recovery_time() -> None:
    h = Harness(group_wait=0, recovery_after=10)
    h.run(ev(Kind.HEALTHY))
    assert [n.purpose for n in h.run(ev(Kind.ALERT_FAILED))] == ["firing"]
    assert [n.purpose for n in h.after(10)] == ["resolved"]


def test_watchdog_fault_recovers_by_itself_and_the_next_fault_is_a_new_incident() -> None:
    h = Harness(group_wait=0, recovery_after=60, alert_on=frozenset({"watchdog-fault"}))
    started = ev(Kind.WATCHDOG_STARTED, target="erpwatch")  # erpwatch never gets "healthy"
    fault = ev(Kind.WATCHDOG_FAULT, target="erpwatch")
    fault = dataclasses.replace(fault, ts=started.ts + timedelta(hours=1))
    h.run(started)
    (first,) = h.after(3600, fault)
    assert first.purpose == "firing" and first.kinds == ["watchdog-fault"]
    assert first.incident is not None and first.incident.opened_at == fault.ts  # not the streak
    assert h.after(30, ev(Kind.WATCHDOG_FAULT, target="erpwatch")) == []  # folded, timer reset
    assert h.after(59) == []
    assert [n.purpose for n in h.after(1)] == ["resolved"]
    (second,) = h.after(1, ev(Kind.WATCHDOG_FAULT, target="erpwatch"))
    assert second.purpose == "firing" and second.incident is not first.incident


def test_state_round_trips_through_json_with_times_rebased() -> None:
    h = Harness(group_wait=50)
    h.run(ev(Kind.CRASHED, exit_code=3), ev(Kind.DOWN))
    base = TimeBase(h.clock.now(), T0)
    data = h.book.track("backend").to_json(base)
    from alerting.incidents import TargetTrack

    later = TimeBase(5000.0, T0 + timedelta(seconds=20))
    track = TargetTrack.from_json(data, later)
    assert track.incident is not None
    assert track.incident.group_deadline == 5000.0 + 30
    assert [e.kind for e in track.incident.events] == ["crashed", "down"]


def test_parse_duration() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("90") == timedelta(seconds=90)
    for bad in ("", "abc", "5x", "-1", "0"):
        try:
            parse_duration(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_templates_can_be_overridden_from_the_template_dir(tmp_path: Any) -> None:
    from alerting.render import Renderer

    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "incident.txt.j2").write_text("CUSTOM {{ target }}\n")
    h = Harness(group_wait=0)
    (note,) = h.run(ev(Kind.DOWN))
    renderer = Renderer(hostname="h", sender="a@b", stderr_lines=5, template_dir=tmp_path)
    mail = renderer.render(note, T0)
    assert b"CUSTOM backend" in mail.data and b"<h2" in mail.data  # html still built in


def test_incident_state_stays_a_few_kib_when_a_child_prints_2_mib_lines() -> None:
    """A child that crashes 11 times, each time printing one 2 MiB stderr line: the state
    saved at every step keeps ids and short summaries, not the events, so it stays small."""
    h = Harness(group_wait=0)
    line = "Traceback: " + "x" * (2 * 1024 * 1024) + " ValueError: boom"
    notes: list[Notification] = []
    for _ in range(11):
        crash = Event(  # built directly: not even bounded by Event.of
            "backend",
            Kind.CRASHED,
            "exited with code 1",
            details={"exit_code": 1, "stderr_tail": ["starting", line]},
        ).with_id(next(_ids))
        notes += h.after(1, crash, ev(Kind.RESTARTED, reason="crashed (exit code 1)"))
    notes += h.after(1, ev(Kind.CRASH_LOOP), ev(Kind.DOWN))
    assert [n.purpose for n in notes] == ["firing"]
    base = TimeBase(h.clock.now(), T0)
    saved = json.dumps(h.book.track("backend").to_json(base))
    assert len(saved) < 8 * 1024, len(saved)
    incident = notes[0].incident
    assert incident is not None and incident.restarts == 11
    tail = incident.stderr_tail(20)
    assert tail[0] == "starting" and tail[-1].startswith("Traceback: ")
    assert tail[-1].endswith("ValueError: boom") and len(json.dumps(tail)) <= STDERR_BYTES_MAX
    assert all(e.id is not None for e in incident.events)  # the full events stay in the store
    restored = TargetTrack.from_json(json.loads(saved), base)
    assert restored.incident is not None
    assert restored.incident.stderr_tail(20) == tail
    last_crash = restored.incident.last_crash()
    assert last_crash is not None and last_crash.details["exit_code"] == 1
    renderer = Renderer(hostname="h", sender="a@b", stderr_lines=20)
    mail = renderer.render(notes[0], T0)
    message = message_from_bytes(mail.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None and len(mail.data) < 64 * 1024
    text = body.get_content()
    assert "ValueError: boom" in text and "restarted the target 11 time(s)" in text


def test_state_of_a_hostile_target_stays_below_20_kib() -> None:
    """Every event of a long incident carries huge (and non-ASCII) messages, reasons,
    signals and stderr: the saved state of the target still stays below 20 KiB."""
    h = Harness(group_wait=0, reminder_interval=10, rate_limit=10_000)
    text = "\u00e9\u4e2d" * 3000  # 6 bytes a char once saved as JSON
    kinds = [Kind.CRASHED, Kind.RESTARTED, Kind.CRASH_LOOP, Kind.DOWN, Kind.RESTART_LIMIT_REACHED]
    renderer = Renderer(hostname="h", sender="a@b", stderr_lines=1000)
    sizes: list[int] = []
    for _ in range(100):
        events = [
            Event(
                "backend",
                kind,
                text,
                details={
                    "reason": text,
                    "exit_code": 1,
                    "returncode": text,
                    "signal": text,
                    "stderr_tail": [text] * 100,
                    "cause": text,
                    "next_retry_at": text,
                    "next_retry_in_s": text,
                    "retry_in_s": 900.0,
                },
            ).with_id(next(_ids))
            for kind in kinds
        ]
        for note in h.after(11, *events):
            renderer.render(note, T0)
        base = TimeBase(h.clock.now(), T0)
        sizes.append(len(json.dumps(h.book.track("backend").to_json(base))))
    assert max(sizes) < 20 * 1024, max(sizes)
    incident = h.book.incident("backend")
    assert incident is not None and incident.thread_count > 50 and len(incident.thread) == 10


def test_state_saved_by_the_previous_version_with_whole_events_still_loads() -> None:
    whole = {
        "id": 7,
        "ts": T0.isoformat(),
        "target": "backend",
        "kind": "crashed",
        "severity": "warning",
        "message": "exited with code 3",
        "details": {"exit_code": 3, "stderr_tail": ["a", "b" * 5000], "pid": 1},
    }
    down = {**whole, "id": 8, "kind": "down", "severity": "critical", "details": {}}
    base = TimeBase(100.0, T0)
    data = {
        "name": "backend",
        "healthy": False,
        "streak": [whole, down],
        "incident": {
            "id": "backend-8",
            "target": "backend",
            "opened_at": T0.isoformat(),
            "events": [whole, down],
            "notified_kinds": ["down"],
            "pending": {},
            "group_deadline": None,
            "healthy_since": None,
            "recovered_at": None,
            "last_notified": T0.isoformat(),
            "thread": [f"<m{i}@h>" for i in range(30)],
            "duplicates": 0,
            "restarts": 0,
            "held_reason": None,
            "closed": False,
        },
    }
    track = TargetTrack.from_json(data, base)
    incident = track.incident
    assert incident is not None
    assert [e.kind for e in incident.events] == ["crashed", "down"]
    assert incident.stderr_tail(5)[0] == "a" and len(incident.stderr_tail(5)[1]) <= 240
    crash = incident.last_crash()
    assert crash is not None and crash.details == {"exit_code": 3}
    assert incident.thread_count == 30 and len(incident.thread) == 10
    assert incident.thread[0] == "<m0@h>" and incident.thread[-1] == "<m29@h>"


def test_a_long_incident_thread_keeps_the_first_and_the_latest_message_ids() -> None:
    h = Harness(group_wait=0, reminder_interval=10, rate_limit=1000)
    renderer = Renderer(hostname="h", sender="a@b", stderr_lines=5)
    mails = [renderer.render(n, T0) for n in h.run(ev(Kind.DOWN))]
    for _ in range(40):
        mails += [renderer.render(n, T0) for n in h.after(10)]
    incident = h.book.incident("backend")
    assert incident is not None and incident.thread_count == len(mails) == 41
    assert len(incident.thread) == 10 and incident.thread[0] == mails[0].message_id
    assert incident.thread[-1] == mails[-1].message_id
    assert len({m.message_id for m in mails}) == 41  # every mail its own Message-ID


def test_silenced_mail_is_due_when_the_silence_ends_not_in_a_busy_loop() -> None:
    """A held mail whose group wait (or reminder) is long past is not due again before the
    silence ends: the service waits until then instead of stepping without a pause."""
    h = Harness(group_wait=0, reminder_interval=100)
    assert len(h.run(ev(Kind.DOWN, target="other"))) == 1  # reminders elsewhere still count
    h.silences.append(Silence("backend", h.wall + timedelta(minutes=30)))
    assert h.run(ev(Kind.DOWN)) == []
    assert h.after(50) == []
    assert h.last_ctx and next_deadline(h.last_ctx) == h.clock.now() + 50  # other's reminder
    h.after(50)
    assert next_deadline(h.last_ctx) == h.clock.now() + 100  # not the past group deadline
    h.after(1600)  # other's reminders while backend's silence lasts (30 min in all)
    assert next_deadline(h.last_ctx) == h.clock.now() + 100
    h.silences.append(Silence("other", h.wall + timedelta(seconds=1000)))
    h.after(1)
    assert next_deadline(h.last_ctx) == h.clock.now() + 99  # backend's silence ends first
    assert [(n.target, n.purpose) for n in h.after(99)] == [("backend", "firing")]


# --- the group interval: one incident, one DOWN mail, escalations fold into one update ----


def test_escalations_within_the_group_interval_fold_into_one_update() -> None:
    """The issue's incident: crash loop, restart limit and down within 57 s. One DOWN mail
    after the group wait; the later kinds wait for the interval and go out together."""
    h = Harness(group_wait=10, group_interval=300)
    assert h.run(ev(Kind.CRASH_LOOP)) == []
    (first,) = h.after(10)
    assert (first.purpose, first.kinds) == ("firing", ["crash-loop"])
    assert h.after(20, ev(Kind.RESTART_LIMIT_REACHED)) == []
    assert h.after(10) == []  # past its group wait: held by the interval, and logged
    (held,) = [d for d in h.last_ctx.decisions if d.details.get("reason") == "group-interval"]
    assert held.details["kinds"] == ["restart-limit-reached"]
    assert held.details["due_in_s"] == 270.0
    assert next_deadline(h.last_ctx) == h.start + 10 + 300  # the interval since the mail
    assert h.after(17, ev(Kind.DOWN)) == []
    assert h.after(10) == []
    assert h.after(10) == []
    holds = [d for d in h.decisions if "group interval" in d]
    assert len(holds) == 2 and "down, restart-limit-reached" in holds[1]  # once per change
    assert h.after(232.9) == []
    (update,) = h.after(0.1)
    assert (update.purpose, sorted(update.kinds)) == ("update", ["down", "restart-limit-reached"])
    assert h.after(1000, ev(Kind.DOWN), ev(Kind.CRASH_LOOP)) == []  # all told: dedup only


def test_group_interval_never_delays_the_first_mail() -> None:
    h = Harness(group_wait=10, group_interval=3600)
    h.run(ev(Kind.DOWN))
    assert h.last_ctx and next_deadline(h.last_ctx) == h.clock.now() + 10
    assert [n.purpose for n in h.after(10)] == ["firing"]


def test_group_interval_counts_from_the_last_mail() -> None:
    h = Harness(group_wait=0, group_interval=300)
    h.run(ev(Kind.CRASH_LOOP))
    (update,) = h.after(400, ev(Kind.RESTART_LIMIT_REACHED))  # long past: at once
    assert (update.purpose, update.kinds) == ("update", ["restart-limit-reached"])
    assert h.after(299, ev(Kind.DOWN)) == []  # counted from that update, not the first mail
    assert [(n.purpose, n.kinds) for n in h.after(1)] == [("update", ["down"])]


def test_a_late_escalation_goes_out_after_the_group_wait_once_the_interval_has_passed() -> None:
    h = Harness(group_wait=10, group_interval=300)
    h.run(ev(Kind.CRASH_LOOP))
    h.after(10)
    assert h.after(400, ev(Kind.RESTART_LIMIT_REACHED)) == []  # its own group wait first
    assert [(n.purpose, n.kinds) for n in h.after(10)] == [("update", ["restart-limit-reached"])]


def test_recovery_mail_is_never_held_by_the_group_interval() -> None:
    h = Harness(group_wait=0, group_interval=300, recovery_after=60)
    h.run(ev(Kind.CRASH_LOOP))
    assert h.after(5, ev(Kind.RESTART_LIMIT_REACHED)) == []  # held by the interval
    assert h.after(5, ev(Kind.STARTED), ev(Kind.HEALTHY)) == []
    (resolved,) = h.after(60)  # 70 s after the first mail, well within the interval
    assert resolved.purpose == "resolved"
    assert resolved.incident is not None
    assert resolved.incident.alert_kinds == ["crash-loop", "restart-limit-reached"]
    assert h.book.open_incidents() == []


def test_held_update_waits_while_recovering_and_goes_out_when_it_turns_bad_again() -> None:
    h = Harness(group_wait=0, group_interval=300, recovery_after=600)
    h.run(ev(Kind.CRASH_LOOP))
    h.after(5, ev(Kind.RESTART_LIMIT_REACHED))
    h.after(5, ev(Kind.HEALTHY))
    assert h.after(400) == []  # interval over, but recovering: the resolved mail would tell
    assert h.decisions[-1] == (
        "update mail held: backend is recovering; the recovery mail will list restart-limit-reached"
    )
    assert next_deadline(h.last_ctx) == h.start + 10 + 600  # no past deadline: no busy loop
    (update,) = h.after(1, ev(Kind.CRASHED))  # bad again: the held update goes out
    assert (update.purpose, update.kinds) == ("update", ["restart-limit-reached"])


def test_a_reminder_due_during_the_interval_carries_the_held_update() -> None:
    h = Harness(group_wait=0, group_interval=300, reminder_interval=100)
    h.run(ev(Kind.CRASH_LOOP))
    assert h.after(50, ev(Kind.DOWN)) == []
    assert next_deadline(h.last_ctx) == h.start + 100
    (note,) = h.after(50)
    assert (note.purpose, note.kinds) == ("update", ["down"])  # not a reminder and an update


def test_alert_failed_is_not_held_by_the_group_interval() -> None:
    h = Harness(group_wait=0, group_interval=300)
    h.run(ev(Kind.RESTART_LIMIT_REACHED))
    assert h.after(1, ev(Kind.DOWN)) == []
    (note,) = h.after(1, ev(Kind.ALERT_FAILED, reason="535 authentication refused"))
    assert (note.purpose, sorted(note.kinds)) == ("update", ["alert-failed", "down"])


def test_group_interval_zero_sends_updates_at_once() -> None:
    h = Harness(group_wait=0, group_interval=0)
    h.run(ev(Kind.CRASH_LOOP))
    assert [n.purpose for n in h.after(1, ev(Kind.DOWN))] == ["update"]


def test_held_update_survives_a_restart_with_its_deadline() -> None:
    h = Harness(group_wait=0, group_interval=300)
    h.run(ev(Kind.CRASH_LOOP))
    h.after(20, ev(Kind.DOWN))
    base = TimeBase(h.clock.now(), h.wall)
    saved = json.dumps(h.book.track("backend").to_json(base))
    h.clock.advance(30 + 10_000.0)  # a new process: its monotonic clock has another origin
    h.start += 10_000.0  # while the wall clock moved on by 30 s
    later = TimeBase(h.clock.now(), h.wall)
    h.book = IncidentBook()
    h.book.targets["backend"] = TargetTrack.from_json(json.loads(saved), later)
    assert h.run() == []
    assert next_deadline(h.last_ctx) == h.start + 300  # the first mail was at wall T0
    assert h.after(249.9) == []
    assert [(n.purpose, n.kinds) for n in h.after(0.1)] == [("update", ["down"])]


def test_policy_reads_the_group_interval_setting(tmp_path: Any) -> None:
    from watchdog.config import load_settings

    assert Policy.from_settings(load_settings(log_path=tmp_path)).group_interval == 300.0
    settings = load_settings(log_path=tmp_path, alert_group_interval=0.5)
    assert Policy.from_settings(settings).group_interval == 0.5
