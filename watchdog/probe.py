"""One HTTP health check.

CONTRACT:

    class ProbeStatus(StrEnum): OK = "ok"; DEGRADED = "degraded"; FAILED = "failed"

    @dataclass(frozen=True)
    class ProbeResult:
        status: ProbeStatus
        latency: float              # seconds
        status_code: int | None
        reason: str                 # human text: "HTTP 503", "timeout after 1.0s",
                                    # "connection refused", "slow: 2.31s > 2.0s",
                                    # "body status: degraded"
        checked_at: float           # monotonic

    def classify(status_code: int | None, latency: float, body: object | None,
                 degraded_latency: float, error: str | None = None) -> tuple[ProbeStatus, str]
        # pure: error → FAILED; 5xx/4xx → FAILED; JSON body {"status": "degraded"} or latency
        # > degraded_latency → DEGRADED; JSON {"status": "down"|"error"|"unhealthy"} → FAILED.

    class Prober:
        def __init__(self, url: str, *, timeout: float, degraded_latency: float,
                     client: httpx.AsyncClient, clock: Clock) -> None
        async def check(self) -> ProbeResult   # never raises for network problems
"""
