"""A target's escapee that dropped its environment (``setsid env -i cmd &``: no
ERPWATCH_TARGET marker) is still proven the target's by the output pipe it holds: it is
ended with the target's exit or stop, not left running beside every restart until erpwatch
itself stops (one more after each crash, seen piling up under `erpwatch run`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("pipe_holder_scenario.py")


@pytest.mark.parametrize("mode", ["exit", "stop"])
def test_an_unmarked_escapee_holding_the_pipes_is_ended(tmp_path: Path, mode: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCENARIO), str(tmp_path), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    if not outcome["subreaper"]:
        pytest.skip("no child subreaper here")
    assert outcome["made"]
    assert outcome["left"] == 0, outcome
