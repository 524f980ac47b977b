"""The notification pipeline's pure stages, after Alertmanager: each ``exec(ctx, items)``
returns ``(ctx, items)``. No I/O, no clock reads: ``ctx.now`` (monotonic) and ``ctx.wall``
(UTC) are passed in, so tests drive them with a `FakeClock`.

    events ─ Track ─ Filter ─ Incident ─ Silence ─ Group/dedup ─▶ notifications
           ─ RateLimit ─ Render (render.py) ─▶ mails for the durable outbox (outbox.py)

Every choice that keeps a mail back is written to ``ctx.decisions`` (the notification log),
and the service publishes those as ``alert-held`` events.

One incident, one DOWN mail: its first notification (``firing``) goes out once the group wait
has passed. Alerting kinds that arrive after it (escalations: crash loop → restart limit →
down) are an ``update``, sent no sooner than ``ERPWATCH_ALERT_GROUP_INTERVAL`` after the
incident's last mail (Alertmanager's group_interval; a due reminder ends the wait too), and
carrying every kind folded in meanwhile: at most one update per interval (an
``alert-failed`` is not held: it is news that alerts go missing). An update that
becomes due while the target is recovering waits: the recovery mail tells it, or it goes out
if the target turns bad again. The recovery (``resolved``) mail is never held by the interval.

Inhibition, after Alertmanager's: a target that starts ``AFTER`` others (``Policy.depends``,
transitively) is *inhibited* while one of those is down, i.e. has an open incident that is not
recovering. Its firing, update and reminder mails are withheld (its pending kinds stay
pending), one decision says so, and its kinds are folded into the root cause's incident as
``affected`` (which never causes a mail by itself: that would be the storm). The inhibition
lifts when the root cause recovers and the dependent is still not healthy: its pending kinds
then go out as usual. A dependent that recovers while inhibited stays folded until its incident
closes: with a resolved mail if it had been mailed before, else with a recovery record only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from alerting.incidents import (
    SELF_KINDS,
    SUMMARY_MESSAGE_MAX,
    Incident,
    IncidentBook,
    TimeBase,
)
from alerting.silences import Silence, active_silence
from watchdog.events import Event, Kind, cut_text
from watchdog.settings import Settings


@dataclass(frozen=True, slots=True)
class Policy:
    alert_on: frozenset[str]
    recipients: tuple[str, ...]
    group_wait: float
    recovery_after: float
    reminder_interval: float  # 0 = no reminders
    rate_limit: int
    rate_window: float
    # Least time (s) between an incident's mails before an update: escalations meanwhile
    # fold into one update (Alertmanager's group_interval); 0 = updates go out at once.
    group_interval: float = 0.0
    # target -> the targets it starts after (``ERPWATCH_TARGETS__<NAME>__AFTER``), direct only
    depends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            alert_on=frozenset(settings.alert_on),
            recipients=tuple(settings.alert_to or [settings.alert_from]),
            group_wait=settings.alert_group_wait,
            recovery_after=settings.alert_recovery_after,
            reminder_interval=settings.alert_reminder_interval,
            rate_limit=settings.alert_rate_limit,
            rate_window=settings.alert_rate_window,
            group_interval=settings.alert_group_interval,
            depends=depends_of(settings),
        )


def depends_of(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Each configured target's ``AFTER`` list, by the names its events carry (the single
    target keeps the spelling of ``ERPWATCH_TARGET_NAME``; ``AFTER`` names are lower-case)."""
    configs = settings.targets_resolved()
    names = {config.name.lower(): config.name for config in configs}
    names.setdefault(settings.target_name.lower(), settings.target_name)
    return {
        config.name: tuple(names.get(dep, dep) for dep in config.after)
        for config in configs
        if config.after
    }


