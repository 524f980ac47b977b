"""Restart policy: how many restarts a window allows and how long to wait before the next one.

Pure and fed with monotonic timestamps, so every edge is testable with plain numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartNow:
    """Restart after ``delay`` seconds (0 for the first restart after a healthy stretch)."""

    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """MAX_RESTARTS restarts already happened within the window."""

    restarts: int
    window: float


RestartDecision = RestartNow | GiveUp


class RestartPolicy:
    """At most ``max_restarts`` within ``window`` seconds, exponential backoff between
    successive restarts (``backoff``, doubled each time, capped at ``backoff_max``), and a
    fresh start (no delay) once the target has been healthy for ``healthy_reset`` seconds.
    """

    def __init__(
        self,
        *,
        max_restarts: int,
        window: float,
        backoff: float,
        backoff_max: float,
        healthy_reset: float,
    ) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.healthy_reset = healthy_reset
        self._restarts: deque[float] = deque()
        self._successive = 0
        self.total = 0

    def decide(self, now: float) -> RestartDecision:
        self._forget_before(now - self.window)
        if len(self._restarts) >= self.max_restarts:
            return GiveUp(restarts=len(self._restarts), window=self.window)
        return RestartNow(delay=self.next_delay())

    def next_delay(self) -> float:
        if self._successive == 0:
            return 0.0
        return min(self.backoff * 2.0 ** (self._successive - 1), self.backoff_max)

    def record_restart(self, now: float) -> None:
        self._restarts.append(now)
        self._successive += 1
        self.total += 1

    def healthy_for(self, seconds: float) -> None:
        """The target has been healthy for ``seconds`` without interruption."""
        if seconds >= self.healthy_reset:
            self._successive = 0

    def restarts_in_window(self, now: float) -> int:
        self._forget_before(now - self.window)
        return len(self._restarts)

    def reset(self) -> None:
        """Forget the window (after a slow retry past the limit brought the target back)."""
        self._restarts.clear()
        self._successive = 0

    def _forget_before(self, cutoff: float) -> None:
        while self._restarts and self._restarts[0] <= cutoff:
            self._restarts.popleft()
