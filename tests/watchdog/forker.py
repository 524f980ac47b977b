"""A target that forks many long-lived descendants of every kind (for survivor_scenario.py).

    python forker.py PIDFILE COUNT      → prints READY once COUNT descendants run

Kinds, in turn (5 processes per round): a plain child, a nested child with a grandchild, a
child that calls setsid, and a double-forked setsid daemon (fork, setsid, fork, the middle
one exits: the daemon is re-parented to the nearest subreaper). Every second round's
processes ignore SIGTERM. Each long-lived process appends "<pid> <kind>" to PIDFILE.
"""

from __future__ import annotations

import os
import signal
import sys
import time

KINDS = ("plain", "nested", "setsid", "daemon")


def record(pidfile: str, kind: str) -> None:
    fd = os.open(pidfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {kind}\n".encode())
    finally:
        os.close(fd)


def linger(pidfile: str, kind: str, stubborn: bool) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN if stubborn else signal.SIG_DFL)
    record(pidfile, kind)
    while True:
        time.sleep(3600)


def spawn(kind: str, pidfile: str, stubborn: bool) -> None:
    pid = os.fork()
    if pid:
        if kind == "daemon":
            os.waitpid(pid, 0)  # the middle process exits at once
        return
    try:
        if kind == "nested":
            if os.fork() == 0:
                linger(pidfile, "nested-grandchild", stubborn)
        elif kind == "setsid":
            os.setsid()
        elif kind == "daemon":
            os.setsid()
            if os.fork():
                os._exit(0)
        linger(pidfile, kind, stubborn)
    finally:
        os._exit(0)


def count_lines(path: str) -> int:
    try:
        with open(path, "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def main(pidfile: str, count: int) -> None:
    already = count_lines(pidfile)
    made = 0
    round_number = 0
    while made < count:
        for kind in KINDS:
            if made >= count:
                break
            spawn(kind, pidfile, stubborn=round_number % 2 == 1)
            made += 2 if kind == "nested" else 1
        round_number += 1
    deadline = time.monotonic() + 30
    while count_lines(pidfile) < already + made:
        if time.monotonic() > deadline:
            sys.exit("descendants did not report")
        time.sleep(0.01)
    print("READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
