"""`erpwatch run` as a real process: signals stop every target cleanly and leave nothing."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import free_port, wait_until


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def history(tmp_path: Path, *args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "watchdog.cli",
            "history",
            "--db",
            str(tmp_path / "events.db"),
            "--json",
            "--limit",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(result.stdout))


class Run:
    def __init__(
        self,
        tmp_path: Path,
        env: dict[str, str],
        *,
        preexec_fn: Callable[[], None] | None = None,
        prelude: str | None = None,
    ) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
        self.tmp_path = tmp_path
        # ``prelude``: Python run in the erpwatch process before `erpwatch run` itself.
        argv = ["-m", "watchdog.cli", "run"]
        if prelude is not None:
            argv = [
                "-c",
                f"{prelude}\nfrom watchdog.cli import main\nraise SystemExit(main(['run']))",
            ]
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            preexec_fn=preexec_fn,
            env={
                **base,
                "ERPWATCH_LOG_PATH": str(tmp_path / "logs"),
                "ERPWATCH_DB_PATH": str(tmp_path / "events.db"),
                "ERPWATCH_CHECK_INTERVAL": "0.05",
                "ERPWATCH_STATUS_PORT": "0",
                **env,
            },
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def kinds(self) -> list[tuple[str, str]]:
        if not (self.tmp_path / "events.db").exists():
            return []
        return [(str(e["target"]), str(e["kind"])) for e in reversed(history(self.tmp_path))]

    def pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_all_targets_with_grandchildren_and_exits_0(
    tmp_path: Path, runs: list[Run], signum: signal.Signals
) -> None:
    port = free_port()
    backend = (
        f"{sys.executable} -m watchdog.demo.backend --port {port} "
        "--spawn-grandchild --grandchild-setsid"
    )
    stubborn = f"{sys.executable} -m watchdog.demo.backend --port {free_port()} --ignore-sigterm"
    run = Run(
        tmp_path,
        {
            "ERPWATCH_TARGETS__BACKEND__COMMAND": backend,
            "ERPWATCH_TARGETS__BACKEND__HEALTH_URL": f"http://127.0.0.1:{port}/health",
            "ERPWATCH_TARGETS__STUBBORN__COMMAND": stubborn,
            "ERPWATCH_STOP_TIMEOUT": "0.5",
        },
    )
    runs.append(run)
    wait_until(
        lambda: {("backend", "healthy"), ("stubborn", "healthy")} <= set(run.kinds()),
        timeout=20,
        what="both targets healthy",
    )
    # The backend's grandchild (which left the group with setsid) must be up too.
    wait_until(lambda: len(run.pids()) >= 3, timeout=10, what="grandchild started")
    pids = run.pids()
    run.proc.send_signal(signum)
    assert run.proc.wait(20) == 0
    assert not [pid for pid in pids if alive(pid)]
    kinds = run.kinds()
    assert ("backend", "stopped") in kinds and ("stubborn", "stopped") in kinds
    assert kinds[-1] == ("erpwatch", "watchdog-stopped")


# A target whose daemon leaves its group and session and drops its whole environment
# (ERPWATCH_TARGET marker included): re-parented to erpwatch, found by no stop of the target.
# The middle process exits at once, so no walk of the target's tree sees the daemon.
MARKERLESS_DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print("DAEMON", os.getpid(), flush=True)
        os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)"], {})
    os._exit(0)
time.sleep(300)
"""


def test_a_daemon_that_dropped_its_marker_does_not_outlive_erpwatch(
    tmp_path: Path, runs: list[Run]
) -> None:
    command = shlex.join([sys.executable, "-c", MARKERLESS_DAEMON])
    run = Run(tmp_path, {"ERPWATCH_COMMAND": command, "ERPWATCH_STOP_TIMEOUT": "1"})
    runs.append(run)
    out_log = tmp_path / "logs" / "backend.out.log"

    def daemon() -> int | None:
        for line in out_log.read_text().splitlines() if out_log.exists() else []:
            if line.startswith("DAEMON "):
                return int(line.split()[1])
        return None

    pid = wait_until(daemon, timeout=20, what="the daemon started")
    assert pid is not None
    proc = psutil.Process(pid)
    try:
        wait_until(lambda: proc.ppid() == run.proc.pid, timeout=10, what="adopted by erpwatch")
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(30) == 0
        assert not alive(pid)  # it lived on, re-parented to init
    finally:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # by PID, should the check above have failed


