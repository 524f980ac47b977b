"""The hook: a real command run per event, through the outbox (fails, hangs, succeeds)."""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import sys
from pathlib import Path

import psutil
import pytest

from tests.alerting.conftest import SmtpServer, make_settings
from tests.alerting.test_service import running
from tests.helpers import await_until
from watchdog.bus import EventBus
from watchdog.events import Event, Kind
from watchdog.store import EventStore

HOOK = """
import json, os, sys, time
out = sys.argv[1]
mode = sys.argv[2]
event = json.load(sys.stdin)
runs = out + ".runs"
n = int(open(runs).read()) + 1 if os.path.exists(runs) else 1
open(runs, "w").write(str(n))
if mode == "hang":
    open(out + ".pid", "w").write(str(os.getpid()))
    print("about to hang", flush=True)
    time.sleep(600)
if mode == "tempfail" and n == 1:
    print("database busy, try later")
    sys.exit(75)
if mode == "leave":
    import subprocess
    child = subprocess.Popen(["sleep", "600"])
    open(out + ".pid", "w").write(str(child.pid))
if mode == "fail":
    print("boom: the pager API said no", file=sys.stderr)
    sys.exit(3)
env = {k: v for k, v in os.environ.items() if k.startswith("ERPWATCH_")}
json.dump({"event": event, "env": env}, open(out, "w"))
print("paged on-call for", event["target"])
"""


def hook_command(tmp_path: Path, mode: str) -> tuple[str, Path]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    out = tmp_path / "hook-out.json"
    return shlex.join([sys.executable, str(script), str(out), mode]), out


def hook_rows(db: Path) -> list[tuple[str, int, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT status, attempts, last_error FROM alert_outbox WHERE receiver = 'hook' "
            "ORDER BY id"
        ).fetchall()
    conn.close()
    return [(str(s), int(a), e) for s, a, e in rows]


async def test_hook_gets_the_event_on_stdin_and_in_its_environment_but_no_secret(
    tmp_path: Path,
    smtp: SmtpServer,
    store: EventStore,
    bus: EventBus,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERPWATCH_SMTP_PASSWORD", "smtp-secret-of-erpwatch")
    monkeypatch.setenv("ERPWATCH_STATUS_TOKEN", "status-token-of-erpwatch")
    command, out = hook_command(tmp_path, "ok")
    settings = make_settings(tmp_path, smtp, hook_command=command, hook_on=["down"])
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "backend down for 60s", restarts=5))
        await bus.publish(Event.of("backend", Kind.CRASHED, "not a hook kind"))
        await await_until(lambda: hook_rows(store.path)[:1] == [("sent", 1, None)])
        await await_until(lambda: hook_events(store, Kind.ALERT_SENT))
    seen = json.loads(_read(out))
    event, env = seen["event"], seen["env"]
    assert (event["target"], event["kind"], event["severity"]) == ("backend", "down", "critical")
    assert event["message"] == "backend down for 60s" and event["details"] == {"restarts": 5}
    assert env["ERPWATCH_EVENT_KIND"] == "down"
    assert env["ERPWATCH_EVENT_TARGET"] == "backend"
    assert env["ERPWATCH_EVENT_ID"] == str(event["id"])
    assert set(env) == {f"ERPWATCH_EVENT_{k}" for k in
                        ("ID", "TS", "TARGET", "HOST", "KIND", "SEVERITY", "MESSAGE")}  # fmt: skip
    assert len(hook_rows(store.path)) == 1  # the crash is not in HOOK_ON
    (sent,) = hook_events(store, Kind.ALERT_SENT)
    assert "exit 0" in sent.message and "paged on-call for backend" in sent.details["response"]


async def test_failing_hook_is_a_dead_letter_with_its_exit_status_and_output(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    command, _out = hook_command(tmp_path, "fail")
    settings = make_settings(tmp_path, smtp, hook_command=command, hook_on=["down"])
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        await await_until(lambda: [r[0] for r in hook_rows(store.path)] == ["dead"])
        failed = await await_until(lambda: hook_events(store, Kind.ALERT_FAILED))
    ((_, attempts, reason),) = hook_rows(store.path)
    assert attempts == 1 and reason is not None
    assert "exit 3" in reason and "boom: the pager API said no" in reason
    assert "exit 3" in failed[0].message


async def test_tempfail_hook_is_retried_until_it_succeeds(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    command, out = hook_command(tmp_path, "tempfail")
    settings = make_settings(tmp_path, smtp, hook_command=command, hook_on=["down"])
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        await await_until(lambda: [r[0] for r in hook_rows(store.path)] == ["sent"])
    assert hook_rows(store.path)[0][1] == 2  # one EX_TEMPFAIL, then done
    assert _read(Path(f"{out}.runs")) == "2" and _read(out)


async def test_hung_hook_is_killed_at_its_timeout_retried_and_blocks_nothing_else(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    command, out = hook_command(tmp_path, "hang")
    settings = make_settings(
        tmp_path, smtp, hook_command=command, hook_on=["down"], hook_timeout=0.5
    )
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        pid = int(await await_until(lambda: _read(Path(f"{out}.pid")), what="the hook runs"))
        # While the hook hangs, the pipeline and the mail lane go on.
        await await_until(lambda: smtp.messages, what="the DOWN mail")
        await bus.publish(Event.of("worker", Kind.DOWN, "down too"))
        await await_until(lambda: len(smtp.messages) >= 2, what="the second mail")
        await await_until(lambda: any(r[1] >= 1 for r in hook_rows(store.path)))
        await await_until(lambda: not _alive(pid), what="the hung hook killed")
        rows = hook_rows(store.path)
    assert rows[0][0] == "pending"  # a timeout is transient: it is tried again
    assert rows[0][2] is not None and "timed out after 0.5s" in rows[0][2]
    assert "about to hang" in rows[0][2]


async def test_what_a_hook_leaves_running_in_its_group_is_killed_when_it_exits(
    tmp_path: Path, smtp: SmtpServer, store: EventStore, bus: EventBus
) -> None:
    command, out = hook_command(tmp_path, "leave")
    settings = make_settings(tmp_path, smtp, hook_command=command, hook_on=["down"])
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "down"))
        await await_until(lambda: [r[0] for r in hook_rows(store.path)] == ["sent"])
    pid = int(_read(Path(f"{out}.pid")))
    await await_until(lambda: not _alive(pid), what="the left-behind sleep killed")


def hook_events(store: EventStore, kind: Kind) -> list[Event]:
    """The ``kind`` events about the hook's deliveries."""
    return [e for e in store.query(kinds=[kind], limit=None) if e.details.get("receiver") == "hook"]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_hook_environment_drops_every_erpwatch_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from alerting.hooks import hook_environment

    monkeypatch.setenv("ERPWATCH_WEBHOOK_SECRET", "x" * 8)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    env = hook_environment({"id": 7, "kind": "down", "message": "m" * 10_000})
    assert "ERPWATCH_WEBHOOK_SECRET" not in env and "NOTIFY_SOCKET" not in env
    assert env["ERPWATCH_EVENT_ID"] == "7" and len(env["ERPWATCH_EVENT_MESSAGE"]) == 4096
    assert env["PATH"] == os.environ["PATH"]
