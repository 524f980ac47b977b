"""Inhibition on fake time: while a target that others start AFTER is down, the dependents'
alerts fold into its incident (no storm), and each dependent still gets its recovery record."""

from __future__ import annotations

import dataclasses
import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from alerting.incidents import AFFECTED_KINDS_MAX, AFFECTED_MAX, IncidentBook, TargetTrack, TimeBase
from alerting.render import Renderer
from alerting.service import AlertService
from alerting.silences import Silence
from alerting.stages import Decision, Notification, Policy, next_deadline
from tests.alerting.conftest import SmtpServer, make_settings
from tests.alerting.test_stages import T0, Harness, ev
from tests.helpers import await_until
from watchdog.bus import EventBus
from watchdog.events import Event, Kind
from watchdog.store import EventStore

FRONTEND_AFTER_BACKEND = {"frontend": ("backend",)}


class Inhibition(Harness):
    """The stage harness, keeping whole decisions (their details) and every notification."""

    def __init__(self, **policy: Any) -> None:
        policy.setdefault("depends", FRONTEND_AFTER_BACKEND)
        super().__init__(**policy)
        self.log: list[Decision] = []
        self.notes: list[Notification] = []

    def run(self, *events: Event) -> list[Notification]:
        notes = super().run(*events)
        self.log.extend(self.last_ctx.decisions)
        self.notes.extend(notes)
        return notes

    def reasons(self, reason: str, target: str | None = None) -> list[Decision]:
        return [
            d for d in self.log if d.details.get("reason") == reason and target in (None, d.target)
        ]

    def sent(self, target: str) -> list[tuple[str, list[str]]]:
        return [(n.purpose, n.kinds) for n in self.notes if n.target == target]

    def restart(self, seconds: float) -> None:
        """Save every target as the service does, and load it back ``seconds`` later on a
        new monotonic clock (a new process)."""
        base = TimeBase(self.clock.now(), self.wall)
        saved = json.dumps({n: t.to_json(base) for n, t in self.book.targets.items()})
        self.clock.advance(seconds + 10_000.0)  # the new process's clock has another origin
        self.start += 10_000.0  # while the wall clock moved on by ``seconds`` only
        later = TimeBase(self.clock.now(), self.wall)
        self.book = IncidentBook()
        for name, data in json.loads(saved).items():
            self.book.targets[name] = TargetTrack.from_json(data, later)