def test_crash_recorded_while_history_reads_concurrently(tmp_path: Path, runs: list[Run]) -> None:
    port = free_port()
    run = Run(
        tmp_path,
        {
            "ERPWATCH_COMMAND": f"{sys.executable} -m watchdog.demo.backend --port {port}",
            "ERPWATCH_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        },
    )
    runs.append(run)
    wait_until(lambda: ("backend", "healthy") in run.kinds(), timeout=20, what="healthy")
    (child,) = [p for p in psutil.Process(run.proc.pid).children() if p.pid in run.pids()]
    child.kill()
    wait_until(lambda: run.kinds().count(("backend", "healthy")) >= 2, timeout=20)
    crashed = history(tmp_path, "--kind", "crashed")
    assert crashed[0]["details"]["signal"] == "SIGKILL"  # type: ignore[index]
    run.proc.terminate()
    assert run.proc.wait(20) == 0


def test_hup_usr1_usr2_pipe_never_stop_it_then_sigterm_stops_cleanly(
    tmp_path: Path, runs: list[Run]
) -> None:
    port, status_port = free_port(), free_port()
    run = Run(
        tmp_path,
        {
            "ERPWATCH_COMMAND": f"{sys.executable} -m watchdog.demo.backend --port {port}",
            "ERPWATCH_HEALTH_URL": f"http://127.0.0.1:{port}/health",
            "ERPWATCH_STATUS_PORT": str(status_port),
        },
    )
    runs.append(run)
    wait_until(lambda: ("backend", "healthy") in run.kinds(), timeout=20, what="healthy")
    (backend,) = psutil.Process(run.proc.pid).children()
    log_file = tmp_path / "logs" / "erpwatch.log"

    def logged(text: str) -> bool:
        return log_file.exists() and text in log_file.read_text(errors="replace")

    for signum, line in [
        (signal.SIGHUP, "SIGHUP received: reloading the configuration"),
        (signal.SIGPIPE, None),
        (signal.SIGUSR1, "SIGUSR1 received"),
        (signal.SIGUSR2, "SIGUSR2 received"),
        (signal.SIGHUP, None),  # a second one too
    ]:
        run.proc.send_signal(signum)
        if line is not None:
            wait_until(functools.partial(logged, line), timeout=10, what=f"{signum.name} logged")
        assert run.proc.poll() is None, f"erpwatch died of {signum.name}"
    wait_until(
        lambda: log_file.read_text().count("SIGHUP received") == 2,
        timeout=10,
        what="the second SIGHUP logged",
    )
    assert run.proc.poll() is None

    # The backend was left alone and is still supervised: same pid, probed just now.
    base = f"http://127.0.0.1:{status_port}"

    def fresh_status() -> dict[str, Any] | None:
        document = httpx.get(f"{base}/status", params={"fresh": "1"}, timeout=5).json()
        (target,) = document["targets"]
        age = (target.get("last_probe") or {}).get("age_s")
        return target if age is not None and age < 1.0 else None

    target = wait_until(fresh_status, timeout=10, what="a fresh probe after the signals")
    assert target is not None
    assert target["pid"] == backend.pid and target["state"] == "healthy"
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    assert alive(backend.pid)
    kinds = run.kinds()
    assert kinds.count(("backend", "started")) == 1
    assert ("backend", "stopped") not in kinds and ("backend", "crashed") not in kinds
    # SIGHUP is a reload (validated in a child process: it takes a moment): nothing
    # changed, so nothing was restarted, and it says so.
    wait_until(
        lambda: run.kinds().count(("erpwatch", "config-reloaded")) == 2,
        timeout=20,
        what="both reloads done",
    )
    assert ("backend", "stopped") not in run.kinds() and alive(backend.pid)
    # Validation ran in child processes: pydantic never loaded in erpwatch (~11 MiB of RSS).
    assert "_pydantic_core" not in Path(f"/proc/{run.proc.pid}/maps").read_text()

    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(20) == 0
    wait_until(lambda: not alive(backend.pid), timeout=5, what="the backend gone")
    kinds = run.kinds()
    assert ("backend", "stopped") in kinds
    assert kinds[-1] == ("erpwatch", "watchdog-stopped")


# --- the boundaries of `erpwatch run` -----------------------------------------------------


def _health(base: str, **headers: str) -> int | None:
    try:
        return httpx.get(f"{base}/health", headers=headers, timeout=5).status_code
    except httpx.TransportError:
        return None


def test_nothing_configured_says_so_in_one_line(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, {})
    runs.append(run)
    out, _ = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 2
    assert out.strip() == (
        "erpwatch: configuration error: no target configured: set ERPWATCH_COMMAND "
        "(and ERPWATCH_HEALTH_URL) or ERPWATCH_TARGETS__<NAME>__COMMAND"
    )


def test_idle_connection_flood_is_bounded_and_erpwatch_keeps_running(
    tmp_path: Path, runs: list[Run]
) -> None:
    status_port = free_port()
    run = Run(
        tmp_path,
        {
            "ERPWATCH_COMMAND": f"{sys.executable} -c 'import time; time.sleep(120)'",
            "ERPWATCH_STATUS_PORT": str(status_port),
            "ERPWATCH_STATUS_MAX_CONNECTIONS": "5",
        },
    )
    runs.append(run)
    base = f"http://127.0.0.1:{status_port}"
    wait_until(lambda: _health(base) == 200, timeout=20, what="the status server")
    erpwatch = psutil.Process(run.proc.pid)

    def accepted() -> int:
        return sum(
            1
            for c in erpwatch.net_connections(kind="tcp")
            if c.laddr and c.laddr.port == status_port and c.status == psutil.CONN_ESTABLISHED
        )

    flood = [socket.create_connection(("127.0.0.1", status_port), timeout=5) for _ in range(40)]
    try:
        assert _health(base) == 200  # the oldest idle connection made room
        assert accepted() <= 5
        # The DNS-rebinding defence, on the real server: a foreign Host gets 421.
        assert _health(base, Host="rebind.attacker.example") == 421
        assert _health(base, Host=f"localhost:{status_port}") == 200
        assert run.proc.poll() is None
    finally:
        for sock in flood:
            sock.close()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(20) == 0


def _low_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))


