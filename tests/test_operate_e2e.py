"""Operating a running `erpwatch run` over its real control socket: restart, stop, start,
reload (command, SIGHUP), refusals, a hold kept across an erpwatch restart, and the
leftovers of an erpwatch killed with SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import free_port, wait_until
from tests.test_run_e2e import Run, alive

SLEEPER = f"{sys.executable} -c 'import time; time.sleep(300)'"


def events(tmp_path: Path) -> list[dict[str, Any]]:
    db = tmp_path / "events.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT target, kind, message, details FROM events ORDER BY id")
        return [
            {"target": t, "kind": k, "message": m, "details": json.loads(d)}
            for t, k, m, d in rows.fetchall()
        ]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def kinds(tmp_path: Path, target: str | None = None) -> list[str]:
    return [e["kind"] for e in events(tmp_path) if target is None or e["target"] == target]


def erpwatch(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ERPWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "watchdog.cli", *args],
        env={
            **base,
            "ERPWATCH_LOG_PATH": str(tmp_path / "logs"),
            "ERPWATCH_DB_PATH": str(tmp_path / "events.db"),
            **(env or {}),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def pid_of(tmp_path: Path, target: str) -> int | None:
    """The pid of the target's newest started/restarted event."""
    for event in reversed(events(tmp_path)):
        if event["target"] == target and event["kind"] in ("started", "restarted"):
            pid = event["details"].get("pid")
            return int(pid) if pid is not None else None
    return None


def healthy(tmp_path: Path, target: str, count: int = 1) -> bool:
    return kinds(tmp_path, target).count("healthy") >= count


def start(tmp_path: Path, runs: list[Run], env: dict[str, str]) -> Run:
    run = Run(tmp_path, {"ERPWATCH_STATUS_ENABLED": "false", **env})
    runs.append(run)

    def listening() -> bool:
        if run.proc.poll() is not None:
            output = run.proc.stdout.read() if run.proc.stdout else ""
            raise AssertionError(f"erpwatch run exited {run.proc.returncode}: {output[-3000:]}")
        return (tmp_path / "logs" / "erpwatch.sock").exists()

    wait_until(listening, 30, what="the control socket")
    port = env.get("ERPWATCH_STATUS_PORT")
    if env.get("ERPWATCH_STATUS_ENABLED") == "true" and port:
        # The status server comes up after the control socket (and a dead run's socket
        # file may still be there): wait until it accepts.
        wait_until(lambda: accepts(int(port)), 30, what="the status server")
    return run


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_restart_stop_start_over_the_socket(tmp_path: Path, runs: list[Run]) -> None:
    start(tmp_path, runs, {"ERPWATCH_COMMAND": SLEEPER})
    wait_until(lambda: healthy(tmp_path, "backend"), 20, what="healthy")
    first = pid_of(tmp_path, "backend")
    assert first is not None

    done = erpwatch(tmp_path, "restart", "backend", "--reason", "deploy 2.3.1")
    assert done.returncode == 0, done.stderr
    second = pid_of(tmp_path, "backend")
    assert second is not None and second != first and not alive(first)
    assert f"restarted, pid {second}" in done.stdout
    restarted = [e for e in events(tmp_path) if e["kind"] == "restarted"][-1]
    assert restarted["message"].startswith("restarted (by operator (")
    assert "deploy 2.3.1" in restarted["message"]
    assert restarted["details"]["actor"].startswith("operator (")

    done = erpwatch(tmp_path, "stop", "backend", "--reason", "maintenance")
    assert done.returncode == 0, done.stderr
    assert "whole tree gone" in done.stdout
    assert not alive(second)
    stopped = [e for e in events(tmp_path) if e["kind"] == "stopped"][-1]
    assert "maintenance" in stopped["message"]

    done = erpwatch(tmp_path, "start", "backend")
    assert done.returncode == 0, done.stderr
    third = pid_of(tmp_path, "backend")
    assert third is not None and alive(third) and "started, pid" in done.stdout
    assert "restart-limit-reached" not in kinds(tmp_path) and "crashed" not in kinds(tmp_path)


def test_refusals_unknown_target_and_no_erpwatch(tmp_path: Path, runs: list[Run]) -> None:
    nothing = erpwatch(tmp_path, "restart", "backend")
    assert nothing.returncode == 3 and "no erpwatch is running" in nothing.stderr
    start(tmp_path, runs, {"ERPWATCH_COMMAND": SLEEPER})
    unknown = erpwatch(tmp_path, "restart", "nosuch")
    assert unknown.returncode == 1
    assert "unknown target 'nosuch'" in unknown.stderr
    usage = erpwatch(tmp_path, "stop")
    assert usage.returncode == 2


