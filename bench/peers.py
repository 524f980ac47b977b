"""The watchdogs under comparison: erpwatch, supervisord (+ superlance httpok), monit, PM2 and
circus, each configured as its own documentation recommends (see `describe` of each class,
copied into RESULTS.md).

Each supervises the same backend, the seed's stack (`bench/seed_backend.py`: a Starlette app
with erpwatch's health kit, on uvicorn), on loopback, with its configuration and state in a
temp dir, and is stopped by PID. `install_peers` puts supervisor, superlance and circus into
``bench/.peers/venv`` (PyPI), PM2 into ``bench/.peers/node_modules`` (npm) and monit from
Debian's packages when missing; what cannot be installed is reported and skipped.
erpwatch itself is measured as users install it: `installed_erpwatch` puts this checkout
into ``bench/.peers/erpwatch`` with ``pip install .`` (a byte-compiled wheel, no dev extras).
"""

from __future__ import annotations

import contextlib
import functools
import json
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

from bench.measure import (
    TAG_VAR,
    BackendFinder,
    free_port,
    health_ok,
    kill_and_wait,
    tagged_processes,
)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / ".peers"
PEER_VENV = PEERS_DIR / "venv"
PM2_JS = PEERS_DIR / "node_modules" / "pm2" / "bin" / "pm2"
PYTHON = sys.executable  # the project's venv: runs the backends
INSTALLED_VENV = PEERS_DIR / "erpwatch"  # erpwatch as installed by users (installed_erpwatch)
ERPWATCH_PYTHON = INSTALLED_VENV / "bin" / "python"
ERPWATCH = INSTALLED_VENV / "bin" / "erpwatch"
SEED_BACKEND = BENCH_DIR / "seed_backend.py"
MONIT = shutil.which("monit") or "/usr/bin/monit"
STOP_GRACE_TENTHS = 30  # monit's stop program: SIGTERM, then SIGKILL after 3.0 s
NODE = shutil.which("node") or "/usr/bin/node"
NPM = shutil.which("npm") or "/usr/bin/npm"
PIP_PEERS = ("supervisor", "superlance", "circus")


