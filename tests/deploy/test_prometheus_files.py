"""The fleet files in deploy/: Prometheus rules (and their unit tests), the Prometheus and
Alertmanager configurations, checked by the real promtool and amtool (Debian's
``prometheus`` and ``prometheus-alertmanager`` packages), and the rules' metric names
checked against erpwatch's real exposition.

Without a tool its tests are skipped; on CI (CI=true) a missing tool is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watchdog.events import Event, Kind
from watchdog.metrics import Metrics
from watchdog.monitor import TargetStatus
from watchdog.probe import ProbeResult, ProbeStatus
from watchdog.states import TargetState

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "erpwatch-rules.yml"
RULE_TESTS = PROMETHEUS / "erpwatch-rules.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"

PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def tool(name: str) -> str:
    """The tool's path; skipped when it is missing, failed instead on CI."""
    path = shutil.which(name)
    if path is None:
        missing = f"needs {name} (apt-get install {PACKAGES[name]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    return path


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done


# --- reading the rules (a small reader for these files' layout: no YAML library here) ----


def alert_rules() -> dict[str, str]:
    """alert name -> the rule's text (expr, for, labels, annotations)."""
    chunks = re.split(r"^\s*- alert: *", RULES.read_text(), flags=re.MULTILINE)[1:]
    rules = {}
    for chunk in chunks:
        name, _, body = chunk.partition("\n")
        body = re.split(r"^\s*- name: ", body, flags=re.MULTILINE)[0]  # the next group
        rules[name.strip()] = body
    return rules


def expression(rule: str) -> str:
    match = re.search(r"^\s*expr: *(.*?)^\s*(?:for|labels|annotations):", rule, re.S | re.M)
    assert match is not None, rule
    return match.group(1)


# --- erpwatch's exposition with every input present ---------------------------------------


def full_exposition() -> str:
    failed = ProbeResult(ProbeStatus.FAILED, 0.2, 503, "HTTP 503", time.monotonic())
    sample = {
        "pids": [os.getpid()],
        "processes": 1,
        "cpu_percent": 1.5,
        "rss_mb": 50.0,
        "rss_bytes": 52428800,
        "threads": 4,
        "open_files": 12,
    }
    backend = TargetStatus(
        name="backend",
        state=TargetState.HEALTHY,
        pid=os.getpid(),
        uptime=30.0,
        restarts_in_window=1,
        restarts_total=2,
        health_url="http://127.0.0.1:8000/health",
        last_probe=failed,
        last_event=None,
        resources=sample,
    )
    stats = {
        "pending": 1,
        "dead": 1,
        "sent": 3,
        "silences_active": 1,
        "receivers": {
            "email": {"pending": 1, "dead": 0, "sent": 3},
            "webhook-1": {"pending": 0, "dead": 1, "sent": 0},
        },
    }
    metrics = Metrics(lambda: [backend], lambda: stats, lambda: 0)
    metrics.observe_statuses([backend])
    metrics.observe_event(Event.of("backend", Kind.CRASHED, "exit code 1"))
    return metrics.exposition().decode()


def exposed_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


# --- the rules ----------------------------------------------------------------------------


def test_rules_check() -> None:
    done = run(tool("promtool"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_rules_unit_tests_pass() -> None:
    done = run(tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=PROMETHEUS)
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    outcomes: dict[str, set[str]] = {}
    current = None
    for line in RULE_TESTS.read_text().splitlines():
        if match := re.match(r"\s*alertname: *(\w+)", line):
            current = match.group(1)
        elif (match := re.match(r"\s*exp_alerts:(.*)", line)) and current is not None:
            empty = match.group(1).split("#")[0].strip() == "[]"
            outcomes.setdefault(current, set()).add("quiet" if empty else "firing")
    assert set(outcomes) == set(alert_rules())
    untested = {name: got for name, got in outcomes.items() if got != {"quiet", "firing"}}
    assert untested == {}


def test_every_rule_has_severity_summary_and_description() -> None:
    for name, rule in alert_rules().items():
        assert re.search(r"^\s*severity: *(critical|warning)\s*$", rule, re.M), name
        assert re.search(r"^\s*summary: *\S", rule, re.M), name
        assert re.search(r"^\s*description: *\S", rule, re.M), name


def test_rule_metric_names_exist_in_the_real_exposition() -> None:
    exposed = exposed_names(full_exposition())
    used = {
        name
        for rule in alert_rules().values()
        for name in re.findall(r"\berpwatch_[a-z_]+", expression(rule))
    }
    assert used, "the rules use erpwatch's metrics"
    assert used - exposed == set()


def test_rule_state_values_are_real_states() -> None:
    states = {str(state) for state in TargetState}
    used = set()
    for rule in alert_rules().values():
        for match in re.findall(r'\bstate=~?"([^"]+)"', expression(rule)):
            used.update(match.split("|"))
    assert used and used <= states


def test_exposition_passes_promtool_lint() -> None:
    done = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=full_exposition(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "_created" not in full_exposition()


# --- the configurations -------------------------------------------------------------------


def test_prometheus_config(tmp_path: Path) -> None:
    """Checked as installed: next to its rules and the bearer token file it names."""
    for source in (PROMETHEUS_CONFIG, RULES):
        shutil.copy(source, tmp_path / source.name)
    token = re.search(r"credentials_file: *(\S+)", PROMETHEUS_CONFIG.read_text())
    assert token is not None and not token.group(1).startswith("/")
    (tmp_path / token.group(1)).write_text("a-status-token\n")
    done = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in done.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_prometheus_scrapes_several_erpwatch_hosts() -> None:
    text = PROMETHEUS_CONFIG.read_text()
    assert re.search(r"job_name: *erpwatch\b", text)
    assert len(re.findall(r"^\s*- [\w.-]+:8765\s*$", text, re.M)) >= 2
    assert re.search(r"^\s*- erpwatch-rules\.yml", text, re.M)


def test_alertmanager_config() -> None:
    done = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=ErpwatchDown", "severity=critical", "instance=erp1:8765"], "erp-ops-pager"),
        (["alertname=ErpwatchDeadLetters", "severity=warning"], "erp-ops-mail"),
        (["alertname=SomethingElse", "severity=critical"], "ops-mail"),
    ],
)
def test_alertmanager_routes(labels: list[str], receiver: str) -> None:
    run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}",
        *labels,
    )


def test_alertmanager_names_only_existing_alerts() -> None:
    alerts = set(alert_rules())
    text = ALERTMANAGER_CONFIG.read_text()
    named = set(re.findall(r'alertname="(\w+)"', text))
    patterns = re.findall(r'alertname=~"([^"]+)"', text)
    assert named and named <= alerts
    for pattern in patterns:
        assert any(re.fullmatch(pattern, alert) for alert in alerts), pattern