class Dependencies:
    """``Policy.depends`` made transitive, for inhibition. Names compare case-insensitively;
    a cycle (the supervisor refuses one, but alerting does not rely on that) cannot make it
    loop, and targets on a cycle never inhibit each other."""

    def __init__(self, depends: Mapping[str, tuple[str, ...]]) -> None:
        self._edges: dict[str, list[str]] = {}
        for target, deps in depends.items():
            self._edges.setdefault(target.lower(), []).extend(d.lower() for d in deps)
        self._ups: dict[str, list[str]] = {}

    def ups(self, target: str) -> list[str]:
        """Every target ``target`` starts after, directly or not, nearest first."""
        key = target.lower()
        found = self._ups.get(key)
        if found is None:
            found = []
            queue = deque(self._edges.get(key, ()))
            while queue:
                name = queue.popleft()
                if name == key or name in found:
                    continue
                found.append(name)
                queue.extend(self._edges.get(name, ()))
            self._ups[key] = found
        return found

    def _inhibitors(self, target: str, down: Mapping[str, Incident]) -> Iterator[Incident]:
        key = target.lower()
        for name in self.ups(key):
            if name in down and key not in self.ups(name):
                yield down[name]

    def root_cause(self, target: str, down: Mapping[str, Incident]) -> Incident | None:
        """The incident of a down target that ``target`` depends on and that is not itself
        inhibited (the root cause), nearest first; ``down`` is keyed by lower-case name."""
        for incident in self._inhibitors(target, down):
            if next(self._inhibitors(incident.target, down), None) is None:
                return incident
        return None  # no down dependency (a root exists whenever one is down)


def is_down(incident: Incident) -> bool:
    """Whether ``incident``'s target is a root cause right now: open and not recovering."""
    return not incident.closed and incident.healthy_since is None


@dataclass(frozen=True, slots=True)
class HeldMail:
    """A mail the rate limit kept back; the next digest to its recipient lists it."""

    recipient: str
    target: str
    incident_id: str | None
    purpose: str
    kinds: tuple[str, ...]
    at: str  # ISO wall time

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "target": self.target,
            "incident_id": self.incident_id,
            "purpose": self.purpose,
            "kinds": list(self.kinds),
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeldMail:
        return cls(
            recipient=data["recipient"],
            target=data["target"],
            incident_id=data["incident_id"],
            purpose=data["purpose"],
            kinds=tuple(data["kinds"]),
            at=data["at"],
        )


@dataclass
class RateLimiter:
    """At most ``limit`` mails per recipient per ``window`` seconds; the rest are held."""

    limit: int
    window: float
    sent: dict[str, deque[float]] = field(default_factory=dict)
    held: dict[str, list[HeldMail]] = field(default_factory=dict)

    def _recent(self, recipient: str, now: float) -> deque[float]:
        times = self.sent.setdefault(recipient, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def room(self, recipient: str, now: float) -> bool:
        return len(self._recent(recipient, now)) < self.limit

    def take(self, recipient: str, now: float) -> None:
        self._recent(recipient, now).append(now)

    def next_free(self, now: float) -> float | None:
        """When a recipient with held mail gets room again."""
        times = [
            self._recent(r, now)[0] + self.window
            for r, items in self.held.items()
            if items and not self.room(r, now)
        ]
        return min(times) if times else None

    def to_json(self, base: TimeBase) -> dict[str, Any]:
        return {
            "sent": {r: [base.to_wall(t) for t in times] for r, times in self.sent.items()},
            "held": {r: [h.to_json() for h in items] for r, items in self.held.items() if items},
        }

    def restore(self, data: Mapping[str, Any], base: TimeBase) -> None:
        for recipient, times in data.get("sent", {}).items():
            monos = [base.to_mono(t) for t in times]
            self.sent[recipient] = deque(t for t in monos if t is not None)
        for recipient, items in data.get("held", {}).items():
            self.held[recipient] = [HeldMail.from_json(item) for item in items]


@dataclass
class Notification:
    purpose: str  # firing | update | reminder | resolved | digest
    target: str
    recipients: list[str]
    incident: Incident | None = None
    kinds: list[str] = field(default_factory=list)  # the alerting kinds this mail announces
    held: list[HeldMail] = field(default_factory=list)  # digest only


@dataclass(frozen=True, slots=True)
class Decision:
    """One entry of the notification log; published as an ``alert-held`` event."""

    target: str
    incident_id: str | None
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    now: float
    wall: datetime
    policy: Policy
    book: IncidentBook
    limiter: RateLimiter
    silences: list[Silence] = field(default_factory=list)
    muted: dict[str, Silence] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # targets whose state must be saved


class EventStage(Protocol):
    def exec(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Event]]: ...


