"""Run a command under a child subreaper that reaps every orphan at once, as an init would.

    python bench/reaper.py COMMAND [ARG...]

monit starts programs that put themselves in the background; their processes are re-parented
to the nearest subreaper, normally init. PID 1 in the bench's VM reaps only about once a
second, which would leave killed backends as zombies for monit to wait out; under this
wrapper they are reaped at once, as systemd or tini would. SIGTERM/SIGINT are forwarded to
the command; the wrapper exits with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("reaper: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
    child = subprocess.Popen(argv)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child.pid:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
