from __future__ import annotations

import argparse
import os
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.helpers import free_port, wait_until
from watchdog import preflight
from watchdog.config import load_settings
from watchdog.settings import Settings
from watchdog.store import EventStore

# A stray server: listens on 127.0.0.1:<argv[1]>, says so, then waits to be ended.
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "print('listening', flush=True)\n"
    "time.sleep(120)\n"
)


class Stray:
    def __init__(self, port: int) -> None:
        self.argv = [sys.executable, "-c", LISTENER, str(port)]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "listening"

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def stray(port: int) -> Iterator[Stray]:
    process = Stray(port)
    yield process
    process.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("ERPWATCH_LOG_PATH", str(tmp_path / "logs"))
    monkeypatch.setenv("ERPWATCH_WORKDIR", str(tmp_path))
    return monkeypatch


def _check(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="erpwatch")
    preflight.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["check", *argv])


def _lines(text: str, mark: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(mark)]


# --- fast checks ----------------------------------------------------------------------------


def test_fast_checks_all_pass(tmp_path: Path, port: int) -> None:
    settings = load_settings(
        command=f"{sys.executable} -m http.server {port}",
        health_url=f"http://127.0.0.1:{port}/health",
        workdir=tmp_path,
        log_path=tmp_path / "logs" / "new",
        status_port=free_port(),
    )
    results = preflight.fast_checks(settings)
    assert preflight.passed(results), preflight.format_results(results)
    text = preflight.format_results(results)
    assert {line.split(": ")[0] for line in text.splitlines()} >= {
        "✔ configuration",
        "✔ command (backend)",
        "✔ working directory (backend)",
        "✔ log directory",
        "✔ event database",
        f"✔ health port 127.0.0.1:{port} (backend)",
        f"✔ status server 127.0.0.1:{settings.status_port}",
    }
    assert "(will be created)" in text


def test_no_target_is_a_failure(tmp_path: Path) -> None:
    results = preflight.fast_checks(load_settings(log_path=tmp_path))
    assert not preflight.passed(results)
    assert "ERPWATCH_COMMAND" in results[0].hint


def test_missing_and_non_executable_commands(tmp_path: Path) -> None:
    script = tmp_path / "start.sh"
    script.write_text("#!/bin/sh\n")
    settings = load_settings(
        command="erpwatch-no-such-program --serve",
        targets={"worker": {"command": "./start.sh", "workdir": str(tmp_path)}},
        log_path=tmp_path,
    )
    text = preflight.format_results(preflight.fast_checks(settings))
    assert "✘ command (backend): 'erpwatch-no-such-program' not found on PATH" in text
    assert f"✘ command (worker): {script}: not executable" in text
    assert f"hint: chmod +x {script}" in text
    script.chmod(0o755)
    text = preflight.format_results(preflight.fast_checks(settings))
    assert f"✔ command (worker): {script}" in text


def test_missing_workdir_and_unwritable_log_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = load_settings(
        command=sys.executable, workdir=tmp_path / "gone", log_path=blocker / "logs"
    )
    text = preflight.format_results(preflight.fast_checks(settings))
    assert f"✘ working directory (backend): {tmp_path / 'gone'} does not exist" in text
    assert f"✘ log directory: {blocker} is not a directory" in text
    assert f"✘ event database: {blocker} is not a directory" in text


# --- ports held by a stray process ------------------------------------------------------------


