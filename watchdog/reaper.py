"""erpwatch as the subreaper of its targets: no double-forked daemon escapes it.

A daemon that double-forks and calls ``setsid`` leaves its target's process group and
session, and once its parent exits it is re-parented to the nearest subreaper (else init),
where nothing finds it any more. ``erpwatch run`` makes itself that subreaper: such orphans
become erpwatch's own children, found through ``/proc/self/task/*/children`` and proven to
belong to a target by the ``ERPWATCH_TARGET=<name>`` marker every target's environment
carries (`watchdog.process.ManagedProcess` sets it; descendants inherit it).

API (for ``watchdog/app.py``; only ``erpwatch run`` is a subreaper):

    become_subreaper() -> bool      # prctl(PR_SET_CHILD_SUBREAPER, 1); False when unavailable
    async run(interval=REAP_INTERVAL) -> None
        # the stray reaper, a worker for TaskSupervisor.spawn: every `interval` seconds
        # waitpid()s each zombie child nobody else waits for (see `reap_strays`). Keep it
        # running until the targets have stopped: the stop's SIGKILLs make the zombies.

    is_subreaper() -> bool
    reap_strays(protected=None) -> list[tuple[int, int]]   # (pid, wait status) reaped
    end_strays(grace) -> list[int]  # at shutdown: end the adopted children left (no marker)
    adopted(target, children=None) -> list[psutil.Process]  # a target's escaped processes
    escapees(children=None) -> dict[str, list[psutil.Process]]  # marker -> escapees, one scan
    holding(pipes, unmarked) -> list[psutil.Process]  # unmarked ones holding a target's pipe
    claim(pid) / release(pid) / claimed() -> frozenset[int]
        # the children whose exit status belongs to a waiter (`ManagedProcess` claims its
        # Popen child): the stray reaper never touches them.

Which zombies are strays: a child of erpwatch, not claimed, and outside erpwatch's session.
Targets start in their own session, so their escaped descendants can never be in
erpwatch's; a child erpwatch itself spawns without a new session (asyncio subprocesses,
whose watcher waits for them) is left to its waiter. Never ``waitpid(-1)``: that would steal
the real exit status of a target's child from its `subprocess.Popen`.

The claimed set is process-wide state on purpose: which pid a process may wait for is a
fact about the OS process (the kernel keeps one child list per process), not about an
object graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import time
from collections.abc import Collection, Iterable

import psutil

log = logging.getLogger(__name__)

MARKER = "ERPWATCH_TARGET"  # in every target's environment: ERPWATCH_TARGET=<target name>
REAP_INTERVAL = 1.0  # seconds between passes of the stray reaper (a zombie waits at most that)
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
UNMARKED = ""  # `adopted`'s key for children without a marker (see `holding`)
_FD_SCAN_MAX = 1024  # descriptors of one unmarked child looked at for a target's pipe

_claimed: set[int] = set()
_index: tuple[float, dict[str, list[psutil.Process]]] | None = None  # see `adopted`


def claim(pid: int) -> None:
    """``pid`` is a child whose exit status its spawner will collect: never reap it."""
    _claimed.add(pid)


def release(pid: int) -> None:
    """The spawner has reaped ``pid`` (the pid may now be reused)."""
    _claimed.discard(pid)


def claimed() -> frozenset[int]:
    return frozenset(_claimed)


@functools.cache
def libc() -> ctypes.CDLL | None:
    """This process's C library; None where ctypes cannot load it."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


# Whether this process is a subreaper: asked of the kernel once, then known (only this
# process can make itself one, through `become_subreaper`). Every monitor asks every round.
_subreaper: bool | None = None


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants; False when the platform
    cannot (not Linux, no prctl)."""
    global _subreaper
    c = libc()
    if c is None or not hasattr(c, "prctl"):
        return False
    try:
        done = int(c.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, ctypes.ArgumentError):
        return False
    if done:
        _subreaper = True
    return done


def is_subreaper() -> bool:
    global _subreaper
    if _subreaper is None:
        _subreaper = _ask_subreaper()
    return _subreaper


def _ask_subreaper() -> bool:
    c = libc()
    if c is None or not hasattr(c, "prctl"):
        return False
    value = ctypes.c_int(0)
    try:
        if int(c.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0)) != 0:
            return False
    except (OSError, ctypes.ArgumentError):
        return False
    return value.value != 0


def own_children() -> list[int]:
    """The pids of this process's children, zombies included (orphans are re-parented to
    any of its threads, so every thread's list is read)."""
    me = os.getpid()
    try:
        tids = os.listdir(f"/proc/{me}/task")
    except OSError:
        return [child.pid for child in psutil.Process(me).children()]
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{me}/task/{tid}/children", "rb") as handle:
                found.extend(int(pid) for pid in handle.read().split())
        except OSError:
            continue
    return found