def test_a_held_target_stays_stopped_across_an_erpwatch_restart(
    tmp_path: Path, runs: list[Run]
) -> None:
    env = {"ERPWATCH_COMMAND": SLEEPER}
    run = start(tmp_path, runs, env)
    wait_until(lambda: healthy(tmp_path, "backend"), 20, what="healthy")
    assert erpwatch(tmp_path, "stop", "backend").returncode == 0
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(20) == 0
    before = len(events(tmp_path))
    run = start(tmp_path, runs, env)
    wait_until(
        lambda: any(e["kind"] == "stopped" for e in events(tmp_path)[before:]), 20, what="held"
    )
    later = events(tmp_path)[before:]
    assert "held stopped by operator" in next(e["message"] for e in later if e["kind"] == "stopped")
    assert not any(e["kind"] == "started" for e in later)
    assert run.pids() == []  # no child at all
    assert erpwatch(tmp_path, "start", "backend").returncode == 0
    wait_until(lambda: run.pids() != [], 10, what="started again")


def test_reload_adds_removes_changes_keeps_and_rejects(tmp_path: Path, runs: list[Run]) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"ERPWATCH_TARGETS__KEEP__COMMAND={SLEEPER}\n"
        f"ERPWATCH_TARGETS__CHANGE__COMMAND={SLEEPER}\n"
        f"ERPWATCH_TARGETS__DROP__COMMAND={SLEEPER}\n"
    )
    start(tmp_path, runs, {})
    for name in ("keep", "change", "drop"):
        wait_until(lambda name=name: healthy(tmp_path, name), 20, what=f"{name} healthy")
    pids = {name: pid_of(tmp_path, name) for name in ("keep", "change", "drop")}

    dotenv.write_text(
        f"ERPWATCH_TARGETS__KEEP__COMMAND={SLEEPER}\n"
        f"ERPWATCH_TARGETS__CHANGE__COMMAND={SLEEPER} v2\n"
        f"ERPWATCH_TARGETS__ADD__COMMAND={SLEEPER}\n"
    )
    done = erpwatch(tmp_path, "reload")
    assert done.returncode == 0, done.stderr
    assert "added: add" in done.stdout and "removed: drop" in done.stdout
    assert "restarted: change" in done.stdout
    wait_until(lambda: healthy(tmp_path, "add"), 20, what="add healthy")
    assert pid_of(tmp_path, "keep") == pids["keep"] and alive(pids["keep"] or 0)
    assert pid_of(tmp_path, "change") != pids["change"]
    assert not alive(pids["drop"] or 0)
    reloaded = [e for e in events(tmp_path) if e["kind"] == "config-reloaded"][-1]
    assert reloaded["details"]["added"] == ["add"]

    current = {name: pid_of(tmp_path, name) for name in ("keep", "change", "add")}
    dotenv.write_text(dotenv.read_text() + "ERPWATCH_MAX_RESTARTS=-1\n")
    refused = erpwatch(tmp_path, "reload")
    assert refused.returncode == 1
    assert "ERPWATCH_MAX_RESTARTS" in refused.stderr
    assert {name: pid_of(tmp_path, name) for name in current} == current
    assert all(alive(pid or 0) for pid in current.values())
    assert "config-rejected" in kinds(tmp_path)


def test_sighup_is_a_reload(tmp_path: Path, runs: list[Run]) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"ERPWATCH_TARGETS__ONE__COMMAND={SLEEPER}\n")
    run = start(tmp_path, runs, {})
    wait_until(lambda: healthy(tmp_path, "one"), 20, what="one healthy")
    dotenv.write_text(dotenv.read_text() + f"ERPWATCH_TARGETS__TWO__COMMAND={SLEEPER}\n")
    run.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: healthy(tmp_path, "two"), 20, what="two started by SIGHUP")
    assert run.proc.poll() is None
    reloaded = [e for e in events(tmp_path) if e["kind"] == "config-reloaded"][-1]
    assert reloaded["details"]["actor"] == "SIGHUP"


def test_after_sigkill_the_next_run_ends_the_leftovers_and_starts(
    tmp_path: Path, runs: list[Run]
) -> None:
    port = free_port()
    command = (
        f"{sys.executable} -m watchdog.demo.backend --port {port} "
        "--spawn-grandchild --grandchild-setsid"
    )
    env = {"ERPWATCH_COMMAND": command, "ERPWATCH_HEALTH_URL": f"http://127.0.0.1:{port}/health"}
    run = start(tmp_path, runs, env)
    wait_until(lambda: healthy(tmp_path, "backend"), 20, what="healthy")
    out_log = tmp_path / "logs" / "backend.out.log"

    def grandchild() -> int | None:
        for line in out_log.read_text().splitlines():
            if "GRANDCHILD" in line:
                return int(line.split()[1])
        return None

    orphan = wait_until(grandchild, 10, what="the grandchild")
    backend = pid_of(tmp_path, "backend")
    assert orphan is not None and backend is not None
    run.proc.send_signal(signal.SIGKILL)  # erpwatch dies; its children live on
    run.proc.wait(10)
    assert alive(backend) and alive(orphan)

    start(tmp_path, runs, env)  # does not refuse: the port is freed first
    wait_until(lambda: healthy(tmp_path, "backend", count=2), 30, what="healthy again")
    assert not alive(backend) and not alive(orphan)
    leftover = [e for e in events(tmp_path) if e["kind"] == "leftover-stopped"]
    assert len(leftover) == 1 and str(backend) in leftover[0]["message"]
    new = pid_of(tmp_path, "backend")
    assert new is not None and new != backend
    assert psutil.Process(new).ppid() != 1


