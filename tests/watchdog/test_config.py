"""Settings: names, defaults, .env, per-target overrides, and errors people can act on."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.config import ConfigError, load_settings, unknown_variables
from watchdog.settings import Settings

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
    assert settings.alert_to == ("a@x.org", "b@x.org")


def test_env_example_documents_every_setting_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (REPO / ".env.example").read_text()
    documented = {line.split("=")[0].strip("# ") for line in text.splitlines() if "=" in line}
    for field in (item.name for item in dataclasses.fields(Settings)):
        if field in ("targets", "env"):  # only the nested forms: ERPWATCH_ENV__<VAR>
            assert f"ERPWATCH_{field.upper()}__" in text
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


@pytest.mark.parametrize("token", ["pässwort-1234", "two words here", "tab\there1234"])
def test_a_status_token_no_header_can_carry_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("ERPWATCH_STATUS_TOKEN", token)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("ERPWATCH_STATUS_TOKEN: expected a valid value: visible ASCII")
    assert token not in message and token[:4] not in message


def test_a_status_token_of_visible_ascii_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "Az09-._~+/=!#$%&*^|"
    monkeypatch.setenv("ERPWATCH_STATUS_TOKEN", token)
    settings = load_settings()
    assert settings.status_token is not None
    assert settings.status_token.get_secret_value() == token


@pytest.mark.parametrize("name", ["../../tmp/escape", "a/b", ".hidden", "x" * 65])
def test_a_target_name_that_cannot_name_its_log_files_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The name names LOG_PATH/<name>.out.log: '../' would write outside LOG_PATH."""
    monkeypatch.setenv("ERPWATCH_COMMAND", "backend")
    monkeypatch.setenv(f"ERPWATCH_TARGETS__{name}__COMMAND", "sleep 1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"ERPWATCH_TARGETS__<NAME>__*: {name.lower()!r} is not a target name; expected "
        "letters, digits, '.', '_' or '-' (at most 64, the first a letter or digit)"
    )


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
        ("ERPWATCH_PROBE_TIMEOUT", "inf"),
        ("ERPWATCH_TARGETS__BACKEND__CHECK_INTERVAL", "1e309"),
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


# --- durations: finite, at most 30 days -----------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "1e309", "-inf", "nan", "Infinity", "2592000.5", "1e12"])
@pytest.mark.parametrize(
    "variable",
    [
        "ERPWATCH_PROBE_TIMEOUT",
        "ERPWATCH_CHECK_INTERVAL",
        "ERPWATCH_STARTUP_GRACE",
        "ERPWATCH_ALERT_GROUP_WAIT",
        "ERPWATCH_TARGETS__FRONTEND__PROBE_TIMEOUT",
        "ERPWATCH_TARGETS__FRONTEND__TIMEOUT_THRESHOLD",
    ],
)
def test_duration_must_be_finite_and_at_most_30_days(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__COMMAND", "npm run preview")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"{variable}: expected a finite number of seconds, at most 2592000 (30 days) "
        f"(got {value!r})"
    )


def test_thirty_days_is_accepted_and_fractions_still_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_COMMAND", "backend")
    monkeypatch.setenv("ERPWATCH_LIMIT_RETRY", "2592000")
    monkeypatch.setenv("ERPWATCH_TARGETS__BACKEND__PROBE_TIMEOUT", "0.05")
    (target,) = load_settings().targets_resolved()
    assert target.limit_retry == 2592000 and target.probe_timeout == 0.05


def test_rss_limit_must_be_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERPWATCH_RSS_LIMIT_MB", "inf")
    with pytest.raises(ConfigError, match="ERPWATCH_RSS_LIMIT_MB: expected a finite number"):
        load_settings()


def test_per_target_typo_names_the_variable_and_the_closest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__COMMAND", "npm run preview")
    monkeypatch.setenv("ERPWATCH_TARGETS__FRONTEND__CHEK_INTERVAL", "5")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "ERPWATCH_TARGETS__FRONTEND__CHEK_INTERVAL: not a known variable; "
        "did you mean ERPWATCH_TARGETS__FRONTEND__CHECK_INTERVAL?"
    )


