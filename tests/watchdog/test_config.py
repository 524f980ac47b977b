"""Settings: names, defaults, .env, per-target overrides, and errors people can act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_seed_defaults() -> None:
    settings = load_settings()
    assert settings.max_restarts == 5
    assert settings.check_interval == 15
    assert settings.timeout_threshold == 45
    assert settings.log_path == Path("watchdog_logs")
    assert settings.debug is False
    assert settings.stop_timeout == 10
    assert settings.limit_retry == 900
    assert settings.event_db_path == Path("watchdog_logs/erpwatch.db")


def test_env_variables_and_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_COMMAND", "python -m erp --port 8000")
    monkeypatch.setenv("ERPWATCH_HEALTH_URL", "http://127.0.0.1:8000/health")
    monkeypatch.setenv("ERPWATCH_CHECK_INTERVAL", "0.05")
    (target,) = load_settings().targets_resolved()
    assert target.name == "backend"
    assert target.argv == ("python", "-m", "erp", "--port", "8000")
    assert target.check_interval == 0.05


def test_dotenv_is_read_and_foreign_lines_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "ERPWATCH_MAX_RESTARTS=2\nSOMETHING_ELSE=1\nERPWATCH_ALERT_TO=a@x.org, b@x.org\n"
    )
    settings = load_settings()
    assert settings.max_restarts == 2
    assert settings.alert_to == ["a@x.org", "b@x.org"]


def test_env_example_documents_every_setting_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (REPO / ".env.example").read_text()
    documented = {line.split("=")[0].strip("# ") for line in text.splitlines() if "=" in line}
    for field in Settings.model_fields:
        if field == "targets":
            assert "ERPWATCH_TARGETS__" in text
            continue
        assert f"ERPWATCH_{field.upper()}" in documented, field
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(text)
    settings = load_settings()  # the example as-is is a valid .env
    assert settings.check_interval == 15 and settings.targets_resolved() == []


def test_per_target_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_COMMAND", "backend-server")
    monkeypatch.setenv("ERPWATCH_TARGETS__BACKEND__MAX_RESTARTS", "9")
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__COMMAND", "npm run preview")
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__HEALTH_URL", "http://127.0.0.1:5173/")
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__AFTER", "backend")
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__CHECK_INTERVAL", "2.5")
    backend, frontend = load_settings().targets_resolved()
    assert (backend.name, backend.max_restarts, backend.check_interval) == ("backend", 9, 15)
    assert frontend.after == ("backend",)
    assert frontend.check_interval == 2.5 and frontend.max_restarts == 5
    assert frontend.health_url == "http://127.0.0.1:5173/"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ERPWATCH_CHECK_INTERVAL", "abc", "number of seconds"),
        ("ERPWATCH_MAX_RESTARTS", "-1", ">= 0"),
        ("ERPWATCH_HEALTH_URL", "not a url", "http(s) URL"),
        ("ERPWATCH_SMTP_SECURITY", "ssl", "'none', 'starttls' or 'tls'"),
        ("ERPWATCH_DEBUG", "maybe", "true or false"),
        ("ERPWATCH_TARGETS__FRONTEND__CHECK_INTERVAL", "soon", "number of seconds"),
    ],
)
def test_bad_value_names_variable_and_form(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message and expected in message
    assert "\n" not in message


def test_target_without_command_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_TARGETS__WORKER__HEALTH_URL", "http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="ERPWATCH_TARGETS__WORKER__COMMAND"):
        load_settings()


def test_unknown_after_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__COMMAND", "x")
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__AFTER", "nothere")
    with pytest.raises(ConfigError, match="nothere"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ERPWATCH_CHECK_INTERVAL", "abc"),
        ("ERPWATCH_MAX_RESTARTS", "-1"),
        ("ERPWATCH_HEALTH_URL", "nope"),
    ],
)
def test_run_with_bad_value_exits_2_with_one_line_and_starts_nothing(
    tmp_path: Path, variable: str, value: str
) -> None:
    marker = tmp_path / "started"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")},
        "ERPWATCH_COMMAND": f"{sys.executable} -c \"open({str(marker)!r}, 'w')\"",
        "ERPWATCH_LOG_PATH": str(tmp_path / "logs"),
        variable: value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "logs").exists()
