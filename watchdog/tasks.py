"""A small supervisor for erpwatch's own long-lived tasks (OTP style: a crash is expected).

    tasks = TaskSupervisor(clock=clock, on_fault=publish_fault)
    tasks.spawn("log-rotation", rotate_forever)   # factory() -> coroutine, run as a task
    tasks.dead()          # ["log-rotation"] while it waits for its restart after a fault
    await tasks.stop()    # cancel all, wait for them

A worker that returns is done (not restarted). A worker that raises (anything but
``CancelledError``) has faulted: the exception is logged once with its traceback, ``on_fault``
is awaited (its own failure is logged, never fatal), and ``factory()`` runs again after a
backoff that doubles up to ``backoff_max`` and starts over once a run lasted ``stable_after``
seconds. ``KeyboardInterrupt``/``SystemExit`` are not faults: they end the process as usual.

The supervisor holds no business logic and never reads the wall clock: ``clock`` gives the
monotonic time and the sleeps, so tests drive restarts with a `FakeClock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from watchdog.clock import Clock

log = logging.getLogger(__name__)

Factory = Callable[[], Coroutine[Any, Any, None]]
OnFault = Callable[[str, BaseException], Awaitable[None]]


@dataclass
class _Worker:
    name: str
    factory: Factory
    task: asyncio.Task[None] | None = None
    faults: int = 0
    waiting: bool = False  # faulted, not yet started again


class TaskSupervisor:
    """Runs named workers as asyncio tasks and restarts the ones that fault."""

    def __init__(
        self,
        *,
        clock: Clock,
        on_fault: OnFault | None = None,
        backoff: float = 0.1,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
    ) -> None:
        if backoff < 0 or backoff_max < backoff:
            raise ValueError("need 0 <= backoff <= backoff_max")
        self._clock = clock
        self._on_fault = on_fault
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._workers: dict[str, _Worker] = {}

    # -- starting ---------------------------------------------------------------------

    def spawn(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``factory()`` as the task ``name`` (restarted on faults, see the module doc).

        A name may be reused once its previous worker has ended; not while it is active.
        """
        previous = self._workers.get(name)
        if previous is not None and previous.task is not None and not previous.task.done():
            raise ValueError(f"a worker named {name!r} is already running")
        worker = _Worker(name, factory, faults=previous.faults if previous else 0)
        self._workers[name] = worker
        worker.task = asyncio.create_task(self._supervise(worker), name=name)

    async def _supervise(self, worker: _Worker) -> None:
        delay = self._backoff
        while True:
            started = self._clock.now()
            worker.waiting = False
            fault: Exception | None = None
            try:
                await worker.factory()
            except Exception as exc:
                fault = exc
            if fault is None:
                return  # returned normally: done, not restarted
            worker.waiting = True
            worker.faults += 1
            if self._clock.now() - started >= self._stable_after:
                delay = self._backoff  # it ran well for a while: start the backoff over
            log.error(
                "task %s failed (fault %d); restarting in %.3gs",
                worker.name,
                worker.faults,
                delay,
                exc_info=fault,
            )
            await self._report(worker.name, fault)
            fault = None  # its traceback holds frames: do not keep them through the sleep
            await self._clock.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _report(self, name: str, exc: BaseException) -> None:
        if self._on_fault is None:
            return
        try:
            await self._on_fault(name, exc)
        except Exception as report_error:
            # Its own traceback, once; the worker's was logged above.
            log.error("task %s: reporting its fault failed", name, exc_info=report_error)

    # -- looking -----------------------------------------------------------------------

    def dead(self) -> list[str]:
        """Names of workers that faulted and wait for their restart."""
        return [w.name for w in self._workers.values() if w.waiting and self._active(w)]

    def faults(self) -> dict[str, int]:
        """Faults so far per worker (every worker spawned, 0 when it never faulted)."""
        return {w.name: w.faults for w in self._workers.values()}

    def running(self, name: str) -> bool:
        """True while ``name``'s factory is running (not done, not waiting for a restart)."""
        worker = self._workers.get(name)
        return worker is not None and self._active(worker) and not worker.waiting

    @staticmethod
    def _active(worker: _Worker) -> bool:
        return worker.task is not None and not worker.task.done()

    # -- ending ------------------------------------------------------------------------

    async def join(self, name: str) -> None:
        """Wait until ``name`` returned normally or was cancelled (at once if unknown/done).

        Cancelling the caller does not cancel the worker."""
        worker = self._workers.get(name)
        if worker is not None and worker.task is not None and not worker.task.done():
            await asyncio.wait({worker.task})

    async def cancel(self, name: str) -> None:
        """Cancel ``name`` and wait for it to end (not a fault)."""
        worker = self._workers.get(name)
        if worker is None or worker.task is None:
            return
        worker.task.cancel()
        await asyncio.wait({worker.task})
        worker.waiting = False

    async def stop(self) -> None:
        """Cancel every worker and wait for all of them."""
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for worker in self._workers.values():
            worker.waiting = False
