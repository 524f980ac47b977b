"""Against Debian's real ``prometheus-alertmanager``, started by the test on loopback (two
instances without gossip: an HA pair gets every alert, as from Prometheus)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alerting.conftest import SmtpServer, make_settings
from tests.alerting.test_service import running
from tests.helpers import await_until, free_port, wait_until
from watchdog.bus import EventBus
from watchdog.events import Event, Kind
from watchdog.store import EventStore

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
CONFIG = """
route:
  receiver: nowhere
  group_wait: 1s
receivers:
  - name: nowhere
"""


class Alertmanager:
    def __init__(self, directory: Path) -> None:
        assert BINARY is not None
        self.port = free_port()
        directory.mkdir(parents=True)
        (directory / "am.yml").write_text(CONFIG)
        self.log = (directory / "am.log").open("wb")
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={directory / 'am.yml'}",
             f"--storage.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._ready, timeout=30, interval=0.05, what="alertmanager ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "alertmanager exited"
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts

    def resolved(self) -> bool:
        return not self.alerts()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Alertmanager, Alertmanager]]:
    if BINARY is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus-alertmanager is not installed (apt-get install it)")
        pytest.skip("prometheus-alertmanager is not installed")
    first = Alertmanager(tmp_path / "am1")
    try:
        second = Alertmanager(tmp_path / "am2")
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def sent_purposes(db: Path, receiver_prefix: str = "alertmanager-") -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT purpose FROM alert_outbox WHERE receiver LIKE ? AND status = 'sent' "
            "ORDER BY id",
            (receiver_prefix + "%",),
        ).fetchall()
    conn.close()
    return [str(r[0]) for r in rows]


async def test_firing_alert_reaches_both_instances_is_refreshed_and_resolved(
    tmp_path: Path,
    smtp: SmtpServer,
    store: EventStore,
    bus: EventBus,
    pair: tuple[Alertmanager, Alertmanager],
) -> None:
    settings = make_settings(
        tmp_path,
        smtp,
        alertmanager_url=[am.url for am in pair],
        alertmanager_resend_interval=0.5,
        status_page_url="http://erp1.example.com:8765/",
        alert_recovery_after=0.3,
    )
    async with running(settings, store, bus):
        await bus.publish(Event.of("backend", Kind.DOWN, "backend down for 60s"))
        for am in pair:
            await await_until(am.alerts, what=f"the alert in {am.url}")
        # Re-sent while firing (each instance its own lane): 1 firing + refreshes.
        await await_until(lambda: sent_purposes(store.path).count("refresh") >= 4, what="re-sends")
        views, seen_at = [am.alerts() for am in pair], datetime.now(UTC)
        await bus.publish(Event.of("backend", Kind.HEALTHY, "healthy again"))
        for am in pair:
            await await_until(am.resolved, what=f"resolved in {am.url}")
        # An alert also leaves Alertmanager when its endsAt passes (2 s here, should the
        # resolved be slow under load): wait for both resolved rows to be sent too.
        await await_until(
            lambda: sent_purposes(store.path).count("resolved") == 2, what="both resolved sent"
        )
    for alerts in views:
        (alert,) = alerts
        assert alert["labels"] == {
            "alertname": "ErpwatchDown",
            "target": "backend",
            "instance": "testhost",
            "severity": "critical",
            "kind": "down",
            "job": "erpwatch",
        }
        assert alert["annotations"]["summary"] == "backend@testhost: down"
        assert alert["annotations"]["description"] == "backend down for 60s"
        assert alert["generatorURL"] == "http://erp1.example.com:8765/"
        ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
        assert ends > seen_at  # firing: endsAt set at delivery, ahead of the moment seen
    purposes = sent_purposes(store.path)
    assert purposes.count("firing") == 2 and purposes.count("resolved") == 2
