"""The parser imports only the chosen command's module (`watchdog.commands.COMMANDS`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_fresh
from watchdog.commands import COMMANDS

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("pydantic_settings", "httpx", "uvicorn", "starlette", "jinja2", "sqlite_utils",
         "prometheus_client", "aiosmtplib")  # fmt: skip


def test_the_static_table_matches_what_each_module_registers() -> None:
    registered: dict[str, tuple[str, str]] = {}
    for module_name in sorted({module for module, _ in COMMANDS.values()}):
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        importlib.import_module(module_name).register(subparsers)
        for action in subparsers._choices_actions:
            registered[action.dest] = (module_name, str(action.help))
    assert registered == COMMANDS


def imported_by(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running the CLI."""
    code = (
        "import sys, json\nfrom watchdog.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [["--version"], ["--help"], ["history", "--limit", "5"], ["restart", "--help"], ["status"]],
)
def test_light_commands_import_no_heavy_library(args: list[str], tmp_path: Path) -> None:
    assert not imported_by(args, tmp_path) & set(HEAVY)


def test_history_finds_the_store_from_env_and_env_file_without_validating_settings(
    tmp_path: Path,
) -> None:
    from watchdog.events import Event, Kind
    from watchdog.store import EventStore

    db = tmp_path / "elsewhere" / "events.db"
    db.parent.mkdir()
    with EventStore(db) as store:
        store.append(Event.of("backend", Kind.CRASHED, "exit code 3"))
    # A broken setting beside the path: history still reads (only the path matters).
    (tmp_path / ".env").write_text(f"ERPWATCH_DB_PATH={db}\nERPWATCH_CHECK_INTERVAL=soon\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    shown = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "history", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**base, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert [e["kind"] for e in json.loads(shown.stdout)] == ["crashed"]
    other = tmp_path / "env-wins.db"
    with EventStore(other) as store:
        store.append(Event.of("backend", Kind.HEALTHY, "ok"))
    shown = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "history", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**base, "PYTHONPATH": str(REPO), "ERPWATCH_DB_PATH": str(other)},
    )  # fmt: skip
    assert [e["kind"] for e in json.loads(shown.stdout)] == ["healthy"]
    assert not imported_by(["history"], tmp_path) & {"pydantic_settings", "sqlite_utils"}


def test_the_run_path_loads_jinja2_only_when_something_is_rendered(tmp_path: Path) -> None:
    code = (
        "import sys\nimport watchdog.app, watchdog.api, alerting.service\n"
        "assert 'jinja2' not in sys.modules, 'imported at start'\n"
        "from alerting.render import Renderer\n"
        "r = Renderer(hostname='h', sender='s@x', stderr_lines=5)\n"
        "assert 'jinja2' not in sys.modules, 'imported by the renderer'\n"
        "r.env.get_template('email/test.txt.j2')\n"
        "assert 'jinja2' in sys.modules\n"
    )
    run_fresh(code, tmp_path)


def test_difflib_loads_only_to_suggest_a_name_for_a_misspelt_one(tmp_path: Path) -> None:
    code = (
        "import os, sys\nimport watchdog.app, watchdog.api\n"
        "from watchdog.config import load_settings, unknown_variables\n"
        "load_settings(check_interval=5)\n"
        "assert unknown_variables() == [], unknown_variables()\n"
        "assert 'difflib' not in sys.modules, 'imported for a valid configuration'\n"
        "os.environ['ERPWATCH_CHEK_INTERVAL'] = '5'\n"
        "assert 'did you mean ERPWATCH_CHECK_INTERVAL?' in unknown_variables()[0]\n"
        "assert 'difflib' in sys.modules\n"
    )
    run_fresh(code, tmp_path)


# --- the top-level parser -------------------------------------------------------------------


def test_version_prints_one_line_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    from watchdog import __version__
    from watchdog.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"erpwatch {__version__}\n"


def test_console_script_answers_version_before_importing_argparse(tmp_path: Path) -> None:
    """``erpwatch --version`` (the console script `watchdog.entry.main`) prints what the
    parser prints, importing nothing but itself (argparse, re and gettext were half of the
    command's start)."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"erpwatch": "watchdog.entry:main"}
    code = (
        "import sys\nbefore = set(sys.modules)\nfrom watchdog.entry import main\n"
        "code = main(['--version'])\nprint(code, sorted(set(sys.modules) - before))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    from watchdog import __version__

    assert done.stdout == f"erpwatch {__version__}\n0 ['watchdog', 'watchdog.entry']\n"


@pytest.mark.parametrize("args", [["--vers"], ["--version", "status"]])
def test_console_script_hands_other_version_forms_to_the_parser(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from watchdog import __version__
    from watchdog.entry import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"erpwatch {__version__}\n"


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--he"], ["-h", "status"]])
def test_help_lists_every_command(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from watchdog.cli import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0
    listed = capsys.readouterr().out.split("positional arguments:")[1].split("options:")[0]
    names = [
        m.group(1) for m in (re.match(r"    (\S+)", line) for line in listed.splitlines()) if m
    ]
    assert names == list(COMMANDS)


def test_an_unknown_command_is_refused_naming_every_choice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from watchdog.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["hisotry"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'hisotry'" in err
    assert all(repr(name) in err for name in COMMANDS)


def test_no_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from watchdog.cli import main

    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_help_is_sized_to_columns_as_argparse_sizes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`HelpFormatter` finds the width without shutil; the help is what argparse's makes."""
    from watchdog.cli import Parser, terminal_columns

    def restart_help(parser_class: type[argparse.ArgumentParser]) -> str:
        subparsers = parser_class(prog="erpwatch").add_subparsers()
        importlib.import_module("watchdog.control_cmd").register(subparsers)
        return str(subparsers.choices["restart"].format_help())

    shown = {}
    for columns in (40, 100):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert terminal_columns() == columns
        shown[columns] = restart_help(Parser)
        assert shown[columns] == restart_help(argparse.ArgumentParser)
    assert shown[40] != shown[100]


def test_terminal_columns_falls_back_to_80_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from watchdog.cli import terminal_columns

    monkeypatch.setenv("COLUMNS", "not-a-number")
    monkeypatch.setattr(sys, "__stdout__", None)
    assert terminal_columns() == 80
