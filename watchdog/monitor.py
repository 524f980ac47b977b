"""TargetMonitor: one per target; ``step()`` is one round, ``run()`` only waits.

CONTRACT (for readers of the monitor's state, e.g. the status API and alerting):

    @dataclass(frozen=True)
    class TargetStatus:
        name: str
        state: TargetState          # watchdog.states.TargetState (a StrEnum)
        colour: str                 # "green" | "yellow" | "red"  (TargetState.colour)
        pid: int | None
        uptime: float | None        # seconds since the current process started
        restarts_in_window: int
        restarts_total: int
        health_url: str | None
        last_probe: ProbeResult | None
        last_event: Event | None
        resources: Mapping[str, Any] | None   # latest per-target psutil sample, if any
        def to_dict(self) -> dict[str, Any]   # JSON-safe, for /status and `erpwatch status`

    class Supervisor:                       # watchdog/supervisor.py, owns all monitors
        def statuses(self) -> list[TargetStatus]
"""
