"""The transition function, edge by edge."""

import pytest

from watchdog.states import (
    Emit,
    Exited,
    ProbeDegraded,
    ProbeFailed,
    ProbeOk,
    Restart,
    RestartRequested,
    Spawned,
    SpawnFailed,
    Stop,
    StopRequested,
    TargetState,
    transition,
)

S = TargetState
LIVE = [S.STARTING, S.HEALTHY, S.DEGRADED, S.UNHEALTHY]


def kinds(effects: tuple[object, ...]) -> list[str]:
    return [e.kind for e in effects if isinstance(e, Emit)]


def test_spawned_to_starting_emits_started() -> None:
    state, effects = transition(S.STOPPED, Spawned(restart=False))
    assert state is S.STARTING and kinds(effects) == ["started"]


def test_restart_spawned_emits_restarted_with_reason() -> None:
    state, effects = transition(S.RESTARTING, Spawned(restart=True, reason="crashed: exit 3"))
    assert state is S.STARTING
    assert effects == (Emit("restarted", "restarted (crashed: exit 3)"),)


@pytest.mark.parametrize("start", [S.STARTING, S.DEGRADED, S.UNHEALTHY])
def test_probe_ok_to_healthy_emits_once(start: TargetState) -> None:
    state, effects = transition(start, ProbeOk())
    assert state is S.HEALTHY and kinds(effects) == ["healthy"]
    assert transition(state, ProbeOk()) == (S.HEALTHY, ())


def test_healthy_to_degraded_and_back() -> None:
    state, effects = transition(S.HEALTHY, ProbeDegraded("slow: 2.5s > 2.0s"))
    assert state is S.DEGRADED and kinds(effects) == ["degraded"]
    assert transition(S.DEGRADED, ProbeDegraded("slow")) == (S.DEGRADED, ())
    assert transition(S.DEGRADED, ProbeOk())[0] is S.HEALTHY


def test_degraded_never_restarts() -> None:
    _, effects = transition(S.DEGRADED, ProbeDegraded("body status: degraded"))
    assert not any(isinstance(e, Restart | Stop) for e in effects)


def test_failed_probe_in_start_grace_stays_starting_silently() -> None:
    assert transition(S.STARTING, ProbeFailed("connection refused", in_grace=True)) == (
        S.STARTING,
        (),
    )


def test_healthy_to_unhealthy_emits_once_without_restart() -> None:
    state, effects = transition(S.HEALTHY, ProbeFailed("timeout after 1.0s"))
    assert state is S.UNHEALTHY and kinds(effects) == ["unhealthy"]
    assert transition(S.UNHEALTHY, ProbeFailed("timeout after 1.0s")) == (S.UNHEALTHY, ())


def test_unhealthy_overdue_to_restarting() -> None:
    state, effects = transition(
        S.UNHEALTHY, ProbeFailed("timeout", overdue=True, restart_delay=0.0)
    )
    assert state is S.RESTARTING
    assert effects == (Restart(0.0, "unhealthy too long: timeout"),)


def test_healthy_overdue_at_once_emits_unhealthy_then_restarts() -> None:
    state, effects = transition(S.HEALTHY, ProbeFailed("HTTP 503", overdue=True, restart_delay=2))
    assert state is S.RESTARTING
    assert kinds(effects) == ["unhealthy"] and isinstance(effects[-1], Restart)


def test_unhealthy_overdue_past_limit_to_failed_and_stops() -> None:
    state, effects = transition(S.UNHEALTHY, ProbeFailed("timeout", overdue=True))
    assert state is S.FAILED
    assert kinds(effects) == ["restart-limit-reached"]
    assert isinstance(effects[-1], Stop)


@pytest.mark.parametrize("start", LIVE)
def test_exit_to_restarting_emits_crashed(start: TargetState) -> None:
    state, effects = transition(start, Exited("exit code 3", restart_delay=0.0))
    assert state is S.RESTARTING
    assert kinds(effects) == ["crashed"]
    assert effects[-1] == Restart(0.0, "crashed: exit code 3")


def test_exit_past_limit_to_failed_emits_limit_once() -> None:
    state, effects = transition(S.HEALTHY, Exited("killed by SIGKILL", restart_delay=None))
    assert state is S.FAILED
    assert kinds(effects) == ["crashed", "restart-limit-reached"]
    assert transition(S.FAILED, Exited("again", restart_delay=None)) == (S.FAILED, ())


@pytest.mark.parametrize("start", [S.RESTARTING, S.FAILED, S.STOPPED])
def test_stale_signals_when_not_running_change_nothing(start: TargetState) -> None:
    for signal in (ProbeOk(), ProbeDegraded("x"), ProbeFailed("x"), Exited("x", 0.0)):
        assert transition(start, signal) == (start, ())


def test_spawn_failed_to_restarting_with_backoff() -> None:
    state, effects = transition(S.RESTARTING, SpawnFailed("no such file: x", restart_delay=1.0))
    assert state is S.RESTARTING
    assert kinds(effects) == ["crashed"] and effects[-1] == Restart(
        1.0, "could not start: no such file: x"
    )


def test_spawn_failed_past_limit_to_failed() -> None:
    state, effects = transition(S.RESTARTING, SpawnFailed("no such file", restart_delay=None))
    assert state is S.FAILED and kinds(effects) == ["crashed", "restart-limit-reached"]


def test_restart_requested_to_restarting() -> None:
    state, effects = transition(S.HEALTHY, RestartRequested("rss 600MB > 500MB", 0.0))
    assert state is S.RESTARTING and effects == (Restart(0.0, "rss 600MB > 500MB"),)


@pytest.mark.parametrize("start", [*LIVE, S.RESTARTING, S.FAILED])
def test_stop_requested_to_stopped(start: TargetState) -> None:
    state, effects = transition(start, StopRequested())
    assert state is S.STOPPED and kinds(effects) == ["stopped"]
    assert isinstance(effects[0], Stop)
    assert transition(S.STOPPED, StopRequested()) == (S.STOPPED, ())


def test_colours() -> None:
    assert S.HEALTHY.colour == "green"
    assert {S.DEGRADED.colour, S.STARTING.colour, S.RESTARTING.colour} == {"yellow"}
    assert {S.UNHEALTHY.colour, S.FAILED.colour, S.STOPPED.colour} == {"red"}