HUNG_HOOK = (
    "import json, os, sys, time; event = json.load(sys.stdin); "
    "open(sys.argv[1], 'w').write(f\"{os.getpid()} {event['id']}\"); time.sleep(300)"
)


def test_after_sigkill_the_next_run_ends_the_hung_hook_left_and_retries_it(
    tmp_path: Path, runs: list[Run]
) -> None:
    ran = tmp_path / "hook-ran.txt"
    env = {
        "ERPWATCH_COMMAND": "sh -c 'exit 3'",  # a crash loop: restart-limit-reached at once
        "ERPWATCH_MAX_RESTARTS": "1",
        "ERPWATCH_RESTART_BACKOFF": "0.05",
        "ERPWATCH_HOOK_COMMAND": shlex.join([sys.executable, "-c", HUNG_HOOK, str(ran)]),
        "ERPWATCH_HOOK_ON": "restart-limit-reached",
        "ERPWATCH_HOOK_TIMEOUT": "300",
    }

    def hook_run() -> tuple[int, str] | None:
        pid, _, event_id = ran.read_text().partition(" ") if ran.exists() else ("", "", "")
        return (int(pid), event_id) if event_id else None

    hooks: list[psutil.Process] = []
    try:
        run = start(tmp_path, runs, env)
        first = wait_until(hook_run, 30, what="the hook running")
        assert first is not None
        hooks.append(psutil.Process(first[0]))
        wait_until(lambda: "erpwatch:hook" in ledger_targets(tmp_path), 10, what="recorded")
        run.proc.send_signal(signal.SIGKILL)  # erpwatch dies; the hung hook lives on
        run.proc.wait(10)
        assert alive(first[0])
        ran.unlink()

        run = start(tmp_path, runs, env)  # (the dead run's socket file is still there)
        wait_until(lambda: not alive(first[0]), 30, what="the previous run's hook ended")
        leftover = wait_until(
            lambda: [e for e in events(tmp_path) if e["kind"] == "leftover-stopped"],
            30,
            what="the leftover-stopped event",
        )
        assert [e["target"] for e in leftover] == ["erpwatch"]
        assert leftover[0]["message"].startswith(
            f"stopped the previous run's alert hook {first[0]}"
        )
        retry = wait_until(hook_run, 30, what="the hook retried")
        assert retry is not None and retry[1] == first[1]  # the same event: never lost
        hooks.append(psutil.Process(retry[0]))
        run.proc.send_signal(signal.SIGTERM)  # a clean stop ends the hook it runs
        assert run.proc.wait(20) == 0
        assert not alive(retry[0]) and "erpwatch:hook" not in ledger_targets(tmp_path)
    finally:
        for hook in hooks:  # by PID, should a check above have failed
            with contextlib.suppress(psutil.Error):
                hook.kill()


