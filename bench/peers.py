"""The watchdogs under comparison: erpwatch, supervisord (+ superlance httpok) and monit.

Each runs in the foreground with its own configuration in a temp dir, supervises the same
sample backend (``python -m watchdog.demo.backend --port P``) on loopback, and is stopped by
its PID. `install_peers` puts supervisor and superlance into ``bench/.peers/venv`` (PyPI) and
monit from Debian's packages when missing; what cannot be installed is reported and skipped.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.measure import TAG_VAR, BackendFinder, free_port, health_ok, kill_and_wait

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / ".peers"
PEER_VENV = PEERS_DIR / "venv"
PYTHON = sys.executable  # the project's venv: runs the sample backend and erpwatch
ERPWATCH = Path(PYTHON).parent / "erpwatch"
MONIT = shutil.which("monit") or "/usr/bin/monit"


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def install_peers(log: list[str]) -> None:
    """Best effort: install what is missing; every outcome is appended to ``log``."""
    if (
        not (PEER_VENV / "bin" / "supervisord").exists()
        or not (PEER_VENV / "bin" / "httpok").exists()
    ):
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        try:
            if not (PEER_VENV / "bin" / "python").exists():
                _run([sys.executable, "-m", "venv", str(PEER_VENV)])
            done = _run(
                [str(PEER_VENV / "bin" / "pip"), "install", "-q", "supervisor", "superlance"]
            )
            log.append(
                "pip install supervisor superlance: "
                + ("ok" if done.returncode == 0 else f"failed: {done.stderr.strip()[-300:]}")
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.append(f"pip install supervisor superlance: failed: {exc}")
    else:
        log.append(f"supervisor and superlance: already in {PEER_VENV.relative_to(ROOT)}")
    if Path(MONIT).exists():
        log.append(f"monit: {MONIT}")
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.append("monit: missing and cannot apt-get install here (not root / no apt)")
        return
    try:
        _run(["apt-get", "update", "-q"], timeout=300)
        done = _run(["apt-get", "install", "-y", "-q", "monit"], timeout=600)
        log.append(
            "apt-get install monit: "
            + ("ok" if done.returncode == 0 else f"failed: {done.stderr.strip()[-300:]}")
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.append(f"apt-get install monit: failed: {exc}")


@dataclass
class Scenario:
    """What to supervise and how often to check it (the same for every tool)."""

    port: int
    tag: str
    http_check: bool = True
    interval: float = 1.0  # seconds between checks
    timeout: float = 1.0  # probe timeout
    threshold: float = 1.0  # erpwatch TIMEOUT_THRESHOLD (monit/httpok: restart on 1st fail)
    backend_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)  # erpwatch only

    @property
    def backend_argv(self) -> list[str]:
        return [PYTHON, "-m", "watchdog.demo.backend", "--port", str(self.port), *self.backend_args]

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


class PeerUnavailable(RuntimeError):
    pass


class Peer:
    """A watchdog running in the foreground, with its own temp dir."""

    name = "peer"
    label = "peer"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.scenario: Scenario | None = None

    # --- describing ---------------------------------------------------------------
    def available(self) -> str | None:
        """None when usable, else why not."""
        return None

    def version(self) -> str:
        return "?"

    # --- running ------------------------------------------------------------------
    def start(self, scenario: Scenario, ready_timeout: float = 30.0) -> None:
        why = self.available()
        if why is not None:
            raise PeerUnavailable(why)
        self.scenario = scenario
        self.tmp = Path(tempfile.mkdtemp(prefix=f"erpwatch-bench-{self.name}-"))
        argv, env = self._prepare(scenario, self.tmp)
        self.proc = subprocess.Popen(
            argv,
            cwd=self.tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=(self.tmp / "watchdog.out").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        finder = BackendFinder(scenario.port)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.output_tail()}")
            if finder.current() and health_ok(scenario.port, timeout=0.5):
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: backend not healthy within {ready_timeout}s")

    def _prepare(self, scenario: Scenario, tmp: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def own_pids(self) -> list[int]:
        """The watchdog's own processes (not the supervised backend)."""
        return [] if self.proc is None else [self.proc.pid]

    def stop(self) -> None:
        """Stop as a user would; SIGKILL by PID what did not stop in time."""
        if self.proc is None:
            return
        try:
            self._graceful_stop()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_and_wait([self.proc.pid])
                self.proc.wait(timeout=5)
        finally:
            self.proc = None

    def _graceful_stop(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def cleanup(self) -> None:
        """Remove the temp dir (after leftovers were counted and killed)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def output_tail(self, chars: int = 600) -> str:
        if self.tmp is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.tmp / "watchdog.out").read_text(errors="replace")[-chars:]
        return ""


class Erpwatch(Peer):
    name = "erpwatch"
    label = "erpwatch"

    def version(self) -> str:
        from watchdog import __version__

        return __version__

    def _prepare(self, scenario: Scenario, tmp: Path) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
        env.update(
            {
                TAG_VAR: scenario.tag,
                "ERPWATCH_COMMAND": shlex.join(scenario.backend_argv),
                "ERPWATCH_CHECK_INTERVAL": str(scenario.interval),
                "ERPWATCH_PROBE_TIMEOUT": str(scenario.timeout),
                "ERPWATCH_TIMEOUT_THRESHOLD": str(scenario.threshold),
                # No backoff and no limit, like supervisord's autorestart and monit.
                "ERPWATCH_RESTART_BACKOFF": "0",
                "ERPWATCH_MAX_RESTARTS": "100000",
                "ERPWATCH_LOG_PATH": str(tmp / "logs"),
                "ERPWATCH_DB_PATH": str(tmp / "events.db"),
                "ERPWATCH_STATUS_ENABLED": "true",
                "ERPWATCH_STATUS_PORT": str(free_port()),
            }
        )
        if scenario.http_check:
            env["ERPWATCH_HEALTH_URL"] = scenario.health_url
        env.update(scenario.extra_env)
        return [str(ERPWATCH), "run"], env

    @property
    def db_path(self) -> Path | None:
        return None if self.tmp is None else self.tmp / "events.db"


class Supervisord(Peer):
    """supervisord with ``autorestart=true``; with an HTTP check, superlance's httpok."""

    name = "supervisord"
    label = "supervisord"

    def available(self) -> str | None:
        if not (PEER_VENV / "bin" / "supervisord").exists():
            return f"supervisord not installed in {PEER_VENV}"
        return None

    def version(self) -> str:
        out = _run([str(PEER_VENV / "bin" / "supervisord"), "--version"]).stdout.strip()
        superlance = _run([str(PEER_VENV / "bin" / "pip"), "show", "superlance"]).stdout
        sl = next(
            (ln.split()[-1] for ln in superlance.splitlines() if ln.startswith("Version:")), "?"
        )
        return f"supervisor {out}, superlance {sl}"

    def _prepare(self, scenario: Scenario, tmp: Path) -> tuple[list[str], dict[str, str]]:
        conf = tmp / "supervisord.conf"
        lines = [
            "[unix_http_server]",
            f"file={tmp}/supervisor.sock",
            "[supervisord]",
            f"logfile={tmp}/supervisord.log",
            f"pidfile={tmp}/supervisord.pid",
            f"childlogdir={tmp}",
            "nodaemon=true",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{tmp}/supervisor.sock",
            "[program:backend]",
            f"command={shlex.join(scenario.backend_argv)}",
            "autorestart=true",
            f'environment={TAG_VAR}="{scenario.tag}"',
            f"stdout_logfile={tmp}/backend.out.log",
            f"stderr_logfile={tmp}/backend.err.log",
        ]
        if scenario.http_check:
            # httpok listens to TICK_5 at best (supervisord has no 1 s tick): every 5 s.
            lines += [
                "[eventlistener:httpok]",
                f"command={PEER_VENV}/bin/httpok -p backend -t {scenario.timeout:g} "
                f"{scenario.health_url}",
                "events=TICK_5",
                f"stderr_logfile={tmp}/httpok.err.log",
            ]
        conf.write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
        return [str(PEER_VENV / "bin" / "supervisord"), "-n", "-c", str(conf)], env

    def own_pids(self) -> list[int]:
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.proc.pid).children():
                with contextlib.suppress(psutil.NoSuchProcess):
                    if "httpok" in " ".join(child.cmdline()):
                        pids.append(child.pid)
        return pids