def _run(
    cmd: list[str], timeout: float = 600, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


@functools.cache
def installed_erpwatch() -> str:
    """Install this checkout into `INSTALLED_VENV` as a user would (``pip install .``: a
    wheel, byte-compiled, no dev extras), once per process; what was done, for the log.

    The project's venv is an editable install with the dev extras: its .pth files (the
    editable finder, setuptools' distutils hook) slow every interpreter start there, the
    bare one too (~20 ms more per start here), and pytest brings pygments, which httpx then
    imports. Neither is in what users run, so neither is in the figures."""
    if not ERPWATCH_PYTHON.exists():
        _check([sys.executable, "-m", "venv", str(INSTALLED_VENV)])
    pip = [str(ERPWATCH_PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _check([*pip, str(ROOT)])  # the dependencies, when missing
    _check([*pip, "--force-reinstall", "--no-deps", str(ROOT)])  # this checkout's code
    return f"erpwatch: this checkout pip-installed into {INSTALLED_VENV.relative_to(ROOT)}"


def _check(cmd: list[str]) -> None:
    done = _run(cmd)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {done.stderr.strip()[-500:]}")


def install_peers(log: list[str]) -> None:
    """Best effort: install what is missing; every outcome is appended to ``log``."""
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    wanted = {"supervisor": "supervisord", "superlance": "httpok", "circus": "circusd"}
    missing = [pkg for pkg, exe in wanted.items() if not (PEER_VENV / "bin" / exe).exists()]
    if missing:
        try:
            if not (PEER_VENV / "bin" / "python").exists():
                _run([sys.executable, "-m", "venv", str(PEER_VENV)])
            done = _run([str(PEER_VENV / "bin" / "pip"), "install", "-q", *missing])
            log.append(
                f"pip install {' '.join(missing)}: "
                + ("ok" if done.returncode == 0 else f"failed: {done.stderr.strip()[-300:]}")
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.append(f"pip install {' '.join(missing)}: failed: {exc}")
    else:
        log.append(f"supervisor, superlance, circus: already in {PEER_VENV.relative_to(ROOT)}")
    if PM2_JS.exists():
        log.append(f"pm2: already in {PM2_JS.parents[2].relative_to(ROOT)}")
    elif shutil.which("npm") is None:
        log.append("pm2: npm not found, skipped")
    else:
        try:
            done = _run(
                [NPM, "install", "--no-audit", "--no-fund", "--prefix", str(PEERS_DIR), "pm2"],
                timeout=600,
            )
            log.append(
                "npm install pm2: "
                + ("ok" if done.returncode == 0 else f"failed: {done.stderr.strip()[-300:]}")
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.append(f"npm install pm2: failed: {exc}")
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
    threshold: float = 1.0  # erpwatch TIMEOUT_THRESHOLD (the peers restart on the 1st fail)
    backend_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)  # erpwatch only
    heartbeat_port: int | None = None  # circus's watchdog plugin (UDP heartbeats)
    backend: str = "seed"  # seed = bench/seed_backend.py (uvicorn); stdlib = the demo backend

    @property
    def backend_argv(self) -> list[str]:
        if self.backend == "stdlib":  # ~60 ms to start: for long restart series only
            return [PYTHON, "-m", "watchdog.demo.backend", "--port", str(self.port)]
        args = [PYTHON, str(SEED_BACKEND), "--port", str(self.port), *self.backend_args]
        if self.heartbeat_port is not None:
            args += ["--heartbeat-port", str(self.heartbeat_port)]
        return args

    def finder(self) -> BackendFinder:
        module = b"watchdog.demo.backend" if self.backend == "stdlib" else b"seed_backend.py"
        return BackendFinder(self.port, module=module)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


class PeerUnavailable(RuntimeError):
    pass


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ERPWATCH_", "PM2_"))}


def installed_env() -> dict[str, str]:
    """The environment for the installed erpwatch: no ERPWATCH_ settings of ours, and no
    PYTHONPATH, which may point at this checkout and would shadow the installed modules."""
    return {k: v for k, v in _clean_env().items() if k != "PYTHONPATH"}


class Peer:
    """A watchdog with its own temp dir; the base runs it in the foreground."""

    name = "peer"
    label = "peer"
    detects_hangs = True
    stop_wait = 45.0  # seconds a graceful stop may take before SIGKILL by PID

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.scenario: Scenario | None = None
        self.env: dict[str, str] = {}  # the environment it was started with

    # --- describing ---------------------------------------------------------------
    def available(self) -> str | None:
        """None when usable, else why not."""
        return None

    def version(self) -> str:
        return "?"

    @classmethod
    def describe(cls) -> str:
        """How it is configured and why (one Markdown paragraph for RESULTS.md)."""
        return ""

    # --- running ------------------------------------------------------------------
    def start(self, scenario: Scenario, ready_timeout: float = 30.0) -> None:
        why = self.available()
        if why is not None:
            raise PeerUnavailable(why)
        self.scenario = scenario
        self.tmp = Path(tempfile.mkdtemp(prefix=f"erpwatch-bench-{self.name}-"))
        try:
            self._launch(scenario, self.tmp)
            finder = scenario.finder()
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline:
                if not self._alive():
                    raise RuntimeError(f"{self.name} exited at start: {self.output_tail()}")
                if finder.current() and health_ok(scenario.port, timeout=0.5):
                    return
                time.sleep(0.02)
            raise RuntimeError(f"{self.name}: backend not healthy within {ready_timeout}s")
        except BaseException:
            # No half-started tool left behind: stop it, its backend, and its temp dir.
            try:
                self.stop()
            finally:
                kill_and_wait(tagged_processes(scenario.tag))
                self.cleanup()
            raise

    def _launch(self, scenario: Scenario, tmp: Path) -> None:
        argv, env = self._prepare(scenario, tmp)
        self.env = env
        self.proc = subprocess.Popen(
            argv,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=(tmp / "watchdog.out").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
                self.proc.wait(timeout=self.stop_wait)
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

    @classmethod
    def describe(cls) -> str:
        return (
            "**erpwatch** `erpwatch run`, installed as users install it (`pip install .` into "
            "a venv of its own, `bench/.peers/erpwatch`: byte-compiled, no dev extras): "
            "CHECK_INTERVAL 1 s, PROBE_TIMEOUT 1 s, "
            "TIMEOUT_THRESHOLD 1 s (restart on the first failed probe, like the peers), "
            "RESTART_BACKOFF 0 and MAX_RESTARTS 100000 (no backoff, no limit, so every crash "
            "of a series is timed the same way), status server on; everything else at its "
            "defaults, among them HANG_STOP_TIMEOUT 3 s (SIGTERM → SIGKILL grace when the "
            "target is stopped because it hung) and STARTUP_GRACE 30 s (which ends at the "
            "first answer)."
        )

    def _prepare(self, scenario: Scenario, tmp: Path) -> tuple[list[str], dict[str, str]]:
        installed_erpwatch()
        env = installed_env()
        env.update(
            {
                TAG_VAR: scenario.tag,
                "ERPWATCH_COMMAND": shlex.join(scenario.backend_argv),
                "ERPWATCH_CHECK_INTERVAL": str(scenario.interval),
                "ERPWATCH_PROBE_TIMEOUT": str(scenario.timeout),
                "ERPWATCH_TIMEOUT_THRESHOLD": str(scenario.threshold),
                # No backoff and no limit: each crash of a series is timed alike.
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
        return f"supervisor {out}, superlance {_pip_version('superlance')}"

    @classmethod
    def describe(cls) -> str:
        return (
            "**supervisord** `supervisord -n`, `[program:backend] autorestart=true`, "
            "`stopasgroup=true killasgroup=true` (its docs' advice for programs that have "
            "children), defaults otherwise (startsecs 1, stopwaitsecs 10 s = SIGTERM → SIGKILL "
            "grace). Hang detection: superlance's `httpok -p backend -t 1 URL` (its docs' "
            "usage) as an event listener on `TICK_5`, the shortest tick supervisord has, so "
            "it checks every 5 s, not 1 s; httpok restarts through supervisord (SIGTERM, "
            "stopwaitsecs, SIGKILL)."
        )

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
            "stopasgroup=true",
            "killasgroup=true",
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
        return [str(PEER_VENV / "bin" / "supervisord"), "-n", "-c", str(conf)], _clean_env()

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
    """monit 5 in the foreground (``-I``), ``set daemon 1``, a pidfile-checked process whose
    start and stop programs have ``with timeout`` (the documented way to say how long a
    start may take; without it monit waits up to 30 s)."""

    name = "monit"
    label = "monit"
    program_timeout: int | None = 2  # start program `with timeout N seconds` (stop: N + 3)
    escalate = True  # stop program: SIGTERM, up to 3 s, SIGKILL (else SIGTERM only)
    services_stop_wait = 40.0  # seconds `monit stop all` may take to end the backend

    def available(self) -> str | None:
        return None if Path(MONIT).exists() else "monit is not installed"

    def version(self) -> str:
        first = _run([MONIT, "-V"]).stdout.splitlines()
        return first[0].replace("This is Monit version ", "monit ") if first else "?"

    @classmethod
    def describe(cls) -> str:
        return (
            "**monit** `monit -I`, `set daemon 1` (a 1 s cycle), `check process backend with "
            'pidfile`, `if failed host 127.0.0.1 port P protocol http request "/health" '
            "with timeout 1 seconds then restart`. The start program is a shell that puts "
            "the backend in the background and writes the pidfile (monit waits for a start "
            "program to return) and has `with timeout 2 seconds`, as its manual shows "
            '("start program = ... with timeout 60 seconds"), sized to the backend (~0.5 s '
            "to start) and as in the issue's earlier measurement; this matters because monit's "
            "HTTP test on a backend that accepts but never answers fails only after the start "
            "program's timeout (see the notes). monit has no SIGTERM → SIGKILL escalation of "
            "its own (every other tool here has one), so the stop program does it: `kill`, "
            "wait up to 3 s, `kill -9` (`with timeout 5 seconds`). **monit (default "
            "timeouts)** is the same without `with timeout`: monit then waits up to 30 s for "
            "a start and for a stop, and sees a hang only after ~30 s. "
            "**monit (stop program = SIGTERM only)** has the manual's example stop program, "
            "`kill` alone: a hung uvicorn ignores it. "
            "Backgrounded processes are re-parented to init; PID 1 in this VM reaps only about "
            "once a second, so monit runs under `bench/reaper.py`, a child subreaper that "
            "reaps at once as systemd or tini would."
        )

    def _prepare(self, scenario: Scenario, tmp: Path) -> tuple[list[str], dict[str, str]]:
        pidfile = tmp / "backend.pid"
        # monit runs programs without a shell and with a clean environment, and waits for
        # the start program to return: the usual way is a shell that puts the backend in
        # the background and writes the pidfile.
        start = (
            f"export {TAG_VAR}={scenario.tag}; "
            f"{shlex.join(scenario.backend_argv)} >> {tmp}/backend.log 2>&1 & "
            f"echo $! > {pidfile}"
        )
        if self.escalate:
            # monit has no SIGTERM -> SIGKILL escalation of its own: the stop program does it.
            stop = (
                f"pid=$(cat {pidfile}); kill $pid; i=0; "
                f"while kill -0 $pid 2>/dev/null && [ $i -lt {STOP_GRACE_TENTHS} ]; "
                "do sleep 0.1; i=$((i+1)); done; kill -9 $pid 2>/dev/null; true"
            )
        else:
            stop = f"kill $(cat {pidfile})"  # the manual's example: SIGTERM only
        start_timeout = stop_timeout = ""
        if self.program_timeout is not None:
            start_timeout = f" with timeout {self.program_timeout} seconds"
            stop_timeout = f" with timeout {self.program_timeout + 3} seconds"  # > the 3 s grace
        lines = [
            "set daemon 1",
            f"set logfile {tmp}/monit.log",
            f"set pidfile {tmp}/monit.pid",
            f"set idfile {tmp}/monit.id",
            f"set statefile {tmp}/monit.state",
            f"set httpd unixsocket {tmp}/monit.sock",
            "  allow localhost",
            f"check process backend with pidfile {pidfile}",
            f"  start program = \"/bin/sh -c '{start}'\"{start_timeout}",
            f"  stop program = \"/bin/sh -c '{stop}'\"{stop_timeout}",
        ]
        if scenario.http_check:
            lines.append(
                f"  if failed host 127.0.0.1 port {scenario.port} protocol http "
                f'request "/health" with timeout {scenario.timeout:g} seconds then restart'
            )
        rc = tmp / "monitrc"
        rc.write_text("\n".join(lines) + "\n")
        rc.chmod(0o600)
        # Under a subreaper: see bench/reaper.py (PID 1 here reaps orphans only slowly).
        return [PYTHON, str(BENCH_DIR / "reaper.py"), MONIT, "-I", "-c", str(rc)], _clean_env()

    def own_pids(self) -> list[int]:
        if self.proc is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return [c.pid for c in psutil.Process(self.proc.pid).children() if c.name() == "monit"]
        return []

    def _graceful_stop(self) -> None:
        # monit does not stop its services when it quits: stop them first, as a user would.
        assert self.proc is not None and self.tmp is not None and self.scenario is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            _run([MONIT, "-c", str(self.tmp / "monitrc"), "stop", "all"], timeout=15)
        finder = self.scenario.finder()
        deadline = time.monotonic() + self.services_stop_wait
        while finder.current() and time.monotonic() < deadline:
            time.sleep(0.05)
        super()._graceful_stop()


class MonitDefault(Monit):
    """The same monit without ``with timeout``: 30 s start and stop timeouts."""

    name = "monit-default"
    label = "monit (default timeouts)"
    program_timeout = None

    @classmethod
    def describe(cls) -> str:
        return ""


class MonitTermOnly(Monit):
    """monit whose stop program only sends SIGTERM (the manual's example)."""

    name = "monit-term-only"
    label = "monit (stop program = SIGTERM only)"
    escalate = False
    services_stop_wait = 5.0  # a hung backend never stops: the bench kills it by PID

    @classmethod
    def describe(cls) -> str:
        return ""


class Pm2(Peer):
    """PM2 (npm) with its God daemon in a temp PM2_HOME, an ecosystem file."""

    name = "pm2"
    label = "PM2"
    detects_hangs = False
    daemon_pid: int | None = None

    def available(self) -> str | None:
        if not PM2_JS.exists():
            return f"pm2 not installed in {PEERS_DIR}"
        if not Path(NODE).exists():
            return "node not found"
        return None

    def version(self) -> str:
        try:
            data = json.loads((PM2_JS.parents[1] / "package.json").read_text())
        except (OSError, ValueError):
            return "?"
        node = _run([NODE, "--version"]).stdout.strip()
        return f"pm2 {data.get('version', '?')} (node {node})"

    @classmethod
    def describe(cls) -> str:
        return (
            "**PM2** `pm2 start ecosystem.config.js` (its God daemon, PM2_HOME in the temp dir, "
            "stopped with `pm2 kill`, then by PID), one app in fork mode with `interpreter` = "
            "the venv's python, `autorestart: true`, `exp_backoff_restart_delay: 100` (its "
            "docs' advice against restarting a crashing app in a tight loop: 100 ms, then "
            "x1.5 per restart up to 15 s, reset after 30 s up) and `max_memory_restart: "
            "'300M'`; defaults otherwise (kill_timeout 1.6 s, treekill on). PM2 has no "
            "HTTP health check (that is PM2 Plus, a paid service), so it cannot see a hang."
        )

    def _pm2_env(self, tmp: Path) -> dict[str, str]:
        env = _clean_env()
        env["PM2_HOME"] = str(tmp / "pm2home")
        env["PM2_DISABLE_VERSION_CHECK"] = "true"
        return env

    def _launch(self, scenario: Scenario, tmp: Path) -> None:
        argv = scenario.backend_argv
        app = {
            "name": "backend",
            "script": argv[1],
            "args": argv[2:],
            "interpreter": argv[0],
            "exec_mode": "fork",
            "autorestart": True,
            "exp_backoff_restart_delay": 100,
            "max_memory_restart": "300M",
            "env": {TAG_VAR: scenario.tag},
            "out_file": str(tmp / "backend.out.log"),
            "error_file": str(tmp / "backend.err.log"),
        }
        eco = tmp / "ecosystem.config.js"
        eco.write_text("module.exports = " + json.dumps({"apps": [app]}, indent=2) + ";\n")
        with (tmp / "watchdog.out").open("ab") as out:
            done = subprocess.run(
                [NODE, str(PM2_JS), "start", str(eco)],
                cwd=tmp,
                env=self._pm2_env(tmp),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
        self.daemon_pid = self._read_daemon_pid(tmp)
        if done.returncode != 0 or self.daemon_pid is None:
            self._kill_daemon()
            raise RuntimeError(f"pm2 start failed: {self.output_tail()}")

    @staticmethod
    def _read_daemon_pid(tmp: Path) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((tmp / "pm2home" / "pm2.pid").read_text().strip())
        return None

    def _alive(self) -> bool:
        return self.daemon_pid is not None and psutil.pid_exists(self.daemon_pid)

    def own_pids(self) -> list[int]:
        return [] if self.daemon_pid is None or not self._alive() else [self.daemon_pid]

    def stop(self) -> None:
        if self.daemon_pid is None or self.tmp is None:
            return
        try:
            with (
                contextlib.suppress(subprocess.TimeoutExpired, OSError),
                (self.tmp / "watchdog.out").open("ab") as out,
            ):
                subprocess.run(
                    [NODE, str(PM2_JS), "kill"],
                    cwd=self.tmp,
                    env=self._pm2_env(self.tmp),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=30,
                    check=False,
                )
            self._kill_daemon()
        finally:
            self.daemon_pid = None

    def _kill_daemon(self) -> None:
        """The God daemon by its PID (it is not our child: `pm2 start` detached it)."""
        pid = self.daemon_pid
        if pid is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            if "node" in proc.name() or "PM2" in " ".join(proc.cmdline()):
                proc.terminate()
                _gone, alive = psutil.wait_procs([proc], timeout=5)
                if alive:
                    kill_and_wait([pid])


class Circus(Peer):
    """circusd (PyPI) with the flapping plugin; with an HTTP check, the watchdog plugin."""

    name = "circus"
    label = "circus"

    def available(self) -> str | None:
        if not (PEER_VENV / "bin" / "circusd").exists():
            return f"circus not installed in {PEER_VENV}"
        return None

    def version(self) -> str:
        return f"circus {_pip_version('circus')} (tornado {_pip_version('tornado')})"

    @classmethod
    def describe(cls) -> str:
        return (
            "**circus** `circusd circus.ini` in the foreground, `check_delay = 1` (its poll "
            "of the processes, default 5 s, set to the scenario's 1 s as monit's cycle is), "
            "one watcher (`numprocesses = 1`, respawn on, graceful_timeout 30 s default = "
            "SIGTERM → SIGKILL grace), its `flapping` plugin with its defaults (2 restarts "
            "within 1 s → stop and retry in 7 s, 5 times). Hang detection: circus's "
            "`http_observer` plugin would be the one, but circus 0.19 cannot run it on "
            "tornado ≥ 6 (it passes `io_loop=` to `AsyncHTTPClient` and a callback to "
            "`fetch`, both removed in tornado 6.0; `TypeError` at start) and tornado 5 does "
            "not import on Python ≥ 3.10; so circus detects hangs with its `watchdog` plugin "
            "(`loop_rate = 1`, `max_count = 3` default: kill after 3 s without a heartbeat, "
            "`watchers_regex = ^backend$`: its default `.*` also watches, and kills, the "
            "plugin processes, which send none), "
            "for which the backend sends a UDP heartbeat `pid;timestamp` every second from "
            "its event loop (`--heartbeat-port`, off in the other tools' runs), as that "
            "plugin's docs require."
        )

    def _prepare(self, scenario: Scenario, tmp: Path) -> tuple[list[str], dict[str, str]]:
        lines = [
            "[circus]",
            "check_delay = 1",
            f"endpoint = ipc://{tmp}/endpoint.sock",
            f"pubsub_endpoint = ipc://{tmp}/pubsub.sock",
            "statsd = False",
            "[watcher:backend]",
            f"cmd = {shlex.join(scenario.backend_argv)}",
            "numprocesses = 1",
            "copy_env = True",
            "stdout_stream.class = FileStream",
            f"stdout_stream.filename = {tmp}/backend.out.log",
            "stderr_stream.class = FileStream",
            f"stderr_stream.filename = {tmp}/backend.err.log",
            "[env:backend]",
            f"{TAG_VAR} = {scenario.tag}",
            "[plugin:flapping]",
            "use = circus.plugins.flapping.Flapping",
        ]
        if scenario.http_check and scenario.heartbeat_port is not None:
            lines += [
                "[plugin:watchdog]",
                "use = circus.plugins.watchdog.WatchDog",
                # Its default (".*") also watches the plugins, which send no heartbeat.
                "watchers_regex = ^backend$",
                f"loop_rate = {scenario.interval:g}",
                "ip = 127.0.0.1",
                f"port = {scenario.heartbeat_port}",
            ]
        ini = tmp / "circus.ini"
        ini.write_text("\n".join(lines) + "\n")
        argv = [str(PEER_VENV / "bin" / "circusd"), "--log-output", str(tmp / "circusd.log")]
        return [*argv, str(ini)], _clean_env()

    def start(self, scenario: Scenario, ready_timeout: float = 30.0) -> None:
        if scenario.http_check and scenario.heartbeat_port is None:
            scenario.heartbeat_port = free_udp_port()
        super().start(scenario, ready_timeout)

    def own_pids(self) -> list[int]:
        """circusd and its plugin processes (not the backend)."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.proc.pid).children():
                with contextlib.suppress(psutil.NoSuchProcess):
                    if "circus" in " ".join(child.cmdline()):
                        pids.append(child.pid)
        return pids


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pip_version(package: str) -> str:
    out = _run([str(PEER_VENV / "bin" / "pip"), "show", package]).stdout
    return next((ln.split()[-1] for ln in out.splitlines() if ln.startswith("Version:")), "?")


PEERS: dict[str, type[Peer]] = {
    "erpwatch": Erpwatch,
    "supervisord": Supervisord,
    "monit": Monit,
    "monit-default": MonitDefault,
    "monit-term-only": MonitTermOnly,
    "pm2": Pm2,
    "circus": Circus,
}