def ledger_targets(tmp_path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{tmp_path / 'events.db'}?mode=ro", uri=True, timeout=5)
    try:
        return [row[0] for row in conn.execute("SELECT target FROM children")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_the_process_environment_wins_over_the_env_file(tmp_path: Path, runs: list[Run]) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"ERPWATCH_COMMAND={SLEEPER}\n")
    start(tmp_path, runs, {})  # the run's environment sets ERPWATCH_CHECK_INTERVAL=0.05
    dotenv.write_text(dotenv.read_text() + "ERPWATCH_CHECK_INTERVAL=abc\n")
    done = erpwatch(tmp_path, "reload", env={"ERPWATCH_CHECK_INTERVAL": "0.05"})
    assert done.returncode == 0, done.stderr  # the file's bad value is shadowed
    assert "no target changed" in done.stdout


def test_http_control_needs_the_token_header_and_a_same_site_origin(
    tmp_path: Path, runs: list[Run]
) -> None:
    import httpx

    port = free_port()
    start(
        tmp_path,
        runs,
        {
            "ERPWATCH_COMMAND": SLEEPER,
            "ERPWATCH_STATUS_ENABLED": "true",
            "ERPWATCH_STATUS_PORT": str(port),
            "ERPWATCH_STATUS_TOKEN": "s3cret-token",
        },
    )
    wait_until(lambda: healthy(tmp_path, "backend"), 20, what="healthy")
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer s3cret-token"}
    first = pid_of(tmp_path, "backend")

    with httpx.Client(base_url=base, timeout=60, trust_env=False) as client:
        assert client.post("/api/targets/backend/restart").status_code == 401
        assert client.post("/api/targets/backend/restart?token=s3cret-token").status_code == 401
        cross = client.post(
            "/api/targets/backend/restart", headers={**auth, "Origin": "https://evil.example"}
        )
        assert cross.status_code == 403 and "cross-site" in cross.json()["error"]
        assert pid_of(tmp_path, "backend") == first  # nothing happened so far
        unknown = client.post("/api/targets/nosuch/restart", headers=auth)
        assert unknown.status_code == 404
        done = client.post(
            "/api/targets/backend/restart",
            headers={**auth, "Origin": base},
            json={"reason": "from the page"},
        )
        assert done.status_code == 200, done.text
        assert done.json()["results"][0]["ok"]
        assert pid_of(tmp_path, "backend") != first
        stopped = client.post("/api/targets/backend/stop", headers=auth)
        assert stopped.status_code == 200 and "whole tree gone" in stopped.text
        assert client.post("/api/reload", headers=auth).json()["ok"]
    restarted = [e for e in events(tmp_path) if e["kind"] == "restarted"][-1]
    assert restarted["details"]["actor"] == "operator (api)"


def test_http_control_is_off_without_a_token(tmp_path: Path, runs: list[Run]) -> None:
    import httpx

    port = free_port()
    start(
        tmp_path,
        runs,
        {
            "ERPWATCH_COMMAND": SLEEPER,
            "ERPWATCH_STATUS_ENABLED": "true",
            "ERPWATCH_STATUS_PORT": str(port),
        },
    )
    answer = httpx.post(
        f"http://127.0.0.1:{port}/api/targets/backend/stop", timeout=30, trust_env=False
    )
    assert answer.status_code == 403 and "HTTP control is off" in answer.json()["error"]


def test_a_held_target_shows_who_why_and_since_in_status(tmp_path: Path, runs: list[Run]) -> None:
    import httpx

    port = free_port()
    env = {
        "ERPWATCH_COMMAND": SLEEPER,
        "ERPWATCH_STATUS_ENABLED": "true",
        "ERPWATCH_STATUS_PORT": str(port),
    }
    start(tmp_path, runs, env)
    wait_until(lambda: healthy(tmp_path, "backend"), 20, what="healthy")
    assert erpwatch(tmp_path, "stop", "backend", "--reason", "db upgrade").returncode == 0
    document = httpx.get(f"http://127.0.0.1:{port}/status?fresh=1", timeout=10).json()
    (target,) = document["targets"]
    assert target["state"] == "stopped" and target["held"]["reason"] == "db upgrade"
    assert target["colour"] == "grey"  # as on the page: stopped on purpose is not an outage
    assert target["held"]["actor"].startswith("operator (") and target["held"]["since"]
    assert target["label"].startswith("Stopped by operator (")
    shown = erpwatch(tmp_path, "status", env={"ERPWATCH_STATUS_PORT": str(port)})
    assert "Stopped by operator (" in shown.stdout and "db upgrade" in shown.stdout
    assert shown.returncode == 0  # held on purpose: as it should be


def test_reload_applies_alerting_and_threshold_settings_in_place(
    tmp_path: Path, runs: list[Run]
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"ERPWATCH_COMMAND={SLEEPER}\nERPWATCH_ALERT_TO=old@example.com\n")
    start(tmp_path, runs, {})
    wait_until(lambda: healthy(tmp_path, "backend"), 20, what="healthy")
    pid = pid_of(tmp_path, "backend")
    dotenv.write_text(
        f"ERPWATCH_COMMAND={SLEEPER}\nERPWATCH_ALERT_TO=new@example.com\n"
        "ERPWATCH_CPU_THRESHOLD=80\nERPWATCH_SMTP_PASSWORD=hunter2-secret\n"
    )
    done = erpwatch(tmp_path, "reload")
    assert done.returncode == 0, done.stderr
    assert "ERPWATCH_ALERT_TO" in done.stdout and "ERPWATCH_CPU_THRESHOLD" in done.stdout
    assert "hunter2" not in done.stdout  # names of changed settings, never their values
    reloaded = [e for e in events(tmp_path) if e["kind"] == "config-reloaded"][-1]
    assert "hunter2" not in json.dumps(reloaded)
    assert pid_of(tmp_path, "backend") == pid and alive(pid or 0)