def _state_and_session(pid: int) -> tuple[str, int] | None:
    """From /proc/<pid>/stat, which a zombie still has (unlike its environ)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # the command name may hold spaces
    try:
        return fields[0].decode(), int(fields[3])
    except (IndexError, ValueError):
        return None


def reap_strays(protected: Collection[int] | None = None) -> list[tuple[int, int]]:
    """waitpid() every zombie child that is not claimed (nor in ``protected``) and lies
    outside this process's session; returns (pid, wait status) of each one reaped."""
    keep = _claimed if protected is None else {*_claimed, *protected}
    session = os.getsid(0)
    reaped: list[tuple[int, int]] = []
    for pid in own_children():
        if pid in keep:
            continue
        stat = _state_and_session(pid)
        if stat is None or stat[0] != "Z" or stat[1] == session:
            continue
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # somebody else was faster
        if got == pid:
            reaped.append((pid, status))
    return reaped


def end_strays(grace: float) -> list[int]:
    """At shutdown, once every target is stopped: end every live child still adopted here
    (not claimed, outside erpwatch's session), SIGTERM then SIGKILL after ``grace``. Such
    a process escaped a target and dropped its marker (``setsid env -i ...``), so no stop
    found it; it must not outlive erpwatch. Returns the pids signalled."""
    session = os.getsid(0)
    strays: list[psutil.Process] = []
    for pid in own_children():
        stat = _state_and_session(pid)
        if pid in _claimed or stat is None or stat[0] == "Z" or stat[1] == session:
            continue
        with contextlib.suppress(psutil.Error):
            strays.append(psutil.Process(pid))  # our child: its pid is not reused unreaped
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(strays, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=2.0)  # reaps them too (psutil waits for its children)
    return [proc.pid for proc in strays]


async def run(interval: float = REAP_INTERVAL) -> None:
    """The stray reaper: `reap_strays` every ``interval`` seconds, forever."""
    while True:
        reaped = reap_strays()
        if reaped:
            log.debug("reaped %d orphaned process(es): %s", len(reaped), [p for p, _ in reaped])
        await asyncio.sleep(interval)


def carries_marker(pid: int, value: str) -> bool:
    """``ERPWATCH_TARGET=<value>`` is in the process's environment (OSError if unreadable)."""
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return f"{MARKER}={value}".encode() in handle.read().split(b"\0")


def adopted(
    target: str, children: Iterable[int] | None = None, *, max_age: float = 0.0
) -> list[psutil.Process]:
    """Children of this process (when it is a subreaper) that carry ``target``'s marker:
    processes that escaped the target's tree and were re-parented here. ``children`` may
    pass the pids already known to be ours (from a shared ``ppid_map``). ``max_age``: an
    index of all targets' escapees at most this old will do (every monitor asks on every
    round; one scan of erpwatch's children then serves them all).

    Each is proven ours: the psutil.Process is made first (it pins the start time, so it
    is safe against pid reuse), then its environment is read, then its parent is checked to
    still be this process: a child's pid cannot be reused before we reap it."""
    return list(escapees(children, max_age=max_age).get(target, ()))


def escapees(
    children: Iterable[int] | None = None, *, max_age: float = 0.0
) -> dict[str, list[psutil.Process]]:
    """Marker value → this process's escaped children carrying it (`UNMARKED`: carrying
    none), from one scan; {} when not a subreaper. ``children``, ``max_age``: as `adopted`."""
    if not is_subreaper():
        return {}
    global _index
    now = time.monotonic()
    if children is None and _index is not None and now - _index[0] <= max_age:
        return _index[1]
    index = _escapees(own_children() if children is None else children)
    if children is None:
        _index = (now, index)
    return index


def _escapees(children: Iterable[int]) -> dict[str, list[psutil.Process]]:
    """Marker value → the unclaimed children of this process that carry it (`UNMARKED`:
    those that carry none)."""
    me = os.getpid()
    prefix = f"{MARKER}=".encode()
    index: dict[str, list[psutil.Process]] = {}
    for pid in children:
        if pid in _claimed:
            continue  # a target's own child: not an escapee
        with contextlib.suppress(psutil.Error, OSError):
            proc = psutil.Process(pid)
            with open(f"/proc/{pid}/environ", "rb") as handle:
                entries = handle.read().split(b"\0")
            values = [
                e[len(prefix) :].decode(errors="replace") for e in entries if e.startswith(prefix)
            ]
            if proc.ppid() == me:
                index.setdefault(values[0] if values else UNMARKED, []).append(proc)
    return index


def holding(pipes: Collection[int], unmarked: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``unmarked`` (escapees without a marker, ``escapees()[UNMARKED]``) that hold
    one of ``pipes`` (pipe inodes): a target's escapee that dropped its environment
    (``setsid env -i ...``) is still proven the target's by the output pipe it inherited."""
    if not pipes:
        return []
    wanted = {f"pipe:[{inode}]" for inode in pipes}
    return [proc for proc in unmarked if _holds(proc.pid, wanted)]


def _holds(pid: int, links: Collection[str]) -> bool:
    """One of ``pid``'s first `_FD_SCAN_MAX` descriptors links to one of ``links``."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds[:_FD_SCAN_MAX]:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in links:
                return True
    return False
