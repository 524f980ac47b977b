from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import wait_until
from watchdog.cli import main
from watchdog.events import Event, Kind, Severity
from watchdog.history import (
    UsageError,
    format_csv,
    format_json,
    format_table,
    parse_kinds,
    parse_limit,
    parse_time,
)
from watchdog.store import EventStore

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
KEYS = ["id", "ts", "target", "kind", "severity", "message", "details"]


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30s", timedelta(seconds=30)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        (" 1.5h ", timedelta(minutes=90)),
        ("10M", timedelta(minutes=10)),
    ],
)
def test_parse_time_relative(text: str, ago: timedelta) -> None:
    assert parse_time(text, now=NOW) == NOW - ago


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T10:00:00.250Z", datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_parse_time_absolute(text: str, expected: datetime) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "5y", "-2h", "2024-13-01", "h2"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="cannot read time"):
        parse_time(text, now=NOW)


@pytest.mark.parametrize(
    "text",
    [
        "1000000d",
        "99999999999999999999w",
        "60000d",  # before 1970
        "0500-01-01",  # a 3-digit year would break the stored text order
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:00:00-05:00",  # past 9999 in UTC
    ],
)
def test_parse_time_out_of_range(text: str) -> None:
    with pytest.raises(UsageError, match="out of range: times and ages must stay between 1970"):
        parse_time(text, now=NOW)


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("50", 50), (" 7 ", 7), ("1e3", 1000)])
def test_parse_limit(text: str, expected: int) -> None:
    assert parse_limit(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1e20", "limit 1e20 is too large: at most 1000000000 (0 = all)"),
        (str(10**20), f"limit {10**20} is too large"),
        ("-1", "limit must be 0 (all) or more, not -1"),
        ("1.5", "limit must be a whole number, not '1.5'"),
        ("inf", "limit must be a whole number, not 'inf'"),
        ("nan", "limit must be a whole number"),
        ("many", "limit must be a whole number, not 'many'"),
    ],
)
def test_parse_limit_rejects(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_limit(text)
    assert str(caught.value).startswith(message)


def test_parse_kinds() -> None:
    assert parse_kinds(["crashed", "down,restarted", " crashed ", ""]) == [
        "crashed",
        "down",
        "restarted",
    ]


def sample(i: int, target: str = "backend", kind: str = Kind.CRASHED) -> Event:
    return Event(
        target=target,
        kind=kind,
        message=f"exit {i}\nwith a second line",
        severity=Severity.WARNING,
        details={"exit_code": i, "note": 'has "quotes", commas'},
        ts=NOW + timedelta(seconds=i),
        id=i,
    )


def test_format_table_aligns_columns() -> None:
    text = format_table([sample(1), sample(2, target="worker-long-name", kind=Kind.DOWN)])
    lines = text.splitlines()
    assert lines[0].split() == ["ts", "target", "kind", "severity", "message"]
    starts = [
        line.index("crashed") if "crashed" in line else line.index("down") for line in lines[1:]
    ]
    assert len(set(starts)) == 1 and lines[0].index("kind") == starts[0]
    assert "exit 1 with a second line" in lines[1]
    assert lines[1].startswith("2024-05-01T12:00:01.000Z")


def test_format_json_and_csv_shapes() -> None:
    events = [sample(1), sample(2)]
    data = json.loads(format_json(events))
    assert [list(item) for item in data] == [KEYS, KEYS]
    assert data[0]["details"] == {"exit_code": 1, "note": 'has "quotes", commas'}
    rows = list(csv.reader(io.StringIO(format_csv(events))))
    assert rows[0] == KEYS
    assert rows[1][:5] == ["1", "2024-05-01T12:00:01.000Z", "backend", "crashed", "warning"]
    assert json.loads(rows[1][6]) == {"exit_code": 1, "note": 'has "quotes", commas'}
    assert rows[1][5] == "exit 1\nwith a second line"


# --- the command ------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    """Two targets over the last 3 hours; ids grow with time."""
    path = tmp_path / "logs" / "erpwatch.db"
    now = datetime.now(UTC)
    plan = [
        (180, "backend", Kind.STARTED),
        (170, "worker", Kind.STARTED),
        (150, "backend", Kind.CRASHED),
        (149, "backend", Kind.RESTARTED),
        (90, "worker", Kind.DEGRADED),
        (60, "backend", Kind.CRASHED),
        (59, "backend", Kind.RESTART_LIMIT_REACHED),
        (20, "worker", Kind.CRASHED),
        (5, "erpwatch", Kind.ALERT_FAILED),
        (1, "backend", Kind.HEALTHY),
    ]
    with EventStore(path) as store:
        for minutes_ago, target, kind in plan:
            base = Event.of(target, kind, f"{target} {kind}", minutes_ago=minutes_ago)
            store.append(
                Event(
                    target=base.target,
                    kind=base.kind,
                    message=base.message,
                    severity=base.severity,
                    details=base.details,
                    ts=now - timedelta(minutes=minutes_ago),
                )
            )
    yield path


def run_json(capsys: pytest.CaptureFixture[str], db: Path, *args: str) -> list[dict[str, object]]:
    assert main(["history", "--db", str(db), "--json", *args]) == 0
    data: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return data


def minutes(data: list[dict[str, object]]) -> list[object]:
    return [item["details"]["minutes_ago"] for item in data]  # type: ignore[index]


def test_history_filters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    everything = run_json(capsys, db)
    assert minutes(everything) == [1, 5, 20, 59, 60, 90, 149, 150, 170, 180]  # newest first
    assert all(list(item) == KEYS for item in everything)

    assert minutes(run_json(capsys, db, "--target", "worker")) == [20, 90, 170]
    assert minutes(run_json(capsys, db, "--kind", "crashed")) == [20, 60, 150]
    assert minutes(run_json(capsys, db, "--kind", "crashed", "--kind", "started")) == [
        20,
        60,
        150,
        170,
        180,
    ]
    assert minutes(run_json(capsys, db, "--kind", "crashed,restarted", "--target", "backend")) == [
        60,
        149,
        150,
    ]
    assert minutes(run_json(capsys, db, "--severity", "critical")) == [5, 59]
    assert minutes(run_json(capsys, db, "--severity", "warning", "--target", "worker")) == [20, 90]
    assert minutes(run_json(capsys, db, "--since", "1h")) == [1, 5, 20, 59]
    assert minutes(run_json(capsys, db, "--until", "2h")) == [149, 150, 170, 180]
    assert minutes(run_json(capsys, db, "--since", "3h", "--until", "1h")) == [
        60,
        90,
        149,
        150,
        170,
    ]
    assert minutes(run_json(capsys, db, "--limit", "3")) == [1, 5, 20]
    assert len(run_json(capsys, db, "--limit", "0")) == 10
    assert run_json(capsys, db, "--target", "nobody") == []

    since = (datetime.now(UTC) - timedelta(minutes=100)).isoformat()
    assert minutes(run_json(capsys, db, "--since", since, "--target", "worker")) == [20, 90]


def test_history_table_and_csv(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--db", str(db), "--target", "backend", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ts", "target", "kind", "severity", "message"]
    assert lines[1].split()[1:4] == ["backend", "healthy", "info"]
    assert lines[2].split()[1:4] == ["backend", "restart-limit-reached", "critical"]
    assert len(lines) == 3

    assert main(["history", "--db", str(db), "--csv", "--kind", "crashed"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == KEYS
    assert [row[2] for row in rows[1:]] == ["worker", "backend", "backend"]
    assert json.loads(rows[1][6]) == {"minutes_ago": 20}


def test_history_empty_table(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--db", str(db), "--target", "nobody"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no matching events" in captured.err


def test_history_bad_since_exits_2_with_one_line(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "--db", str(db), "--since", "last tuesday"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "last tuesday" in err
    assert main(["history", "--db", str(db), "--limit", "-1"]) == 2


def test_history_missing_db_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    assert main(["history", "--db", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not missing.exists()


def test_history_default_path_from_settings(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ERPWATCH_LOG_PATH", str(db.parent))
    assert main(["history", "--json", "--limit", "1"]) == 0
    assert minutes(json.loads(capsys.readouterr().out)) == [1]
    monkeypatch.setenv("ERPWATCH_DB_PATH", str(db.parent / "other.db"))
    assert main(["history"]) == 1


def test_history_reads_while_a_writer_appends(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    written: list[int] = []
    with EventStore(db) as writer:

        def keep_writing() -> None:
            while not stop.is_set():
                committed = writer.append(Event.of("load", Kind.HEALTHY, "tick"))
                assert committed.id is not None
                written.append(committed.id)

        thread = threading.Thread(target=keep_writing)
        thread.start()
        try:
            wait_until(lambda: len(written) > 20, timeout=10, what="writer to get going")
            for _ in range(5):
                data = run_json(capsys, db, "--target", "load", "--limit", "0")
                assert len(data) >= 20
                ids = [item["id"] for item in data]
                assert ids == sorted(ids, reverse=True)  # type: ignore[type-var]
        finally:
            stop.set()
            thread.join(timeout=10)


# --- a real process ---------------------------------------------------------------------


def erpwatch_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "erpwatch"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "watchdog.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*erpwatch_cmd(), "history", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_subprocess_formats_and_filters(db: Path) -> None:
    done = run_cli("--db", str(db), "--json", "--target", "backend", "--kind", "crashed")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert minutes(data) == [60, 150]
    assert all(list(item) == KEYS for item in data)

    done = run_cli("--db", str(db), "--severity", "critical", "--since", "2h")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1:3] for line in lines[1:]] == [
        ["erpwatch", "alert-failed"],
        ["backend", "restart-limit-reached"],
    ]

    done = run_cli("--db", str(db), "--csv", "--until", "2h", "--limit", "2")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == KEYS and [row[3] for row in rows[1:]] == ["restarted", "crashed"]


def test_cli_subprocess_env_db_and_errors(db: Path, tmp_path: Path) -> None:
    done = run_cli("--json", "--limit", "1", env={"ERPWATCH_DB_PATH": str(db)})
    assert done.returncode == 0, done.stderr
    assert minutes(json.loads(done.stdout)) == [1]

    done = run_cli("--since", "soon", "--db", str(db))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1

    done = run_cli("--db", str(tmp_path / "missing.db"))
    assert done.returncode == 1 and "no event database" in done.stderr


def test_cli_subprocess_pipe_closed_early(tmp_path: Path) -> None:
    """`erpwatch history | head -1` must not print a traceback (output > a pipe buffer)."""
    path = tmp_path / "big.db"
    with EventStore(path) as store:
        for i in range(2000):
            store.append(Event.of("backend", Kind.HEALTHY, f"tick {i}", padding="x" * 100))
    with subprocess.Popen(
        [*erpwatch_cmd(), "history", "--db", str(path), "--json", "--limit", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "[\n"
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err and "Exception" not in err, err


def test_unknown_kind_is_noted(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--db", str(db), "--kind", "crashd"]) == 0
    assert "unknown kind" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--since", "1000000d"], "time '1000000d' is out of range"),
        (["--until", "99999999999999999999w"], "is out of range"),
        (["--since", "0500-01-01"], "is out of range"),
        (["--limit", "1e20"], "--limit 1e20 is too large"),
        (["--limit", "100000000000000000000"], "--limit 100000000000000000000 is too large"),
        (["--limit", "-5"], "--limit must be 0 (all) or more"),
    ],
)
def test_cli_subprocess_absurd_values_are_usage_errors_in_one_line(
    db: Path, args: list[str], said: str
) -> None:
    done = run_cli("--db", str(db), *args)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("erpwatch history: ") and said in line, line
    assert "Traceback" not in done.stderr and done.stdout == ""