# --- unknown variables: a warning naming the closest known one ------------------------------


def test_unknown_variable_in_environment_or_dotenv_is_named_with_the_closest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ERPWATCH_STATUS_PORTT=1\nOTHER_TOOL_SETTING=1\n")
    monkeypatch.setenv("ERPWATCH_CHEK_INTERVAL", "5")
    monkeypatch.setenv("ERPWATCH_TARGET__WORKER__COMMAND", "worker")
    monkeypatch.setenv("ERPWATCH_ZZZZZZ", "1")
    settings = load_settings()  # never fatal
    assert settings.check_interval == 15
    assert sorted(unknown_variables()) == [
        "ERPWATCH_CHEK_INTERVAL is not a known variable; did you mean ERPWATCH_CHECK_INTERVAL?",
        "ERPWATCH_STATUS_PORTT is not a known variable; did you mean ERPWATCH_STATUS_PORT?",
        "ERPWATCH_TARGET__WORKER__COMMAND is not a known variable; "
        "did you mean ERPWATCH_TARGETS__WORKER__COMMAND?",
        "ERPWATCH_ZZZZZZ is not a known variable (ignored)",
    ]


def test_known_forms_raise_no_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ERPWATCH_TARGETS__WORKER__MAX_RESTARTS=2\n")
    for name, value in {
        "ERPWATCH_COMMAND": "backend",
        "erpwatch_check_interval": "5",  # pydantic-settings reads it case-insensitively
        "ERPWATCH_STATUS_MAX_CONNECTIONS": "10",
        "ERPWATCH_ENV__PYTHONUNBUFFERED": "1",
        "ERPWATCH_TARGETS__WORKER__COMMAND": "worker",
        "ERPWATCH_TARGETS__WORKER__ENV__MODE": "batch",
        "ERPWATCH_TARGET": "backend@host",  # erpwatch's own marker in its children
    }.items():
        monkeypatch.setenv(name, value)
    load_settings()
    assert unknown_variables() == []
    # The whole example file is known too.
    (tmp_path / ".env").write_text((REPO / ".env.example").read_text())
    assert unknown_variables() == []


# --- the child's extra environment ----------------------------------------------------------


def test_child_env_keeps_the_case_of_its_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "ERPWATCH_TARGETS__WORKER__ENV__Queue_Name=from-dotenv\nERPWATCH_ENV__MyVar=dotenv\n"
    )
    monkeypatch.setenv("ERPWATCH_COMMAND", "backend")
    monkeypatch.setenv("ERPWATCH_ENV__PYTHONUNBUFFERED", "1")
    monkeypatch.setenv("ERPWATCH_ENV__MyVar", "a=b c")  # the environment wins over .env
    monkeypatch.setenv("ERPWATCH_TARGETS__BACKEND__ENV__lower_one", "x")
    monkeypatch.setenv("ERPWATCH_TARGETS__WORKER__COMMAND", "worker")
    backend, worker = load_settings().targets_resolved()
    assert backend.env == (("MyVar", "a=b c"), ("PYTHONUNBUFFERED", "1"), ("lower_one", "x"))
    assert worker.env == (("Queue_Name", "from-dotenv"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backend.name = "other"  # type: ignore[misc]
    assert len({backend, worker}) == 2  # frozen and hashable, env included


def test_child_env_from_keyword_arguments_and_defaults() -> None:
    settings = load_settings(
        command="backend", targets={"worker": {"command": "worker", "env": {"Mode": "x"}}}
    )
    backend, worker = settings.targets_resolved()
    assert backend.env == () and worker.env == (("Mode", "x"),)


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("ERPWATCH_ENV__", "ERPWATCH_ENV: expected a valid value: '' is not an environment"),
        ("ERPWATCH_ENV__A__B", "ERPWATCH_ENV__A: expected a single value, not nested"),
    ],
)
def test_child_env_bad_name_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, expected: str
) -> None:
    monkeypatch.setenv("ERPWATCH_COMMAND", "backend")
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(expected)