def test_start_raises_the_open_file_limit_and_warns_about_unknown_variables(
    tmp_path: Path, runs: list[Run]
) -> None:
    (tmp_path / ".env").write_text("ERPWATCH_CHEK_INTERVAL=5\n")
    run = Run(
        tmp_path,
        {"ERPWATCH_COMMAND": f"{sys.executable} -c 'import time; time.sleep(120)'"},
        preexec_fn=_low_open_file_limit,
    )
    runs.append(run)
    log_file = tmp_path / "logs" / "erpwatch.log"
    warning = (
        "ERPWATCH_CHEK_INTERVAL is not a known variable; did you mean ERPWATCH_CHECK_INTERVAL?"
    )
    wait_until(
        lambda: log_file.exists() and "started" in log_file.read_text(), timeout=20, what="start"
    )
    text = log_file.read_text()
    assert "open-file limit raised from 256 to 2048 (hard limit 2048)" in text
    assert warning in text
    assert psutil.Process(run.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (2048, 2048)
    run.proc.send_signal(signal.SIGTERM)
    out, _ = run.proc.communicate(timeout=20)
    assert run.proc.returncode == 0  # a warning, never fatal
    assert warning in out  # on stderr too (the console log)


@pytest.mark.parametrize("problem", ["port", "database"])
def test_a_problem_arising_after_the_checks_is_one_line_not_a_traceback(
    tmp_path: Path, runs: list[Run], problem: str
) -> None:
    """The status port taken (or the database spoilt) between the checks and the start."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 100)
    env = {"ERPWATCH_COMMAND": f"{sys.executable} -c 'import time; time.sleep(120)'"}
    if problem == "port":
        env["ERPWATCH_STATUS_PORT"] = str(holder.getsockname()[1])
    else:
        env["ERPWATCH_DB_PATH"] = str(junk)
    run = Run(tmp_path, env, prelude="import watchdog.preflight as p; p.fast_checks = lambda s: []")
    runs.append(run)
    try:
        out, _ = run.proc.communicate(timeout=30)
    finally:
        holder.close()
    assert run.proc.returncode == 1, out
    assert "Traceback" not in out
    [line] = [line for line in out.splitlines() if line.startswith("erpwatch: not starting: ")]
    if problem == "port":
        port = env["ERPWATCH_STATUS_PORT"]
        assert f"status server cannot listen on 127.0.0.1:{port}: Address already in use" in line
        assert f"(held by pid {os.getpid()} " in line
    else:
        assert f"cannot use {junk} as the event database: file is not a database" in line
