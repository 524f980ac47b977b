"""The daemon's settings come from a child process (`watchdog.config_reader`): the same values
as validating in-process, no pydantic in the daemon, and every fault of the child a clear
`ConfigError` that changes nothing."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from watchdog import config_reader
from watchdog.config import load_settings
from watchdog.config_reader import read_settings
from watchdog.errors import ConfigError
from watchdog.settings import Secret


@pytest.fixture(autouse=True)
def _configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ERPWATCH_COMMAND", "backend --port 8000")
    monkeypatch.setenv("ERPWATCH_HEALTH_URL", "http://127.0.0.1:8000/health")
    monkeypatch.setenv("ERPWATCH_SMTP_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("ERPWATCH_TARGETS__WORKER__COMMAND", "worker")
    monkeypatch.setenv("ERPWATCH_TARGETS__WORKER__AFTER", "backend")
    monkeypatch.setenv("ERPWATCH_ENV__MyVar", "x")


def test_the_child_gives_what_validating_here_gives(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ERPWATCH_MAX_RESTARTS=7\nERPWATCH_ALERT_TO=a@x.org,b@x.org\n")
    answer = read_settings({"debug": True, "log_path": tmp_path / "logs"})
    assert answer.settings == load_settings(debug=True, log_path=tmp_path / "logs")
    settings = answer.settings
    assert settings.max_restarts == 7 and settings.alert_to == ("a@x.org", "b@x.org")
    assert settings.debug is True and settings.log_path == tmp_path / "logs"
    assert settings.smtp_password == Secret("hunter2-secret")
    assert [t.name for t in settings.targets] == ["backend", "worker"]
    assert settings.targets[0].env == (("MyVar", "x"),)
    assert answer.warnings == []


def test_a_watchdog_package_in_the_working_directory_is_not_run(tmp_path: Path) -> None:
    (tmp_path / "watchdog").mkdir()
    (tmp_path / "watchdog" / "__init__.py").write_text("raise SystemExit('not erpwatch')\n")
    assert read_settings().settings.command == "backend --port 8000"


def test_unknown_variables_come_back_as_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_CHECK_INTERVALL", "3")
    (warning,) = read_settings().warnings
    assert "ERPWATCH_CHECK_INTERVALL" in warning and "ERPWATCH_CHECK_INTERVAL" in warning


def test_the_daemon_side_never_imports_pydantic(tmp_path: Path) -> None:
    code = (
        "import sys, watchdog.app, watchdog.api\n"
        "from watchdog.config_reader import read_settings\n"
        "answer = read_settings()\n"
        "assert answer.settings.targets, answer\n"
        "print(sorted(m for m in sys.modules if 'pydantic' in m))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_wrong_value_names_the_variable_and_never_shows_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERPWATCH_CHECK_INTERVAL", "soon")
    monkeypatch.setenv("ERPWATCH_WEBHOOK_URLS", "ftp://hooks.example.com/T0KEN-path-secret")
    with pytest.raises(ConfigError) as caught:
        read_settings()
    message = str(caught.value)
    assert "ERPWATCH_CHECK_INTERVAL: expected a number of seconds" in message
    assert "ERPWATCH_WEBHOOK_URLS" in message
    assert "T0KEN" not in message and "hunter2" not in message


def _fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_a_child_that_cannot_start_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(ConfigError, match="cannot start the process that validates"):
        read_settings()


def test_a_child_that_crashes_is_a_config_error_with_its_last_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _fake_python(
        tmp_path, "echo 'Traceback ...' >&2\necho 'MemoryError: boom' >&2\nexit 1\n"
    )
    monkeypatch.setattr(sys, "executable", fake)
    with pytest.raises(ConfigError, match=r"failed \(exit 1\): MemoryError: boom"):
        read_settings()


def test_a_child_that_hangs_is_ended_and_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    fake = _fake_python(tmp_path, f"echo $$ > {pid_file}\nexec sleep 600\n")
    monkeypatch.setattr(sys, "executable", fake)
    monkeypatch.setattr(config_reader, "READ_TIMEOUT_S", 1.0)
    with pytest.raises(ConfigError, match="took over 1 s"):
        read_settings()
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid)


def test_an_answer_that_is_not_settings_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _fake_python(tmp_path, "cat > /dev/null\necho 'not a pickle'\n")
    monkeypatch.setattr(sys, "executable", fake)
    with pytest.raises(ConfigError, match="does not fit this erpwatch"):
        read_settings()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_an_answer_naming_other_classes_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps((_Exploit(marker), []))
    with pytest.raises(ConfigError, match=r"unexpected posix\.system"):
        config_reader._answer(data)
    assert not marker.exists()


def test_paths_pickled_by_python_3_13_are_read() -> None:
    settings = load_settings(log_path="/var/log/erpwatch-test")
    data = pickle.dumps((settings, []), protocol=pickle.HIGHEST_PROTOCOL)
    name = b"\x8c\x07pathlib\x94"  # 3.13 pickles PosixPath from pathlib._local
    assert name in data
    newer = data.replace(name, b"\x8c\x0epathlib._local\x94")
    assert config_reader._answer(newer).settings.log_path == Path("/var/log/erpwatch-test")


def test_settings_made_by_other_code_are_refused() -> None:
    settings = load_settings()
    object.__setattr__(settings, "a_new_setting", 1)  # what an upgraded erpwatch would send
    with pytest.raises(ConfigError, match="upgraded while it runs"):
        config_reader._answer(pickle.dumps((settings, [])))
    target = dataclasses.replace(load_settings(), targets=())
    assert config_reader._answer(pickle.dumps((target, ["w"]))).warnings == ["w"]


async def test_a_reload_whose_child_cannot_start_changes_nothing_and_a_later_one_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """EMFILE or ENOMEM at a reload (here: no interpreter to start) is a rejected reload:
    the target keeps running under the old settings, and the next reload applies."""
    from tests.helpers import await_until
    from watchdog.app import Watchdog

    for name in (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "ERPWATCH_TARGETS__WORKER__COMMAND",
        "ERPWATCH_TARGETS__WORKER__AFTER",
    ):
        monkeypatch.delenv(name, raising=False)
    sleeper = f"{sys.executable} -c 'import time; time.sleep(120)'"
    monkeypatch.setenv("ERPWATCH_COMMAND", sleeper)
    monkeypatch.setenv("ERPWATCH_HEALTH_URL", "")
    monkeypatch.setenv("ERPWATCH_STATUS_ENABLED", "false")
    monkeypatch.setenv("ERPWATCH_LOG_PATH", str(tmp_path / "logs"))
    settings = read_settings().settings
    watchdog = Watchdog(settings, settings.targets_resolved())
    await watchdog.start()
    try:
        (status,) = await await_until(
            lambda: [s for s in watchdog.supervisor.statuses() if s.pid is not None] or None,
            what="the target running",
        )
        monkeypatch.setenv("ERPWATCH_COMMAND", sleeper + " # changed")
        with monkeypatch.context() as patch:
            patch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
            answer = await watchdog.reload(actor="test")
        assert answer["ok"] is False and "cannot start the process" in answer["error"]
        (same,) = watchdog.supervisor.statuses()
        assert same.pid == status.pid and watchdog.settings is settings
        answer = await watchdog.reload(actor="test")
        assert answer["ok"] is True, answer
        assert watchdog.settings.command == sleeper + " # changed"
    finally:
        await watchdog.stop()


def test_emfile_when_starting_the_child_is_a_config_error() -> None:
    """A real EMFILE: the descriptors for the child's pipes cannot be made."""
    code = (
        "import os, resource, subprocess, pickle\n"
        "from watchdog.config_reader import read_settings\n"
        "from watchdog.errors import ConfigError\n"
        "used = len(os.listdir('/proc/self/fd'))\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (used + 1, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1]))\n"
        "try:\n"
        "    read_settings()\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cannot start the process that validates the configuration:")
    assert "Too many open files" in done.stdout