class Monit(Peer):
    """monit 5 in the foreground (``-I``), ``set daemon 1``, a pidfile-checked process."""

    name = "monit"
    label = "monit"

    def available(self) -> str | None:
        return None if Path(MONIT).exists() else "monit is not installed"

    def version(self) -> str:
        first = _run([MONIT, "-V"]).stdout.splitlines()
        return first[0].replace("This is Monit version ", "monit ") if first else "?"

    def _prepare(self, scenario: Scenario, tmp: Path) -> tuple[list[str], dict[str, str]]:
        pidfile = tmp / "backend.pid"
        # monit runs programs without a shell and with a clean environment, and waits for
        # the start program to return (a program that stays in the foreground blocks monit
        # for the whole start timeout): the usual way is a shell that puts it in the
        # background and writes the pidfile.
        start = (
            f"export {TAG_VAR}={scenario.tag}; "
            f"{shlex.join(scenario.backend_argv)} >> {tmp}/backend.log 2>&1 & "
            f"echo $! > {pidfile}"
        )
        stop = f"kill $(cat {pidfile})"
        lines = [
            "set daemon 1",
            f"set logfile {tmp}/monit.log",
            f"set pidfile {tmp}/monit.pid",
            f"set idfile {tmp}/monit.id",
            f"set statefile {tmp}/monit.state",
            f"set httpd unixsocket {tmp}/monit.sock",
            "  allow localhost",
            f"check process backend with pidfile {pidfile}",
            f"  start program = \"/bin/sh -c '{start}'\" with timeout 30 seconds",
            f"  stop program = \"/bin/sh -c '{stop}'\"",
        ]
        if scenario.http_check:
            lines.append(
                f"  if failed host 127.0.0.1 port {scenario.port} protocol http "
                f'request "/health" with timeout {scenario.timeout:g} seconds then restart'
            )
        rc = tmp / "monitrc"
        rc.write_text("\n".join(lines) + "\n")
        rc.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
        # Under a subreaper: see bench/reaper.py (PID 1 here reaps orphans only slowly).
        return [PYTHON, str(BENCH_DIR / "reaper.py"), MONIT, "-I", "-c", str(rc)], env

    def own_pids(self) -> list[int]:
        if self.proc is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return [c.pid for c in psutil.Process(self.proc.pid).children() if c.name() == "monit"]
        return []

    def _graceful_stop(self) -> None:
        # monit does not stop its services when it quits: stop them first, as a user would.
        assert self.proc is not None and self.tmp is not None and self.scenario is not None
        _run([MONIT, "-c", str(self.tmp / "monitrc"), "stop", "all"], timeout=15)
        finder = BackendFinder(self.scenario.port)
        deadline = time.monotonic() + 15
        while finder.current() and time.monotonic() < deadline:
            time.sleep(0.05)
        super()._graceful_stop()


PEERS: dict[str, type[Peer]] = {"erpwatch": Erpwatch, "supervisord": Supervisord, "monit": Monit}
