"""``erpwatch silence`` as a real process: absurd durations and unknown targets are refused."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from alerting.commands import MAX_SILENCE, parse_silence


def erpwatch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    defaults = {
        "ERPWATCH_COMMAND": "sleep 1000",  # the single target "backend"
        "ERPWATCH_TARGETS__WORKER__COMMAND": "sleep 1000",
        "ERPWATCH_DB_PATH": str(tmp_path / "events.db"),
    }
    return subprocess.run(
        [sys.executable, "-m", "watchdog.cli", *args],
        env={**base, **defaults, **{f"ERPWATCH_{k}": v for k, v in env.items()}},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def silenced(tmp_path: Path) -> list[str]:
    path = tmp_path / "events.db"
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT target FROM alert_silences ORDER BY target").fetchall()
    conn.close()
    return [target for (target,) in rows]


@pytest.mark.parametrize(
    ("duration", "said"),
    [
        ("inf", "duration 'inf' is not a finite number of seconds"),
        ("nan", "duration 'nan' is not a finite number of seconds"),
        ("1e400", "duration '1e400' is not a finite number of seconds"),
        ("1000000d", "duration '1000000d' is too long: at most 365 days"),
        ("99999999999999999999d", "is too long: at most 365 days"),
        ("366d", "is too long"),
        ("0", "duration must be positive"),
        ("soon", "cannot read duration 'soon'"),
    ],
)
def test_absurd_duration_is_a_usage_error_in_one_line(
    tmp_path: Path, duration: str, said: str
) -> None:
    result = erpwatch(tmp_path, "silence", "backend", "--for", duration)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("erpwatch silence: ") and said in line, line
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "events.db").exists()  # nothing written, not even created


def test_parse_silence_bounds() -> None:
    assert parse_silence("1h30m") == timedelta(minutes=90)
    assert parse_silence("365d") == MAX_SILENCE
    with pytest.raises(ValueError, match="too long"):
        parse_silence("365d1s")


def test_unknown_target_is_refused_unless_forced(tmp_path: Path) -> None:
    result = erpwatch(tmp_path, "silence", "bakend", "--for", "10m")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "erpwatch silence: unknown target 'bakend' (configured: backend, erpwatch, worker); "
        "--force silences it anyway"
    )
    assert silenced(tmp_path) == []
    forced = erpwatch(tmp_path, "silence", "bakend", "--for", "10m", "--force")
    assert forced.returncode == 0, forced.stderr
    assert silenced(tmp_path) == ["bakend"]


@pytest.mark.parametrize("target", ["backend", "WORKER", "erpwatch"])
def test_configured_targets_and_erpwatch_itself_are_accepted(tmp_path: Path, target: str) -> None:
    result = erpwatch(tmp_path, "silence", target, "--for", "30m", "--reason", "upgrade")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"silenced: {target} silenced until")
    assert silenced(tmp_path) == [target.lower()]
    listed = erpwatch(tmp_path, "silence", "--list")
    assert f"{target} silenced until" in listed.stdout.replace(target.lower(), target)


def test_without_any_configured_target_it_is_accepted_with_a_note(tmp_path: Path) -> None:
    result = erpwatch(
        tmp_path, "silence", "backend", "--for", "5m", COMMAND="", TARGETS__WORKER__COMMAND=""
    )
    assert result.returncode == 0, result.stderr
    assert "note: no target is configured here, so 'backend' is not checked" in result.stderr
    assert silenced(tmp_path) == ["backend"]


def test_database_path_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    result = erpwatch(tmp_path, "silence", "backend", "--for", "5m", DB_PATH=str(tmp_path))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"erpwatch silence: cannot open the event database {tmp_path}: ")
    assert "Traceback" not in result.stderr
