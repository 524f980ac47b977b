from watchdog.policy import GiveUp, RestartNow, RestartPolicy


def make(**overrides: float) -> RestartPolicy:
    values = dict(max_restarts=3, window=60.0, backoff=1.0, backoff_max=4.0, healthy_reset=30.0)
    values.update(overrides)
    return RestartPolicy(**values)  # type: ignore[arg-type]


def test_first_restart_is_immediate() -> None:
    assert make().decide(0.0) == RestartNow(0.0)


def test_backoff_doubles_between_successive_restarts_and_is_capped() -> None:
    policy = make(max_restarts=10)
    delays = []
    for now in range(6):
        decision = policy.decide(float(now))
        assert isinstance(decision, RestartNow)
        delays.append(decision.delay)
        policy.record_restart(float(now))
    assert delays == [0.0, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_limit_reached_after_max_restarts_in_window() -> None:
    policy = make()
    for now in (0.0, 1.0, 2.0):
        assert isinstance(policy.decide(now), RestartNow)
        policy.record_restart(now)
    assert policy.decide(3.0) == GiveUp(restarts=3, window=60.0)


def test_restarts_older_than_window_no_longer_count() -> None:
    policy = make()
    for now in (0.0, 1.0, 2.0):
        policy.record_restart(now)
    assert isinstance(policy.decide(59.9), GiveUp)
    assert isinstance(policy.decide(60.5), RestartNow)
    assert policy.restarts_in_window(60.5) == 2


def test_healthy_stretch_resets_backoff_but_not_window() -> None:
    policy = make(max_restarts=5)
    policy.record_restart(0.0)
    policy.record_restart(1.0)
    assert policy.next_delay() == 2.0
    policy.healthy_for(29.9)
    assert policy.next_delay() == 2.0
    policy.healthy_for(30.0)
    assert policy.next_delay() == 0.0
    assert policy.restarts_in_window(31.0) == 2


def test_zero_max_restarts_never_restarts() -> None:
    assert isinstance(make(max_restarts=0).decide(0.0), GiveUp)


def test_total_counts_every_restart() -> None:
    policy = make(window=1.0)
    for now in (0.0, 5.0, 10.0):
        policy.record_restart(now)
    assert policy.total == 3
    assert policy.restarts_in_window(10.5) == 1
