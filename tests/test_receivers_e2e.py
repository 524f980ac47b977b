"""`erpwatch run` as a real process feeding a real webhook receiver and a real hook."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tests.alerting.http_receiver import HttpReceiver
from tests.helpers import wait_until
from tests.test_run_e2e import Run

HOOK = "import json, sys; open(sys.argv[1], 'a').write(json.load(sys.stdin)['kind'] + '\\n')"


def test_a_crash_looping_backend_reaches_the_webhook_and_the_hook(
    tmp_path: Path, runs: list[Run]
) -> None:
    receiver = HttpReceiver().start()
    ran = tmp_path / "hook-ran.txt"
    try:
        run = Run(
            tmp_path,
            {
                "ERPWATCH_COMMAND": "sh -c 'echo cannot open config >&2; exit 3'",
                "ERPWATCH_MAX_RESTARTS": "2",
                "ERPWATCH_RESTART_BACKOFF": "0.05",
                "ERPWATCH_ALERT_GROUP_WAIT": "0.05",
                "ERPWATCH_WEBHOOK_URLS": receiver.url,
                "ERPWATCH_HOOK_COMMAND": shlex.join([sys.executable, "-c", HOOK, str(ran)]),
                "ERPWATCH_HOOK_ON": "restart-limit-reached",
            },
        )
        runs.append(run)
        wait_until(lambda: receiver.requests, timeout=30, what="the webhook POST")
        wait_until(lambda: ran.exists(), timeout=30, what="the hook")
        run.proc.terminate()
        assert run.proc.wait(20) == 0
    finally:
        receiver.stop()
    body = receiver.requests[0].json()
    assert body["target"] == "backend" and body["status"] == "firing"
    assert "restart-limit-reached" in body["kinds"] or "crash-loop" in body["kinds"]
    assert ran.read_text().splitlines() == ["restart-limit-reached"]
    sent = [k for t, k in run.kinds() if k == "alert-sent"]
    assert len(sent) >= 3  # the mail (.eml), the webhook and the hook