def is_alerting(event: Event, alert_on: Iterable[str]) -> bool:
    """Whether ``event`` may cause a mail. An ``alert-failed`` about a mail that was itself
    caused by an ``alert-failed`` (``recursive``) never does: no endless loop."""
    if event.kind in SELF_KINDS or event.kind not in alert_on:
        return False
    return not (event.kind == Kind.ALERT_FAILED and event.details.get("recursive"))


class TrackStage:
    """Every event updates its target's streak, health and open incident."""

    def exec(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Event]]:
        kept = [e for e in events if e.kind not in SELF_KINDS]
        for event in kept:
            ctx.book.track(event.target).observe(event, ctx.now)
            ctx.touched.add(event.target)
        return ctx, kept


class FilterStage:
    """Only the kinds in ``ERPWATCH_ALERT_ON`` go on (the rest was recorded above)."""

    def exec(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Event]]:
        return ctx, [e for e in events if is_alerting(e, ctx.policy.alert_on)]


class IncidentStage:
    """The first alerting event of a target opens an incident."""

    def exec(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Event]]:
        for event in events:
            track = ctx.book.track(event.target)
            if track.incident is None:
                track.open_incident(event, ctx.now)
        return ctx, events


class SilenceStage:
    """Works out which targets are muted now; the group stage holds their mail."""

    def exec(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Event]]:
        ctx.muted = {}
        for track in ctx.book.targets.values():
            silence = active_silence(ctx.silences, track.name, ctx.wall)
            if silence is not None:
                ctx.muted[track.name] = silence
        return ctx, events


