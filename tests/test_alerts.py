"""The alert rules operators deploy: valid (promtool check rules), and each fires when it
should and not before (promtool test rules, deploy/prometheus/alerts.test.yml). promtool comes
with Debian's prometheus package, which scripts/test installs where it may."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool here (Debian's prometheus package; scripts/test installs it)")
    return subprocess.run(
        [promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_are_valid() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_each_alert_fires_when_it_should_and_not_before() -> None:
    result = _promtool("test", "rules", "alerts.test.yml")
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules: dict[str, Any] = yaml.safe_load((RULES / "alerts.yml").read_text())
    tests: dict[str, Any] = yaml.safe_load((RULES / "alerts.test.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested


def test_the_prometheus_rule_for_kubernetes_carries_the_same_groups() -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    (crd,) = list(
        yaml.safe_load_all((ROOT / "deploy/kustomize/monitoring/prometheus-rule.yaml").read_text())
    )
    assert crd["kind"] == "PrometheusRule" and crd["spec"] == rules