def test_held_port_names_the_holder(
    stray: Stray, port: int, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ERPWATCH_COMMAND", f"{sys.executable} -c 'print(1)' {port}")
    env.setenv("ERPWATCH_HEALTH_URL", f"http://localhost:{port}/health")
    assert preflight.run_check(_check()) == preflight.EXIT_FAILED
    out = capsys.readouterr().out
    [failed] = _lines(out, "✘")
    assert f"health port localhost:{port} (backend): in use by pid {stray.proc.pid}" in failed
    assert "python" in failed and LISTENER.splitlines()[0] in failed
    assert "hint: stop that process or move the target to another port" in out


def test_kill_stale_leaves_a_different_command_alone(
    stray: Stray, port: int, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ERPWATCH_COMMAND", f"{sys.executable} -c 'print(1)' {port}")
    env.setenv("ERPWATCH_HEALTH_URL", f"http://127.0.0.1:{port}/")
    assert preflight.run_check(_check("--kill-stale", "--grace", "1")) == preflight.EXIT_FAILED
    out = capsys.readouterr().out
    assert f"✘ stale process {stray.proc.pid}: not ended: its command differs" in out
    assert stray.proc.poll() is None
    assert psutil.pid_exists(stray.proc.pid)


def test_kill_stale_ends_a_leftover_of_the_same_command(
    stray: Stray, port: int, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ERPWATCH_COMMAND", stray.command)
    env.setenv("ERPWATCH_HEALTH_URL", f"http://127.0.0.1:{port}/health")
    assert preflight.run_check(_check()) == preflight.EXIT_FAILED
    assert "--kill-stale" in capsys.readouterr().out
    assert stray.proc.poll() is None

    assert preflight.run_check(_check("--kill-stale", "--grace", "5")) == 0
    out = capsys.readouterr().out
    assert f"✔ stale process {stray.proc.pid}: ended with SIGTERM" in out
    lines = out.splitlines()
    held = lines.index(f"✔ stale process {stray.proc.pid}: ended with SIGTERM") - 1
    assert lines[held].startswith(f"✘ health port 127.0.0.1:{port} (backend): in use by pid")
    assert lines[held + 2] == f"✔ health port 127.0.0.1:{port} (backend): free"
    assert "hint" not in out
    assert stray.proc.poll() is not None  # psutil reaped it: gone, not a zombie


def test_kill_stale_escalates_to_sigkill(port: int) -> None:
    stubborn = (
        "import signal, socket, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "print('listening', flush=True)\n"
        "time.sleep(120)\n"
    )
    argv = [sys.executable, "-c", stubborn, str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        holder = preflight.find_port_holder("127.0.0.1", port)
        assert holder is not None and holder.pid == proc.pid
        result = preflight.end_stale(holder, argv, grace=0.2)
        assert result.ok and "SIGKILL" in result.detail
        assert proc.poll() is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_same_command_resolves_the_program_via_path(tmp_path: Path) -> None:
    python = Path(sys.executable)
    holder = preflight.PortHolder(1, "python", (str(python.resolve()), "-m", "app"))
    assert preflight.same_command(holder, [str(python), "-m", "app"])
    assert not preflight.same_command(holder, [str(python), "-m", "other"])
    assert not preflight.same_command(holder, [str(python), "-m"])


# --- configuration errors -------------------------------------------------------------------


def test_config_error_is_shown_as_a_failed_check(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ERPWATCH_CHECK_INTERVAL", "soon")
    assert preflight.run_check(_check()) == preflight.EXIT_CONFIG
    out = capsys.readouterr().out
    assert out.startswith("✘ configuration: ERPWATCH_CHECK_INTERVAL: expected a number")


# --- SMTP -------------------------------------------------------------------------------------


class _Sink:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def _authenticator(
    server: object, session: object, envelope: object, mechanism: str, auth_data: object
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"erp"
        and auth_data.password == b"s3cret-pass"
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_port() -> Iterator[int]:
    port = free_port()
    controller = Controller(
        _Sink(),
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    controller.start()
    yield port
    controller.stop()


def _smtp_settings(port: int, password: str, tmp_path: Path) -> Settings:
    return load_settings(
        log_path=tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        smtp_username="erp",
        smtp_password=password,
        smtp_timeout=5,
    )


async def test_smtp_login_accepted(smtp_port: int, tmp_path: Path) -> None:
    result = await preflight.smtp_check(_smtp_settings(smtp_port, "s3cret-pass", tmp_path))
    assert result.ok, result
    assert result.detail == "logged in as 'erp'"


async def test_smtp_login_refused_never_shows_the_password(smtp_port: int, tmp_path: Path) -> None:
    result = await preflight.smtp_check(_smtp_settings(smtp_port, "wrong-pass", tmp_path))
    assert not result.ok
    text = preflight.format_results([result])
    assert "login refused for 'erp'" in text and "ERPWATCH_SMTP_PASSWORD" in text
    assert "wrong-pass" not in text


async def test_smtp_unreachable(tmp_path: Path) -> None:
    result = await preflight.smtp_check(_smtp_settings(free_port(), "x", tmp_path))
    assert not result.ok and result.detail.startswith("connect failed")


def test_check_command_includes_smtp_when_configured(
    smtp_port: int, env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ERPWATCH_COMMAND", sys.executable)
    for key, value in {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_SECURITY": "none",
        "SMTP_USERNAME": "erp",
        "SMTP_PASSWORD": "s3cret-pass",
    }.items():
        env.setenv(f"ERPWATCH_{key}", value)
    assert preflight.run_check(_check()) == 0
    out = capsys.readouterr().out
    assert f"✔ smtp 127.0.0.1:{smtp_port}: logged in as 'erp'" in out
    assert "s3cret-pass" not in out


def test_erpwatch_check_command_end_to_end(stray: Stray, port: int, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ERPWATCH_COMMAND": stray.command,
        "ERPWATCH_HEALTH_URL": f"http://127.0.0.1:{port}/health",
        "ERPWATCH_LOG_PATH": str(tmp_path / "logs"),
        "ERPWATCH_STATUS_PORT": "0",
    }
    check = [sys.executable, "-m", "watchdog.cli", "check"]
    held = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert held.returncode == 1
    assert f"in use by pid {stray.proc.pid}" in held.stdout
    freed = subprocess.run(
        [*check, "--kill-stale"], env=env, capture_output=True, text=True, timeout=30
    )
    assert freed.returncode == 0, freed.stdout
    stray.proc.wait(5)
    bad = subprocess.run(
        check, env={**env, "ERPWATCH_MAX_RESTARTS": "-1"}, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "✘ configuration: ERPWATCH_MAX_RESTARTS" in bad.stdout


# --- everything `run` refuses on, `check` reports too ---------------------------------------


def erpwatch(
    command: str, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``erpwatch <command>`` as a real process, with only the ERPWATCH_* variables given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    defaults = {
        "ERPWATCH_COMMAND": f"{sys.executable} -c 'import time; time.sleep(60)'",
        "ERPWATCH_LOG_PATH": str(tmp_path / "logs"),
        "ERPWATCH_STATUS_PORT": "0",
    }
    return subprocess.run(
        [sys.executable, "-m", "watchdog.cli", command, *args],
        env={**base, **defaults, **{f"ERPWATCH_{k}": v for k, v in env.items()}},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _refused(result: subprocess.CompletedProcess[str], code: int, *texts: str) -> str:
    """The process exited with ``code``, said each text, and printed no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    for text in texts:
        assert text in output, output
    return output


def _junk(tmp_path: Path) -> Path:
    path = tmp_path / "junk.db"
    path.write_text("these are not the droids\n" * 100)
    return path


def _foreign(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    return path


def _newer(tmp_path: Path) -> Path:
    path = tmp_path / "newer.db"
    EventStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp, "is a directory, not a database file"),
        (_junk, "is not an SQLite database (it holds something else)"),
        (_foreign, "is an SQLite database of something else (tables: invoices)"),
        (_newer, "has schema version 99, newer than this erpwatch's"),
    ],
)
def test_unusable_database_fails_the_check(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    path = make(tmp_path)
    settings = load_settings(command=sys.executable, log_path=tmp_path / "logs", db_path=path)
    text = preflight.format_results(preflight.fast_checks(settings))
    assert f"✘ event database: {path} {reason}" in text
    assert "ERPWATCH_DB_PATH" in text


def test_usable_databases_pass(tmp_path: Path) -> None:
    existing = tmp_path / "events.db"
    EventStore(existing).close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path in (existing, empty, tmp_path / "new" / "events.db"):
        settings = load_settings(command=sys.executable, log_path=tmp_path, db_path=path)
        [result] = [r for r in preflight.fast_checks(settings) if r.name == "event database"]
        assert result.ok, result


@pytest.mark.parametrize("kind", ["directory", "junk"])
def test_run_and_check_refuse_an_unusable_database_in_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path if kind == "directory" else _junk(tmp_path)
    run = erpwatch("run", tmp_path, DB_PATH=str(path))
    err = _refused(run, preflight.EXIT_FAILED, "erpwatch: not starting")
    [failed] = [line for line in err.splitlines() if line.startswith("✘")]
    assert failed.startswith(f"✘ event database: {path} ")
    assert not (tmp_path / "logs").exists()  # refused before anything started
    check = erpwatch("check", tmp_path, DB_PATH=str(path))
    _refused(check, preflight.EXIT_FAILED, f"✘ event database: {path} ")


def test_status_port_held_names_the_holder_in_check_and_run(
    stray: Stray, port: int, tmp_path: Path
) -> None:
    expected = f"port {port} is in use by pid {stray.proc.pid} (python"
    check = erpwatch("check", tmp_path, STATUS_PORT=str(port))
    _refused(check, preflight.EXIT_FAILED, f"✘ status server 127.0.0.1:{port}: {expected}")
    run = erpwatch("run", tmp_path, STATUS_PORT=str(port))
    _refused(run, preflight.EXIT_FAILED, f"✘ status server 127.0.0.1:{port}: {expected}")
    assert not (tmp_path / "logs").exists()  # refused before anything started
    # A wildcard bind collides with the 127.0.0.1 listener: the holder is found there too.
    wildcard = erpwatch(
        "check", tmp_path, STATUS_PORT=str(port), STATUS_HOST="0.0.0.0", STATUS_TOKEN="t"
    )
    _refused(wildcard, preflight.EXIT_FAILED, f"✘ status server 0.0.0.0:{port}: {expected}")
    assert stray.proc.poll() is None  # never touched


def test_check_refuses_what_run_refuses_a_public_status_host_without_token(
    tmp_path: Path,
) -> None:
    problem = "ERPWATCH_STATUS_HOST='0.0.0.0' is not a loopback address"
    check = erpwatch("check", tmp_path, STATUS_HOST="0.0.0.0")
    _refused(check, preflight.EXIT_FAILED, f"✘ status server 0.0.0.0:0: {problem}")
    run = erpwatch("run", tmp_path, STATUS_HOST="0.0.0.0")
    assert _refused(run, preflight.EXIT_CONFIG, problem).strip().count("\n") == 0
    disabled = erpwatch("check", tmp_path, STATUS_HOST="0.0.0.0", STATUS_ENABLED="false")
    assert disabled.returncode == 0, disabled.stdout


def test_check_warns_about_an_unknown_variable_and_still_passes(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ERPWATCH_CHEK_INTERVAL=5\n")
    check = erpwatch("check", tmp_path)
    assert check.returncode == 0, check.stdout
    lines = check.stdout.splitlines()
    assert (
        "⚠ ERPWATCH_CHEK_INTERVAL is not a known variable; did you mean ERPWATCH_CHECK_INTERVAL?"
    ) in lines
    assert lines[0].startswith("✔ configuration")
    # Also next to a configuration error, where a typo may be the cause.
    broken = erpwatch("check", tmp_path, MAX_RESTARTS="-1")
    _refused(broken, preflight.EXIT_CONFIG, "✘ configuration: ERPWATCH_MAX_RESTARTS", "⚠ ")


@pytest.mark.parametrize("grace", ["inf", "nan", "-1", "1e9"])
def test_absurd_grace_is_a_usage_error(tmp_path: Path, grace: str) -> None:
    result = erpwatch("check", tmp_path, "--kill-stale", "--grace", grace)
    _refused(result, 2, "argument --grace")


def test_kill_stale_recognises_a_console_script_and_ends_its_tree(
    tmp_path: Path, port: int
) -> None:
    """`uvicorn …` runs as `/venv/bin/python3 /venv/bin/uvicorn …`: the same command."""
    script = tmp_path / "erp-server"
    script.write_text(
        f"#!{sys.executable}\n"
        "import socket, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "print('listening', child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    script.chmod(0o755)
    proc = subprocess.Popen([str(script), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        word, grandchild = proc.stdout.readline().split()
        assert word == "listening"
        holder = preflight.find_port_holder("127.0.0.1", port)
        assert holder is not None and holder.cmdline[1] == str(script)  # interpreter line
        assert preflight.same_command(holder, [str(script), str(port)])
        assert not preflight.same_command(holder, [str(script), "other"])
        result = preflight.end_stale(holder, [str(script), str(port)], grace=5)
        assert result.ok and "1 descendant" in result.detail
        proc.wait(5)
        wait_until(lambda: not psutil.pid_exists(int(grandchild)) or _zombie(int(grandchild)), 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