class GroupStage:
    """Groups a target's alerting events over the group wait, drops duplicates within an
    incident, and decides reminders and recovery. Events in, notifications out."""

    def exec(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Notification]]:
        folded: dict[str, tuple[Incident, int]] = {}
        for event in events:
            incident = ctx.book.incident(event.target)
            assert incident is not None  # opened by IncidentStage
            if event.kind in incident.notified_kinds or event.kind in incident.pending:
                incident.duplicates += 1
                folded[incident.id] = (incident, folded.get(incident.id, (incident, 0))[1] + 1)
                continue
            incident.pending[event.kind] = event.message
            if incident.group_deadline is None:
                incident.group_deadline = ctx.now + ctx.policy.group_wait
        for incident, count in folded.values():
            ctx.decisions.append(
                Decision(
                    incident.target,
                    incident.id,
                    f"{count} repeated alerting event(s) folded into the open incident",
                    {"reason": "dedup", "count": count},
                )
            )
        self._inhibit(ctx)
        out: list[Notification] = []
        for track in ctx.book.targets.values():
            if track.incident is not None:
                note = self._due(ctx, track.incident)
                if note is not None:
                    out.append(note)
                if track.incident.closed:
                    track.incident = None
                    ctx.touched.add(track.name)
        return ctx, out

    def _inhibit(self, ctx: Ctx) -> None:
        """Sets or lifts each open incident's inhibition (``Incident.inhibited_by``) and folds
        an inhibited one's kinds into its root cause's incident."""
        deps = Dependencies(ctx.policy.depends)  # empty after a reload dropped AFTER: lifts
        down = {i.target.lower(): i for i in ctx.book.open_incidents() if is_down(i)}
        for track in ctx.book.targets.values():
            incident = track.incident
            if incident is None or incident.closed:
                continue
            root = deps.root_cause(track.name, down) if down else None
            if root is not None:
                if (incident.inhibited_by, incident.folded_into) != (root.target, root.id):
                    incident.inhibited_by, incident.folded_into = root.target, root.id
                    ctx.touched.add(track.name)
                if root.fold(track.name, incident.alert_kinds):
                    ctx.touched.add(root.target)
                self._hold(
                    ctx,
                    incident,
                    f"mail held: {track.name} starts after {root.target}, which is down; "
                    f"its alerts are folded into {root.target}'s incident {root.id}",
                    # "folded_into", not "incident": that names this incident's own id in
                    # the alert-held event the service publishes.
                    {"reason": "inhibited", "by": root.target, "folded_into": root.id},
                )
            elif incident.inhibited_by is not None and incident.healthy_since is None:
                # The root cause recovered and this target is still in trouble: its own mail.
                incident.inhibited_by = incident.folded_into = None
                incident.held_reason = None
                ctx.touched.add(track.name)
            # else: recovering while folded: it stays folded until it closes or turns bad

    def _due(self, ctx: Ctx, incident: Incident) -> Notification | None:
        policy, now = ctx.policy, ctx.now
        silence = ctx.muted.get(incident.target)
        recipients = list(policy.recipients)
        if incident.healthy_since is not None and now - incident.healthy_since >= (
            policy.recovery_after
        ):
            incident.closed = True
            ctx.touched.add(incident.target)
            if not incident.notified_kinds:
                if incident.inhibited_by is not None:
                    self._hold(
                        ctx,
                        incident,
                        f"{incident.target} recovered; its alerts were folded into "
                        f"{incident.inhibited_by}'s incident {incident.folded_into}",
                        {"reason": "inhibited-recovered", "by": incident.inhibited_by},
                    )
                    return None
                self._hold(ctx, incident, "closed before any mail was due; nothing to resolve")
                return None
            if silence is not None:
                self._hold(ctx, incident, f"recovery mail held: {silence.describe()}")
                return None
            return Notification("resolved", incident.target, recipients, incident)
        if incident.inhibited_by is not None:
            return None  # withheld; `_inhibit` logged it
        if silence is not None:
            if incident.pending and incident.group_deadline is not None:
                self._hold(ctx, incident, f"held: {silence.describe()}")
            return None
        due = update_due(policy, incident)
        if due is not None and now < due:
            if incident.group_deadline is not None and now >= incident.group_deadline:
                self._hold(
                    ctx,
                    incident,
                    f"update mail held by the group interval ({policy.group_interval:g}s "
                    f"between mails): {', '.join(sorted(incident.pending))} will go out "
                    "together in one update",
                    {
                        "reason": "group-interval",
                        "kinds": sorted(incident.pending),
                        "due_in_s": round(due - now, 3),
                    },
                )
            due = None  # not yet
        elif due is not None and _held_for_recovery(incident):
            # Recovering: the resolved mail tells these kinds, or a bad event ends the wait.
            self._hold(
                ctx,
                incident,
                f"update mail held: {incident.target} is recovering; the recovery mail "
                f"will list {', '.join(sorted(incident.pending))}",
                {"reason": "recovering", "kinds": sorted(incident.pending)},
            )
            due = None
        if due is not None:
            kinds = list(incident.pending)
            purpose = "update" if incident.notified_kinds else "firing"
            incident.notified_kinds.update(kinds)
            incident.pending.clear()
            incident.group_deadline = None
            incident.last_notified = now
            incident.held_reason = None
            ctx.touched.add(incident.target)
            return Notification(purpose, incident.target, recipients, incident, kinds)
        if (
            policy.reminder_interval > 0
            and incident.notified_kinds
            and incident.healthy_since is None
            and incident.last_notified is not None
            and now - incident.last_notified >= policy.reminder_interval
        ):
            incident.last_notified = now
            ctx.touched.add(incident.target)
            kinds = sorted(incident.notified_kinds)
            return Notification("reminder", incident.target, recipients, incident, kinds)
        return None

    @staticmethod
    def _hold(
        ctx: Ctx, incident: Incident, reason: str, details: Mapping[str, Any] | None = None
    ) -> None:
        key = cut_text(reason, SUMMARY_MESSAGE_MAX)  # as saved: a restart repeats no hold
        if incident.held_reason == key:
            return
        incident.held_reason = key
        ctx.touched.add(incident.target)
        ctx.decisions.append(
            Decision(incident.target, incident.id, reason, details or {"reason": "silence"})
        )