def text_and_html(note: Notification) -> tuple[str, str]:
    mail = Renderer(hostname="h", sender="a@b", stderr_lines=5).render(note, T0)
    message = message_from_bytes(mail.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    parts = [message.get_body((kind,)) for kind in ("plain", "html")]
    assert parts[0] is not None and parts[1] is not None
    return str(parts[0].get_content()), str(parts[1].get_content())


def crash_burst(target: str = "frontend") -> list[Event]:
    kinds = [Kind.CRASHED, Kind.RESTARTED, Kind.CRASH_LOOP, Kind.RESTART_LIMIT_REACHED]
    return [ev(kinds[i % 4], target=target) for i in range(40)]


def test_frontend_storm_while_backend_down_is_folded_into_backends_incident() -> None:
    h = Inhibition(group_wait=10)
    h.run(ev(Kind.DOWN))
    for _ in range(5):
        h.after(1, *crash_burst())
    h.after(20, *crash_burst())
    assert h.sent("frontend") == []
    assert h.sent("backend") == [("firing", ["down"])]
    (held,) = h.reasons("inhibited")
    backend = h.book.incident("backend")
    frontend = h.book.incident("frontend")
    assert backend is not None and frontend is not None
    assert held.target == "frontend" and held.incident_id == frontend.id
    assert held.details == {"reason": "inhibited", "by": "backend", "folded_into": backend.id}
    assert sorted(frontend.pending) == ["crash-loop", "restart-limit-reached"]  # kept pending
    assert backend.affected == {"frontend": ["crash-loop", "restart-limit-reached"]}
    # Backend's next mail tells it, escaped in HTML.
    h.after(1, ev(Kind.RESTART_LIMIT_REACHED))
    (update,) = h.after(10)
    assert (update.target, update.purpose) == ("backend", "update")
    text, html = text_and_html(update)
    line = "Also affected (depends on backend): frontend — crash loop, restart limit reached"
    assert line in text
    assert "<b>frontend</b> — crash loop, restart limit reached" in html


def test_folding_alone_never_mails_the_root_cause() -> None:
    h = Inhibition(group_wait=0)
    assert [n.purpose for n in h.run(ev(Kind.DOWN))] == ["firing"]
    assert h.after(1, ev(Kind.CRASH_LOOP, target="frontend")) == []
    assert h.after(1, ev(Kind.DOWN, target="frontend")) == []
    assert h.after(3600) == []
    backend = h.book.incident("backend")
    assert backend is not None and backend.affected == {"frontend": ["crash-loop", "down"]}
    assert len(h.reasons("inhibited")) == 1  # once per change, not once per step


def test_backend_recovers_while_frontend_still_crashes_then_frontend_fires_once() -> None:
    h = Inhibition(group_wait=10, recovery_after=60)
    h.run(ev(Kind.DOWN))
    h.after(1, ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(30)
    assert h.sent("backend") == [("firing", ["down"])] and h.sent("frontend") == []
    # The group deadline passed during the inhibition: the mail goes at the lifting step.
    notes = h.after(1, ev(Kind.HEALTHY), ev(Kind.CRASHED, target="frontend"))
    assert [(n.target, n.purpose, n.kinds) for n in notes] == [
        ("frontend", "firing", ["crash-loop"])
    ]
    frontend = h.book.incident("frontend")
    assert frontend is not None and frontend.inhibited_by is None and not frontend.pending
    assert [(n.target, n.purpose) for n in h.after(60)] == [("backend", "resolved")]
    assert h.sent("backend") == [("firing", ["down"]), ("resolved", [])]
    assert h.sent("frontend") == [("firing", ["crash-loop"])]  # once, not twice
    assert h.after(100) == []


def test_lifted_before_the_group_wait_ends_the_mail_waits_for_its_deadline() -> None:
    h = Inhibition(group_wait=10)
    h.run(ev(Kind.DOWN), ev(Kind.CRASH_LOOP, target="frontend"))
    assert h.after(2, ev(Kind.HEALTHY)) == []  # lifted, but the deadline is 8 s away
    assert h.last_ctx and next_deadline(h.last_ctx) == h.clock.now() + 8
    assert h.after(7.9) == []
    notes = h.after(0.1)  # backend's pending mail too: it was down for 2 s, past its wait
    assert [(n.target, n.purpose) for n in notes] == [("backend", "firing"), ("frontend", "firing")]


def test_frontend_recovers_while_inhibited_gives_a_recovery_record_and_no_mail() -> None:
    h = Inhibition(group_wait=10, recovery_after=60)
    h.run(ev(Kind.DOWN))
    h.after(1, ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(30, ev(Kind.HEALTHY, target="frontend"))
    h.after(60)
    assert h.book.incident("frontend") is None  # closed as usual
    assert h.sent("frontend") == []
    backend = h.book.incident("backend")
    assert backend is not None
    (record,) = h.reasons("inhibited-recovered")
    assert record.details == {"reason": "inhibited-recovered", "by": "backend"}
    assert record.message == (
        f"frontend recovered; its alerts were folded into backend's incident {backend.id}"
    )
    # Backend's own recovery mail still lists frontend as affected during the outage.
    h.after(1, ev(Kind.HEALTHY))
    (resolved,) = h.after(60)
    assert (resolved.target, resolved.purpose) == ("backend", "resolved")
    assert "Also affected (depends on backend): frontend — crash loop" in text_and_html(resolved)[0]


def test_frontend_recovering_when_backend_recovers_stays_folded_until_it_closes() -> None:
    h = Inhibition(group_wait=10, recovery_after=60)
    h.run(ev(Kind.DOWN), ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(20, ev(Kind.HEALTHY, target="frontend"))
    h.after(10, ev(Kind.HEALTHY))  # backend recovers while frontend is healthy again
    h.after(60)
    assert h.sent("frontend") == []  # no DOWN mail about a target that is fine again
    assert len(h.reasons("inhibited-recovered", "frontend")) == 1


def test_frontend_mailed_before_backend_went_down_still_gets_its_resolved_mail() -> None:
    h = Inhibition(group_wait=0, recovery_after=60, reminder_interval=100)
    h.run(ev(Kind.CRASH_LOOP, target="frontend"))
    assert h.sent("frontend") == [("firing", ["crash-loop"])]
    h.after(10, ev(Kind.DOWN))
    h.after(1, ev(Kind.DOWN, target="frontend"))  # its update is withheld
    h.after(300)  # and its reminder (backend gets one)
    assert h.sent("frontend") == [("firing", ["crash-loop"])]
    assert [p for p, _ in h.sent("backend")] == ["firing", "reminder"]
    assert h.last_ctx and (next_deadline(h.last_ctx) or 1e18) > h.clock.now()
    h.after(1, ev(Kind.HEALTHY, target="frontend"))
    h.after(60)
    assert h.sent("frontend") == [("firing", ["crash-loop"]), ("resolved", [])]
    assert h.reasons("inhibited-recovered") == []  # it had its own mail
    backend = h.book.incident("backend")
    assert backend is not None and backend.affected == {"frontend": ["crash-loop", "down"]}


def test_transitive_chain_db_down_inhibits_api_and_frontend() -> None:
    h = Inhibition(group_wait=5, depends={"frontend": ("api",), "api": ("db",)})
    h.run(ev(Kind.DOWN, target="db"))
    h.after(1, ev(Kind.DOWN, target="api"), ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(100)
    assert [(n.target, n.purpose) for n in h.notes] == [("db", "firing")]
    db = h.book.incident("db")
    assert db is not None
    assert db.affected == {"api": ["down"], "frontend": ["crash-loop"]}
    by = {d.target: d.details["by"] for d in h.reasons("inhibited")}
    assert by == {"api": "db", "frontend": "db"}  # the root cause, not the nearest
    # db recovers, api stays down: frontend is now inhibited by api; api mails.
    notes = h.after(1, ev(Kind.HEALTHY, target="db"))
    assert [(n.target, n.purpose) for n in notes] == [("api", "firing")]
    held = [d for d in h.reasons("inhibited", "frontend") if d.details["by"] == "api"]
    assert len(held) == 1
    api = h.book.incident("api")
    assert api is not None and api.affected == {"frontend": ["crash-loop"]}


def test_an_intermediate_that_is_fine_does_not_stop_transitive_inhibition() -> None:
    h = Inhibition(group_wait=0, depends={"frontend": ("api",), "api": ("db",)})
    h.run(ev(Kind.DOWN, target="db"), ev(Kind.CRASH_LOOP, target="frontend"))
    assert [(n.target, n.purpose) for n in h.notes] == [("db", "firing")]


def test_a_dependency_cycle_never_silences_both() -> None:
    h = Inhibition(group_wait=0, depends={"a": ("b",), "b": ("a",)})
    h.run(ev(Kind.DOWN, target="a"), ev(Kind.DOWN, target="b"))
    assert sorted(n.target for n in h.notes) == ["a", "b"]
    assert h.reasons("inhibited") == []


def test_inhibition_and_affected_survive_a_restart() -> None:
    h = Inhibition(group_wait=10, recovery_after=60)
    h.run(ev(Kind.DOWN))
    h.after(1, ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(15)
    assert h.sent("backend") == [("firing", ["down"])] and h.sent("frontend") == []
    h.restart(5)
    frontend = h.book.incident("frontend")
    backend = h.book.incident("backend")
    assert frontend is not None and backend is not None
    assert (frontend.inhibited_by, frontend.folded_into) == ("backend", backend.id)
    assert backend.affected == {"frontend": ["crash-loop"]}
    assert h.after(1) == []  # no second decision, no mail after the restart
    assert len(h.reasons("inhibited")) == 1
    # The lift after the restart sends frontend's pending mail exactly once.
    notes = h.after(1, ev(Kind.HEALTHY))
    assert [(n.target, n.purpose) for n in notes] == [("frontend", "firing")]
    h.restart(1)
    h.after(60)
    assert h.sent("frontend") == [("firing", ["crash-loop"])]
    assert h.sent("backend") == [("firing", ["down"]), ("resolved", [])]


def test_long_target_names_repeat_no_decision_after_a_restart() -> None:
    """The saved ``held_reason`` is cut: the comparison after a restart uses the cut form."""
    root, dependent = "b" * 64, "f" * 64
    h = Inhibition(group_wait=0, depends={dependent: (root,)})
    h.run(ev(Kind.DOWN, target=root), ev(Kind.CRASH_LOOP, target=dependent))
    assert len(h.reasons("inhibited")) == 1 and len(h.log[0].message) > 160
    h.restart(1)
    h.after(1, ev(Kind.DOWN, target=dependent))
    assert len(h.reasons("inhibited")) == 1


def test_an_affected_name_is_escaped_in_html() -> None:
    hostile = "<script>x</script>"
    h = Inhibition(group_wait=0, depends={hostile: ("backend",)})
    h.run(ev(Kind.DOWN), ev(Kind.CRASH_LOOP, target=hostile))
    h.after(1, ev(Kind.RESTART_LIMIT_REACHED))
    text, html = text_and_html(h.notes[-1])
    assert f"Also affected (depends on backend): {hostile} — crash loop" in text
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html


def test_recovery_record_after_a_restart_names_the_incident_folded_into() -> None:
    h = Inhibition(group_wait=10, recovery_after=60)
    h.run(ev(Kind.DOWN), ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(1, ev(Kind.HEALTHY, target="frontend"))
    backend = h.book.incident("backend")
    assert backend is not None
    h.restart(1)
    h.after(60)
    (record,) = h.reasons("inhibited-recovered")
    assert backend.id in record.message and h.sent("frontend") == []


def test_inhibited_incident_with_a_past_deadline_is_no_busy_loop() -> None:
    h = Inhibition(group_wait=1, reminder_interval=100, recovery_after=60)
    h.run(ev(Kind.DOWN), ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(1000)
    assert h.last_ctx is not None
    deadline = next_deadline(h.last_ctx)
    assert deadline is not None and deadline > h.clock.now()  # backend's reminder only
    backend = h.book.incident("backend")
    assert backend is not None and backend.last_notified is not None
    assert deadline == backend.last_notified + 100
    h.after(1, ev(Kind.HEALTHY, target="frontend"))
    assert next_deadline(h.last_ctx) == h.clock.now() + 60  # frontend closes on time


def test_inhibition_takes_precedence_over_a_silence_and_both_are_logged_once() -> None:
    h = Inhibition(group_wait=0)
    h.silences.append(Silence("frontend", h.wall.replace(year=2030)))
    h.run(ev(Kind.DOWN), ev(Kind.CRASH_LOOP, target="frontend"))
    h.after(1)
    assert len(h.reasons("inhibited")) == 1
    assert h.reasons("silence") == []
    h.after(1, ev(Kind.HEALTHY))  # lifted: now the silence holds it, once
    h.after(1)
    assert len(h.reasons("silence", "frontend")) == 1
    assert h.sent("frontend") == []


def test_affected_is_bounded_and_round_trips() -> None:
    depends = {f"t{i:02d}": ("backend",) for i in range(AFFECTED_MAX + 5)}
    h = Inhibition(group_wait=0, depends=depends, alert_on=frozenset(k.value for k in Kind))
    h.run(ev(Kind.DOWN))
    kinds = [Kind.CRASHED, Kind.UNHEALTHY, Kind.RESTARTED, Kind.CRASH_LOOP, Kind.DOWN]
    kinds += [Kind.RESTART_LIMIT_REACHED, Kind.ALERT_FAILED, Kind.WATCHDOG_FAULT]
    kinds += [Kind.HEALTHY]  # not alerting for this target: it ends its streak, though
    events = [ev(kind, target=t) for t in depends for kind in kinds[:-1]]
    h.after(1, *events)
    backend = h.book.incident("backend")
    assert backend is not None
    assert len(backend.affected) == AFFECTED_MAX
    assert all(len(k) <= AFFECTED_KINDS_MAX for k in backend.affected.values())
    assert h.sent("backend") == [("firing", ["down"])]
    base = TimeBase(h.clock.now(), h.wall)
    data = json.loads(json.dumps(h.book.track("backend").to_json(base)))
    restored = TargetTrack.from_json(data, base).incident
    assert restored is not None and restored.affected == backend.affected


def test_state_saved_before_inhibition_existed_still_loads() -> None:
    h = Harness(group_wait=0)
    h.run(ev(Kind.DOWN))
    base = TimeBase(h.clock.now(), T0)
    data = h.book.track("backend").to_json(base)
    for key in ("affected", "inhibited_by", "folded_into"):
        del data["incident"][key]
    incident = TargetTrack.from_json(data, base).incident
    assert incident is not None and incident.affected == {} and incident.inhibited_by is None


def test_policy_depends_from_settings_uses_the_names_events_carry(tmp_path: Path) -> None:
    assert Policy.from_settings(make_settings(tmp_path, None)).depends == {}
    settings = make_settings(
        tmp_path,
        None,
        command="erp-server",
        target_name="Backend",
        targets={"frontend": {"command": "npm run preview", "after": "backend"}},
    )
    assert Policy.from_settings(settings).depends == {"frontend": ("Backend",)}
    only_targets = make_settings(
        tmp_path,
        None,
        targets={
            "api": {"command": "api", "after": "db"},
            "db": {"command": "db"},
            "web": {"command": "web", "after": "api,backend"},
        },
    )
    assert Policy.from_settings(only_targets).depends == {
        "api": ("db",),
        "web": ("api", "backend"),
    }


def test_names_compare_case_insensitively() -> None:
    h = Inhibition(group_wait=0, depends={"Frontend": ("backend",)})
    h.run(ev(Kind.DOWN, target="Backend"), ev(Kind.CRASH_LOOP, target="frontend"))
    assert [n.target for n in h.notes] == ["Backend"]


def test_ctx_without_dependencies_lifts_a_stored_inhibition() -> None:
    """A reload that drops AFTER: an inhibition restored from state must not stay forever."""
    h = Inhibition(group_wait=0)
    h.run(ev(Kind.DOWN), ev(Kind.CRASH_LOOP, target="frontend"))
    assert h.sent("frontend") == []
    h.policy = dataclasses.replace(h.policy, depends={})
    notes = h.after(1)
    assert [(n.target, n.purpose) for n in notes] == [("frontend", "firing")]


# --- through the service: event store → pipeline → outbox → a real SMTP server -----------


def _held(store: EventStore, reason: str) -> list[Event]:
    held = store.query(kinds=[Kind.ALERT_HELD], limit=None, newest_first=False)
    return [e for e in held if e.details.get("reason") == reason]


async def test_service_folds_the_frontend_storm_and_mails_it_after_backend_recovers(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    settings = make_settings(
        tmp_path,
        smtp,
        command="erp-server",
        targets={"frontend": {"command": "npm run preview", "after": "backend"}},
    )
    service = AlertService(settings, store, bus, hostname="testhost", poll=0.05)
    await service.start()
    try:
        await bus.publish(Event.of("backend", Kind.DOWN, "down for 60s"))
        await await_until(lambda: len(smtp.messages) == 1, what="backend's mail")
        for _ in range(20):
            await bus.publish(Event.of("frontend", Kind.CRASHED, "exited with 1", exit_code=1))
            await bus.publish(Event.of("frontend", Kind.CRASH_LOOP, "3 crashes in 10s"))
        (held,) = await await_until(lambda: _held(store, "inhibited"), what="the hold")
        assert held.target == "frontend" and held.details["by"] == "backend"
        assert held.details["incident"].startswith("frontend-")  # its own incident
        assert held.details["folded_into"].startswith("backend-")
        healthy = await bus.publish(Event.of("backend", Kind.HEALTHY, "ok"))
        await await_until(lambda: len(smtp.messages) == 3, what="frontend's and the recovery")
    finally:
        await service.stop()
    subjects = [str(m["Subject"]) for m in smtp.messages]
    assert subjects[0] == "[erpwatch] DOWN backend@testhost: down"
    assert sorted(subjects[1:]) == [
        "[erpwatch] DOWN frontend@testhost: crash loop",
        "[erpwatch] RECOVERED backend@testhost",
    ]
    sent = store.query(kinds=[Kind.ALERT_SENT], limit=None, newest_first=False)
    frontend_sent = [e for e in sent if e.target == "frontend"]
    assert len(frontend_sent) == 1
    assert healthy.id is not None and frontend_sent[0].id is not None
    assert frontend_sent[0].id > healthy.id  # withheld until backend recovered
    recovered = next(m for m in smtp.messages if "RECOVERED" in str(m["Subject"]))
    part = recovered.get_body(("plain",))
    assert part is not None
    assert "Also affected (depends on backend): frontend — crash loop" in part.get_content()
