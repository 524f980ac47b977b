"""The pure supervision core, edge by edge, with plain numbers for time."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from watchdog.core import (
    Core,
    Effect,
    Emit,
    Exited,
    Hold,
    Observation,
    Params,
    Probe,
    Probed,
    Release,
    ResourceSample,
    RestartRequest,
    Shutdown,
    Spawn,
    Spawned,
    SpawnFailed,
    State,
    Stop,
    Stopped,
    Tick,
)
from watchdog.events import Kind
from watchdog.states import TargetState as S

FAST = Params(
    check_interval=1.0,
    timeout_threshold=3.0,
    startup_grace=5.0,
    max_restarts=3,
    restart_window=60.0,
    restart_backoff=1.0,
    restart_backoff_max=8.0,
    healthy_reset=10.0,
    limit_retry=100.0,
    down_after=20.0,
    stop_timeout=10.0,
    hang_stop_timeout=2.0,
    crash_loop_count=3,
)


class Driver:
    """Feeds a core and keeps every effect, like the shell would."""

    def __init__(self, params: Params = FAST, now: float = 0.0) -> None:
        self.core = Core(params)
        self.now = now
        self.state, self.effects = self.core.start(now)
        self.all: list[Effect] = list(self.effects)

    def feed(self, obs: Observation, at: float | None = None) -> list[Effect]:
        if at is not None:
            self.now = at
        self.state, self.effects = self.core.decide(self.state, obs, self.now)
        self.all.extend(self.effects)
        return self.effects

    def kinds(self, effects: list[Effect] | None = None) -> list[str]:
        chosen = self.all if effects is None else effects
        return [str(e.kind) for e in chosen if isinstance(e, Emit)]

    def spawn(self, pid: int) -> list[Effect]:
        return self.feed(Spawned(pid))

    def probe(self, status: str, at: float | None = None, **kw: Any) -> list[Effect]:
        assert self.state.pid is not None
        return self.feed(Probed(self.state.pid, status, kw.pop("reason", status), **kw), at)

    def healthy(self, pid: int = 100) -> None:
        self.spawn(pid)
        self.probe("ok")
        assert self.state.phase is S.HEALTHY


def test_start_spawns_then_started_event() -> None:
    d = Driver()
    assert d.effects == [Spawn(restart=False)]
    effects = d.spawn(100)
    assert d.kinds(effects) == ["started"]
    assert Probe() in effects  # first probe at once
    assert d.state.phase is S.STARTING and d.state.pid == 100


def test_starting_to_healthy_on_first_ok() -> None:
    d = Driver()
    d.spawn(100)
    effects = d.probe("ok", at=0.2)
    assert d.kinds(effects) == ["healthy"]
    assert d.kinds(d.probe("ok", at=1.5)) == []  # only on change


def test_immediate_exit_before_started_is_a_crash() -> None:
    """A command that exits at once (sh -c 'exit 3') is a crash, counted and restarted."""
    d = Driver()
    d.spawn(100)
    effects = d.feed(Exited(100, "exit code 3", {"exit_code": 3}))
    assert d.kinds(effects) == ["crashed"]
    assert Spawn(restart=True, reason="crashed: exit code 3") in effects  # first: no backoff
    assert d.state.restarts_total == 1


def test_immediate_exits_reach_the_limit_and_crash_loop() -> None:
    d = Driver()
    pid = 100
    for _ in range(10):
        d.spawn(pid)
        d.feed(Exited(pid, "exit code 1"))
        due = d.core.next_due(d.state)
        if d.state.phase is S.FAILED:
            break
        assert due is not None
        d.feed(Tick(), at=due)
        pid += 1
    assert d.state.phase is S.FAILED
    assert d.kinds().count("restart-limit-reached") == 1
    assert d.kinds().count("crash-loop") == 1
    assert d.state.restarts_total == FAST.max_restarts


def test_backoff_doubles_to_the_cap() -> None:
    core = Core(FAST)
    assert [core.backoff(n) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_backoff_never_overflows_after_a_million_restarts() -> None:
    core = Core(FAST)
    assert core.backoff(10**6) == FAST.restart_backoff_max
    assert core.backoff(1025) == FAST.restart_backoff_max


def test_a_million_successive_restarts_keep_going() -> None:
    params = replace(FAST, max_restarts=10**7, restart_window=1e9)
    d = Driver(params)
    state = replace(d.state, successive=10**6, phase=S.HEALTHY, pid=5, spawned_at=0.0)
    state, _ = d.core.decide(state, Exited(5, "exit code 1"), 1.0)
    assert state.restart_at == 1.0 + params.restart_backoff_max
    assert state.phase is S.RESTARTING


def test_spawn_failure_is_a_crash_and_retried() -> None:
    d = Driver()
    effects = d.feed(SpawnFailed("EMFILE: Too many open files"))
    assert d.kinds(effects) == ["crashed"]
    assert any(isinstance(e, Spawn) for e in effects)  # retried at once, then backs off
    effects = d.feed(SpawnFailed("EMFILE: Too many open files"))
    assert not any(isinstance(e, Spawn) for e in effects)
    assert d.state.restart_at == 1.0
    effects = d.feed(Tick(), at=1.0)
    assert any(isinstance(e, Spawn) for e in effects)
    d.spawn(7)  # descriptors are back
    d.probe("ok")
    assert d.state.phase is S.HEALTHY


def test_spawn_failures_past_the_limit_then_slow_retry() -> None:
    d = Driver()
    while d.state.phase is not S.FAILED:
        d.feed(SpawnFailed("EACCES"))
        due = d.core.next_due(d.state)
        if d.state.phase is not S.FAILED and due is not None:
            d.feed(Tick(), at=due)
    assert d.state.retry_at == d.now + FAST.limit_retry
    effects = d.feed(Tick(), at=d.state.retry_at)
    assert Spawn(restart=True, reason="slow retry after the restart limit") in effects
    assert d.state.restarts == (d.now,)  # the window started afresh


def test_failed_probe_in_grace_is_forgiven() -> None:
    d = Driver()
    d.spawn(100)
    effects = d.probe("failed", at=1.0, reason="connection refused")
    assert d.kinds(effects) == []
    assert d.state.phase is S.STARTING


def test_grace_ends_with_unhealthy_counted_from_spawn() -> None:
    d = Driver()
    d.spawn(100)
    effects = d.probe("failed", at=5.0, reason="connection refused")
    assert d.kinds(effects) == ["unhealthy"]
    assert d.state.unhealthy_since == 0.0
    assert any(isinstance(e, Stop) for e in effects)  # 5 s > threshold 3 s since the spawn


def test_timeout_during_grace_is_not_forgiven() -> None:
    d = Driver()
    d.spawn(100)
    effects = d.probe("failed", at=0.5, reason="timeout", timed_out=True)
    assert d.kinds(effects) == ["unhealthy"]


def test_hang_counts_from_the_probe_send_not_its_timeout() -> None:
    """PROBE_TIMEOUT longer than TIMEOUT_THRESHOLD: the restart comes at sent + threshold."""
    d = Driver()
    d.healthy()
    d.feed(Tick(), at=1.5)  # next probe due at jitter 0 → at once after the first answer
    assert d.state.probe_sent_at is not None
    sent = d.state.probe_sent_at
    assert d.core.next_due(d.state) == sent + FAST.timeout_threshold
    effects = d.feed(Tick(), at=sent + FAST.timeout_threshold)
    assert d.kinds(effects) == ["unhealthy"]
    stop = next(e for e in effects if isinstance(e, Stop))
    assert stop.grace == FAST.hang_stop_timeout  # a hang gets the short kill grace
    assert d.state.phase is S.RESTARTING


def test_stop_escalation_recorded_in_restarted_event() -> None:
    d = Driver()
    d.healthy()
    d.feed(Tick(), at=1.5)
    d.feed(Tick(), at=10.0)
    effects = d.feed(Stopped(escalated=True, after=2.0))
    assert any(isinstance(e, Spawn) for e in effects)
    restarted = d.spawn(101)
    event = next(e for e in restarted if isinstance(e, Emit))
    assert event.kind is Kind.RESTARTED
    assert event.details["previous_stop"]["signal"] == "SIGKILL"
    assert "SIGKILL after 2.0s" in event.details["previous_stop"]["escalation"]


def test_http_errors_use_the_normal_stop_grace() -> None:
    d = Driver()
    d.healthy()
    d.probe("failed", at=2.0, reason="HTTP 500")
    effects = d.probe("failed", at=5.5, reason="HTTP 500")
    stop = next(e for e in effects if isinstance(e, Stop))
    assert stop.grace == FAST.stop_timeout


def test_unhealthy_then_ok_is_healthy_again() -> None:
    d = Driver()
    d.healthy()
    d.probe("failed", at=2.0, reason="HTTP 503")
    assert d.state.phase is S.UNHEALTHY
    effects = d.probe("ok", at=3.0)
    assert d.kinds(effects) == ["healthy"]
    assert d.state.unhealthy_since is None and d.state.bad_since is None


def test_degraded_and_back() -> None:
    d = Driver()
    d.healthy()
    assert d.kinds(d.probe("degraded", at=2.0, reason="slow")) == ["degraded"]
    assert d.kinds(d.probe("degraded", at=3.0, reason="slow")) == []
    assert d.kinds(d.probe("ok", at=4.0)) == ["healthy"]


def test_probe_of_an_earlier_process_is_ignored() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.feed(Probed(99, "failed", "connection refused"), at=2.0)
    assert d.kinds(effects) == []
    assert d.state.phase is S.HEALTHY


def test_probe_failing_because_the_process_died_waits_for_the_exit() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.probe("failed", at=2.0, reason="connection refused", gone=True)
    assert d.kinds(effects) == []
    assert d.kinds(d.feed(Exited(100, "exit code 1"))) == ["crashed"]


def test_exit_during_our_stop_is_not_a_crash() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(RestartRequest("memory"), at=2.0)
    effects = d.feed(Exited(100, "killed by SIGTERM"))
    assert d.kinds(effects) == []
    d.feed(Stopped(after=0.1))
    assert any(isinstance(e, Spawn) for e in d.effects)


def test_down_after_a_long_outage() -> None:
    d = Driver(replace(FAST, max_restarts=0))
    d.healthy(100)
    d.feed(Exited(100, "exit code 1"), at=1.0)
    assert d.state.phase is S.FAILED
    assert d.core.next_due(d.state) == 1.0 + FAST.down_after
    effects = d.feed(Tick(), at=1.0 + FAST.down_after)
    assert d.kinds(effects) == ["down"]
    assert d.kinds(d.feed(Tick(), at=50.0)) == []  # once per episode


def test_healthy_reset_forgets_the_backoff() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(Exited(100, "exit code 1"), at=1.0)
    d.spawn(101)
    assert d.state.successive == 1
    d.probe("ok", at=2.0)
    d.probe("ok", at=2.0 + FAST.healthy_reset)
    assert d.state.successive == 0


def test_rss_sample_over_the_cap_restarts() -> None:
    d = Driver(replace(FAST, rss_limit_mb=100.0, restart_on_rss=True))
    d.healthy(100)
    assert d.feed(ResourceSample((100, 101), 50.0)) == []
    effects = d.feed(ResourceSample((100, 101), 150.0))
    assert any(isinstance(e, Stop) for e in effects)
    assert "memory (RSS) 150 MB" in d.state.restart_reason


def test_rss_sample_of_an_old_process_is_ignored() -> None:
    d = Driver(replace(FAST, rss_limit_mb=100.0, restart_on_rss=True))
    d.healthy(100)
    assert d.feed(ResourceSample((99,), 150.0)) == []


def test_shutdown_stops_then_stopped_event() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.feed(Shutdown())
    assert Stop(FAST.stop_timeout, "erpwatch is stopping") in effects
    assert not d.state.settled
    effects = d.feed(Stopped(escalated=True, after=10.0))
    assert d.kinds(effects) == ["stopped"]
    assert d.state.settled


def test_shutdown_while_spawning_stops_the_new_child() -> None:
    d = Driver()
    d.feed(Shutdown())
    effects = d.spawn(100)
    assert any(isinstance(e, Stop) for e in effects)
    assert d.kinds(d.feed(Stopped())) == ["stopped"]


def test_shutdown_while_waiting_backoff() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(Exited(100, "exit code 1"), at=1.0)
    d.spawn(101)
    d.feed(Exited(101, "exit code 1"), at=1.5)
    assert d.state.restart_at is not None
    effects = d.feed(Shutdown())
    assert d.kinds(effects) == ["stopped"] and d.state.settled
    assert d.state.restart_at is None


def test_failed_stop_is_reported_once_and_retried() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(RestartRequest("memory"), at=1.0)
    assert d.kinds(d.feed(Stopped(error="EPERM"))) == ["stop-failed"]
    effects = d.feed(Tick(), at=2.0)
    assert any(isinstance(e, Stop) for e in effects)
    assert d.kinds(d.feed(Stopped(error="EPERM"))) == []
    d.feed(Stopped(), at=3.0)
    assert any(isinstance(e, Spawn) for e in d.effects)


def test_liveness_only_target_healthy_after_settling() -> None:
    d = Driver(replace(FAST, has_probe=False))
    effects = d.spawn(100)
    assert not any(isinstance(e, Probe) for e in effects)
    assert d.kinds(d.feed(Tick(), at=0.5)) == []
    assert d.kinds(d.feed(Tick(), at=1.0)) == ["healthy"]


def test_uncounted_restart_has_no_backoff_and_no_limit() -> None:
    d = Driver(replace(FAST, max_restarts=0))
    d.healthy(100)
    d.feed(RestartRequest("deploy", counted=False, actor="operator (alice)"), at=1.0)
    effects = d.feed(Stopped())
    assert Spawn(restart=True, reason="by operator (alice): deploy") in effects
    assert d.state.restarts == ()
    restarted = d.spawn(101)
    event = next(e for e in restarted if isinstance(e, Emit))
    assert event.kind is Kind.RESTARTED and event.details["actor"] == "operator (alice)"


def test_state_is_immutable_between_calls() -> None:
    d = Driver()
    before = d.state
    d.spawn(100)
    assert before.pid is None and isinstance(before, State)


def test_hang_grace_never_exceeds_the_normal_stop_grace() -> None:
    d = Driver(replace(FAST, stop_timeout=1.0, hang_stop_timeout=3.0))
    d.healthy()
    # The failed probe was sent at 0.0; the next one (sent at 2.0) is still in flight at 3.0.
    d.probe("failed", at=2.0, reason="timeout after 0.8s", timed_out=True)
    effects = d.feed(Tick(), at=3.0)
    stop = next(e for e in effects if isinstance(e, Stop))
    assert stop.grace == 1.0
    assert d.state.restart_reason == "unhealthy too long: timeout after 0.8s"


# --- operator requests ------------------------------------------------------------------


def test_hold_stops_and_keeps_it_stopped_without_alerts_or_down() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.feed(Hold("operator (bob)", "upgrade", "2026-12-01T10:00:00Z"), at=1.0)
    assert Stop(FAST.stop_timeout, "stopped by operator (bob): upgrade") in effects
    stopped = d.feed(Stopped(after=0.2))
    assert d.kinds(stopped) == ["stopped"]
    event = next(e for e in stopped if isinstance(e, Emit))
    assert event.message == "stopped by operator (bob): upgrade"
    assert event.details["held"]["since"] == "2026-12-01T10:00:00Z"
    assert d.state.phase is S.STOPPED and not d.state.settled
    assert d.core.next_due(d.state) is None  # no restart, no down, no retry
    assert d.kinds(d.feed(Tick(), at=1000.0)) == []
    assert d.kinds(d.feed(Hold("someone else"))) == []  # the first hold stays
    assert d.state.held is not None and d.state.held["actor"] == "operator (bob)"


def test_release_starts_a_held_target_as_started_by_the_operator() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(Hold("operator"), at=1.0)
    d.feed(Stopped())
    effects = d.feed(Release("operator (bob)"), at=5.0)
    assert Spawn(restart=True, reason="started by operator (bob)") in effects
    started = d.spawn(101)
    assert d.kinds(started) == ["started"]
    event = next(e for e in started if isinstance(e, Emit))
    assert event.message == "started by operator (bob)"
    assert d.state.held is None and d.state.restarts == ()


def test_release_past_the_limit_starts_with_a_fresh_window() -> None:
    d = Driver(replace(FAST, max_restarts=1, limit_retry=0))
    d.healthy(100)
    d.feed(Exited(100, "exit code 1"), at=1.0)
    d.spawn(101)
    d.feed(Exited(101, "exit code 1"), at=1.1)
    assert d.state.phase is S.FAILED
    effects = d.feed(Release("operator"), at=2.0)
    assert any(isinstance(e, Spawn) for e in effects)
    d.spawn(102)
    d.feed(Exited(102, "exit code 1"), at=2.1)
    assert d.state.phase is S.RESTARTING  # the window started afresh: one restart allowed


def test_operator_restart_of_a_held_target_starts_it() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(Hold("operator"))
    d.feed(Stopped())
    effects = d.feed(RestartRequest("", counted=False, actor="operator"))
    assert any(isinstance(e, Spawn) for e in effects)


def test_release_of_a_running_target_does_nothing() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.feed(Release("operator"), at=1.0)
    assert not any(isinstance(e, Spawn | Stop | Emit) for e in effects)
    assert d.state.pid == 100


def test_a_hold_kept_in_the_store_survives_an_erpwatch_restart() -> None:
    core = Core(FAST)
    held = {"actor": "operator", "reason": "upgrade", "since": "2026-12-01T10:00:00Z"}
    state, effects = core.start(0.0, held=held)
    assert not any(isinstance(e, Spawn) for e in effects)
    assert state.phase is S.STOPPED and state.held == held
    emit = next(e for e in effects if isinstance(e, Emit))
    assert emit.kind is Kind.STOPPED and "held" in emit.message
    state, effects = core.decide(state, Shutdown(), 1.0)
    assert state.settled and effects == []


def test_shutdown_of_a_held_target_emits_nothing_more() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(Hold("operator"))
    d.feed(Stopped())
    assert d.kinds(d.feed(Shutdown())) == []
    assert d.state.settled


def test_restarted_event_names_the_backoff_it_waited() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(Exited(100, "exit code 1"), at=1.0)
    first = d.spawn(101)
    d.feed(Exited(101, "exit code 1"), at=1.5)
    d.feed(Tick(), at=2.5)  # backoff 1 s
    second = d.spawn(102)
    backoffs = [e.details["backoff_s"] for e in first + second if isinstance(e, Emit)]
    assert backoffs == [0.0, 1.0]


# --- cause, checks and the next retry ---------------------------------------------------------

POSTGRES = "ConnectionError: could not connect to postgres"
DB_FAILED = {"name": "database", "status": "failed", "error": POSTGRES, "latency_ms": 2.0}
CACHE_OK = {"name": "cache", "status": "ok", "error": None, "latency_ms": 0.3}


def emitted(effects: list[Effect], kind: Kind) -> Emit:
    return next(e for e in effects if isinstance(e, Emit) and e.kind is kind)


def test_crash_cause_is_the_last_non_empty_stderr_line() -> None:
    d = Driver()
    d.healthy(100)
    tail = ["Traceback (most recent call last):", '  File "erp.py", line 3', POSTGRES, "  ", ""]
    effects = d.feed(Exited(100, "exit code 1", {"exit_code": 1, "stderr_tail": tail}), at=1.0)
    crashed = emitted(effects, Kind.CRASHED)
    assert crashed.details["cause"] == f"exit code 1: {POSTGRES}"
    assert crashed.details["stderr_tail"] == tail  # still there in full
    assert d.state.cause == {
        "summary": f"exit code 1: {POSTGRES}",
        "kind": "crash",
        "exit_code": 1,
        "signal": None,
        "stderr_line": POSTGRES,
        "checks": [],
    }
    d.spawn(101)
    assert d.state.cause is not None  # still in trouble while it starts again
    d.probe("ok", at=2.0)
    assert d.state.cause is None


def test_crash_cause_is_one_bounded_line_or_just_the_exit() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.feed(Exited(100, "killed by SIGKILL", {"signal": "SIGKILL", "stderr_tail": []}))
    assert emitted(effects, Kind.CRASHED).details["cause"] == "killed by SIGKILL"
    assert d.state.cause is not None and d.state.cause["signal"] == "SIGKILL"
    d.spawn(101)
    long_line = "x" * 5000
    effects = d.feed(Exited(101, "exit code 2", {"stderr_tail": [long_line]}))
    line = d.state.cause["stderr_line"] if d.state.cause else None
    assert line is not None and len(line) == 200 and line.endswith("…")
    assert emitted(effects, Kind.CRASHED).details["cause"] == f"exit code 2: {line}"


def test_spawn_failure_cause() -> None:
    d = Driver()
    effects = d.feed(SpawnFailed("EMFILE: Too many open files"))
    assert emitted(effects, Kind.CRASHED).details["cause"] == (
        "could not start: EMFILE: Too many open files"
    )
    assert d.state.cause is not None and d.state.cause["kind"] == "crash"


def test_degraded_names_the_failing_checks_and_their_errors() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.probe("degraded", reason="body status: degraded", checks=(DB_FAILED, CACHE_OK))
    degraded = emitted(effects, Kind.DEGRADED)
    assert degraded.message == f"degraded: database failed ({POSTGRES})"
    assert degraded.details["checks"] == [DB_FAILED, CACHE_OK]
    assert d.state.cause is not None
    assert (d.state.cause["kind"], d.state.cause["checks"]) == ("checks", [DB_FAILED])
    assert d.state.cause["summary"] == f"database failed ({POSTGRES})"
    d.probe("ok")
    assert d.state.cause is None


def test_degraded_without_failing_checks_keeps_the_reason() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.probe("degraded", reason="slow: 2.31s > 2.0s", checks=(CACHE_OK,))
    assert emitted(effects, Kind.DEGRADED).message == "degraded: slow: 2.31s > 2.0s"
    assert d.state.cause is not None and d.state.cause["kind"] == "probe"


def test_many_failing_checks_are_named_up_to_five() -> None:
    d = Driver()
    d.healthy(100)
    failing = tuple({"name": f"c{i}", "status": "failed", "error": None} for i in range(8))
    effects = d.probe("degraded", reason="body status: degraded", checks=failing)
    message = emitted(effects, Kind.DEGRADED).message
    assert message == "degraded: c0 failed, c1 failed, c2 failed, c3 failed, c4 failed, and 3 more"


def test_unhealthy_with_checks_names_them_after_the_reason() -> None:
    d = Driver()
    d.healthy(100)
    effects = d.probe("failed", reason="HTTP 503", checks=(DB_FAILED,))
    unhealthy = emitted(effects, Kind.UNHEALTHY)
    assert unhealthy.message == f"unhealthy: HTTP 503; database failed ({POSTGRES})"
    assert unhealthy.details["checks"] == [DB_FAILED]
    assert d.state.cause is not None and d.state.cause["kind"] == "checks"


def test_unanswered_probe_cause() -> None:
    d = Driver()
    d.healthy()
    d.feed(Tick(), at=1.5)
    sent = d.state.probe_sent_at
    assert sent is not None
    d.feed(Tick(), at=sent + FAST.timeout_threshold)
    assert d.state.cause is not None
    assert (d.state.cause["kind"], d.state.cause["summary"]) == ("probe", "no answer for 3.0s")


def test_a_cancelled_probe_is_no_hang_and_the_next_goes_out_at_once() -> None:
    """A reload that replaces the prober cancels the probe in flight: its missing answer is
    not a hang (it used to restart a healthy target after TIMEOUT_THRESHOLD)."""
    d = Driver()
    d.healthy()
    d.feed(Tick(), at=1.5)
    assert d.state.probe_sent_at is not None
    d.state = d.core.probe_cancelled(d.state, 1.6)
    effects = d.feed(Tick(), at=1.6)
    assert any(isinstance(e, Probe) for e in effects)  # at once, by the new prober
    d.probe("ok", at=1.7)
    assert d.core.probe_cancelled(d.state, 1.8) == d.state  # none in flight: unchanged
    later = d.feed(Tick(), at=1.6 + FAST.timeout_threshold)
    assert d.state.phase is S.HEALTHY and Kind.UNHEALTHY not in d.kinds(later)


def test_a_check_erpwatch_could_not_make_is_no_verdict_on_the_target() -> None:
    """EMFILE, ENOMEM of erpwatch's own (`Probed.local`): never unhealthy, never restarted
    for it, however long it lasts; the next real answer counts as usual."""
    d = Driver()
    d.healthy()
    for at in (1.5, 2.5, 3.5, 4.5, 5.5, 6.5):
        d.feed(Tick(), at=at)
        assert d.state.probe_sent_at is not None  # each check goes out on its cadence
        d.probe("failed", at=at + 0.01, reason="cannot connect: [Errno 24]", local=True)
    assert d.state.phase is S.HEALTHY and d.state.unhealthy_since is None
    assert not any(isinstance(e, Stop) for e in d.all) and Kind.UNHEALTHY not in d.kinds()
    d.feed(Tick(), at=7.5)
    effects = d.probe("failed", at=7.51, reason="HTTP 503")
    assert Kind.UNHEALTHY in d.kinds(effects)  # a real failure still counts


def test_restart_limit_carries_the_slow_retry_and_the_last_cause() -> None:
    d = Driver(replace(FAST, max_restarts=0))
    d.healthy(100)
    tail = [POSTGRES]
    effects = d.feed(Exited(100, "exit code 1", {"exit_code": 1, "stderr_tail": tail}), at=7.0)
    limit = emitted(effects, Kind.RESTART_LIMIT_REACHED)
    assert limit.details["retry_in_s"] == FAST.limit_retry
    assert limit.details["next_retry_in_s"] == FAST.limit_retry
    assert d.core.next_retry(d.state) == 7.0 + FAST.limit_retry
    cause = d.state.cause
    assert cause is not None and cause["kind"] == "limit"
    assert cause["summary"] == f"restart limit reached; last: exit code 1: {POSTGRES}"
    assert (cause["exit_code"], cause["stderr_line"]) == (1, POSTGRES)
    down = emitted(d.feed(Tick(), at=7.0 + FAST.down_after), Kind.DOWN)
    assert down.details["next_retry_in_s"] == FAST.limit_retry - FAST.down_after


def test_no_retry_scheduled_means_no_next_retry() -> None:
    d = Driver(replace(FAST, max_restarts=0, limit_retry=0))
    d.healthy(100)
    effects = d.feed(Exited(100, "exit code 1"), at=1.0)
    assert "next_retry_in_s" not in emitted(effects, Kind.RESTART_LIMIT_REACHED).details
    assert d.core.next_retry(d.state) is None
    # unhealthy for long with the process still running: "down", nothing scheduled yet
    d = Driver(replace(FAST, timeout_threshold=1000.0))
    d.healthy(100)
    d.probe("failed", at=1.0, reason="HTTP 500")
    down = emitted(d.feed(Tick(), at=1.0 + FAST.down_after), Kind.DOWN)
    assert "next_retry_in_s" not in down.details
    assert d.core.next_retry(d.state) is None


def test_crash_loop_carries_the_backoff_restart() -> None:
    d = Driver(replace(FAST, max_restarts=10))
    pid = 100
    d.spawn(pid)
    loop: Emit | None = None
    while loop is None:
        effects = d.feed(Exited(pid, "exit code 1"))
        loop = next((e for e in effects if isinstance(e, Emit) and e.kind is Kind.CRASH_LOOP), None)
        due = d.core.next_due(d.state)
        assert due is not None
        if loop is None:
            d.feed(Tick(), at=due)
            pid += 1
            d.spawn(pid)
    # Fake time: the retry the event announces is the restart the core has scheduled.
    assert d.state.restart_at is not None
    assert d.core.next_retry(d.state) == d.state.restart_at
    assert d.now + loop.details["next_retry_in_s"] == pytest.approx(d.state.restart_at)


def test_resource_and_operator_causes() -> None:
    d = Driver(replace(FAST, rss_limit_mb=100.0, restart_on_rss=True))
    d.healthy(100)
    d.feed(ResourceSample((100,), 150.0))
    assert d.state.cause is not None and d.state.cause["kind"] == "resource"
    d.feed(Stopped())
    restarted = emitted(d.spawn(101), Kind.RESTARTED)
    assert restarted.details["cause_kind"] == "resource"
    d.probe("ok")
    d.feed(RestartRequest("deploy", counted=False, actor="bob"))
    assert d.state.cause is not None
    assert d.state.cause["summary"] == "restart requested by bob: deploy"
    d.feed(Stopped())
    d.spawn(102)
    d.probe("ok")
    d.feed(Hold("bob", "upgrade"))
    assert d.state.cause is not None
    assert (d.state.cause["kind"], d.state.cause["summary"]) == (
        "operator",
        "stopped by bob: upgrade",
    )
    assert d.core.next_retry(d.state) is None
    d.feed(Stopped())
    d.feed(Release("bob"))
    assert d.state.cause is None


def test_shutdown_cause_and_a_kept_hold_cause() -> None:
    d = Driver()
    d.healthy(100)
    d.feed(Shutdown())
    assert d.state.cause is not None
    assert (d.state.cause["kind"], d.state.cause["summary"]) == ("operator", "erpwatch is stopping")
    state, _ = Core(FAST).start(0.0, held={"actor": "bob", "reason": "upgrade", "since": "x"})
    assert state.cause is not None and state.cause["summary"] == "stopped by bob: upgrade"


def test_limit_cause_without_an_earlier_one_names_the_last_reason() -> None:
    d = Driver(replace(FAST, max_restarts=0))
    d.healthy(100)
    d.feed(RestartRequest("config changed"))  # counted: the limit of 0 is reached at once
    assert d.state.cause is not None
    assert d.state.cause["summary"] == "restart limit reached; last: config changed"
    assert d.state.cause["kind"] == "limit"


def test_checks_keep_their_cadence_when_a_round_comes_late() -> None:
    d = Driver()
    d.healthy()  # the first answer; the next check goes out at once (jitter 0)
    d.probe("ok", at=0.1)
    due = d.state.next_probe_at
    assert Probe() in d.feed(Tick(), at=due + 0.3)  # a busy loop: this round is 0.3 s late
    assert d.state.next_probe_at == due + FAST.check_interval  # not pushed back by 0.3 s
    d.probe("ok", at=due + 0.35)
    late = d.state.next_probe_at + 1.5  # more than an interval behind: a new cadence
    assert Probe() in d.feed(Tick(), at=late)
    assert d.state.next_probe_at == late + FAST.check_interval