class RateLimitStage:
    """Per-recipient limit; what is held goes into the recipient's next digest mail."""

    def exec(self, ctx: Ctx, notes: list[Notification]) -> tuple[Ctx, list[Notification]]:
        limiter, now = ctx.limiter, ctx.now
        out: list[Notification] = []
        for recipient, items in list(limiter.held.items()):
            if items and limiter.room(recipient, now):
                limiter.take(recipient, now)
                out.append(Notification("digest", "erpwatch", [recipient], held=list(items)))
                limiter.held[recipient] = []
        for note in notes:
            allowed: list[str] = []
            held: list[str] = []
            for recipient in note.recipients:
                if limiter.room(recipient, now):
                    limiter.take(recipient, now)
                    allowed.append(recipient)
                    continue
                held.append(recipient)
                limiter.held.setdefault(recipient, []).append(
                    HeldMail(
                        recipient,
                        note.target,
                        note.incident.id if note.incident else None,
                        note.purpose,
                        tuple(note.kinds),
                        ctx.wall.isoformat(),
                    )
                )
            if held:
                ctx.decisions.append(
                    Decision(
                        note.target,
                        note.incident.id if note.incident else None,
                        f"{note.purpose} mail held by the rate limit "
                        f"({ctx.policy.rate_limit} per {ctx.policy.rate_window:g}s); "
                        "it will be listed in a digest",
                        {"reason": "rate-limit", "to": held, "purpose": note.purpose},
                    )
                )
            if allowed:
                out.append(replace(note, recipients=allowed))
        return ctx, out


# Kinds whose update the group interval never holds: a failed delivery is not an escalation
# of the outage but news that alerts go missing (deduplicated: once per incident).
UNGROUPED_KINDS = frozenset({Kind.ALERT_FAILED})


def update_due(policy: Policy, incident: Incident) -> float | None:
    """When the incident's pending kinds may go out: at the end of the group wait for its
    first mail; for an update, not before the group interval since its last mail has passed
    (or its reminder is due, whichever comes first). None: nothing pending."""
    if incident.group_deadline is None:
        return None
    if not incident.notified_kinds or incident.last_notified is None:
        return incident.group_deadline
    if UNGROUPED_KINDS.intersection(incident.pending):
        return incident.group_deadline  # news about the alert path itself is not held
    wait = policy.group_interval
    if policy.reminder_interval > 0:
        wait = min(wait, policy.reminder_interval)
    return max(incident.group_deadline, incident.last_notified + wait)


def _held_for_recovery(incident: Incident) -> bool:
    """An update (not a first mail) of a target that is recovering waits for an event."""
    if not incident.notified_kinds or incident.healthy_since is None:
        return False
    return not UNGROUPED_KINDS.intersection(incident.pending)


def next_deadline(ctx: Ctx) -> float | None:
    """The earliest monotonic instant at which a tick could produce something (call it after
    the pipeline ran on ``ctx``). Mail that is withheld is not due before what ends the hold:
    the end of a silence, or for an inhibited target an event (its dependency's recovery)."""
    policy = ctx.policy
    times: list[float] = []
    for incident in ctx.book.open_incidents():
        if incident.healthy_since is not None:
            times.append(incident.healthy_since + policy.recovery_after)
        if incident.inhibited_by is not None:
            continue
        silence = ctx.muted.get(incident.target)
        if silence is not None:
            times.append(ctx.now + (silence.until - ctx.wall).total_seconds())
            continue
        due = update_due(policy, incident)
        if due is not None and not _held_for_recovery(incident):
            times.append(due)  # (a held update of a recovering target waits for an event)
        if (
            incident.healthy_since is None
            and policy.reminder_interval > 0
            and incident.last_notified is not None
        ):
            times.append(incident.last_notified + policy.reminder_interval)
    free = ctx.limiter.next_free(ctx.now)
    if free is not None:
        times.append(free)
    return min(times) if times else None


class Pipeline:
    """The pure stages in order: events in, notifications (not yet rendered) out."""

    def __init__(self) -> None:
        self.event_stages: tuple[EventStage, ...] = (
            TrackStage(),
            FilterStage(),
            IncidentStage(),
            SilenceStage(),
        )
        self.group = GroupStage()
        self.rate = RateLimitStage()

    def exec(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Notification]]:
        ctx, notes = self.notify(ctx, events)
        return self.rate.exec(ctx, notes)

    def notify(self, ctx: Ctx, events: list[Event]) -> tuple[Ctx, list[Notification]]:
        """Every stage but the rate limit, which only mail has (it is per recipient)."""
        for stage in self.event_stages:
            ctx, events = stage.exec(ctx, events)
        return self.group.exec(ctx, events)
