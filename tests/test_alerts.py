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

from devstack.rig import RedisDatabases

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
    assert "SUCCESS: 11 rules found" in result.stdout


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


def _exposed_metric_names() -> set[str]:
    """Every metric name the code defines (archiver_*), plus the process collector's."""
    import re

    names: set[str] = set()
    for package in ("archiver", "receiver", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r'"(archiver_[a-z_]+)"', path.read_text()))
    return names | {"process_resident_memory_bytes"}


def test_the_grafana_dashboard_and_the_rules_name_only_metrics_that_exist() -> None:
    import json
    import re

    dashboard = json.loads((ROOT / "deploy/grafana/titan-archiver.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    exposed = _exposed_metric_names()
    for expr in exprs:
        for name in re.findall(r"\b((?:archiver|process)_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in exposed or name in exposed, f"{name} in {expr!r} is not exported"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_a_real_prometheus_scraping_a_receiver_and_a_worker_fires_the_backlog_alert(
    tmp_path: Path, redis_dbs: RedisDatabases, s3_endpoint: str
) -> None:
    """Prometheus (Debian's) scrapes a live receiver and worker with the shipped rules, their
    thresholds shortened (3 days -> 2 s, 15 minutes -> 3 s): a photo nobody archives (the
    only worker serves the large queue) makes ArchiverBacklogAging go pending then firing,
    while ArchiverNoLiveWorker stays quiet because a worker is up."""
    import json

    import httpx

    from devstack import processes, services
    from devstack.fixtures import add_tenant, process_env
    from tests.conftest import migrated_database
    from titan_simulator.sender import Simulator, post_signed

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus here (Debian's prometheus package; scripts/test installs it)")
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["expr"] = rule["expr"].replace("3 * 86400", "2")
        if rule["alert"] in {"ArchiverBacklogAging", "ArchiverNoLiveWorker"}:
            rule["for"] = "3s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    worker_port = processes.free_port()
    broker = redis_dbs.take()
    with migrated_database("sqlite", tmp_path, None) as database_url:
        env = process_env(database_url, broker)
        receiver = services.start_receiver("prom-receiver", env)
        sim = services.start_simulator("prom-sim")
        worker = processes.start_process(
            "prom-worker",
            processes.worker_argv(1),
            env
            | {
                "ARCHIVER_WORKER_QUEUES": "archive-large",
                "ARCHIVER_WORKER_METRICS_PORT": str(worker_port),
                "ARCHIVER_WORKER_METRICS_HOST": "127.0.0.1",
            },
        )
        prom_port = processes.free_port()
        receiver_target = receiver.url.removeprefix("http://")
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(tmp_path / "rules.yml")],
                    "scrape_configs": [
                        {"job_name": "web", "static_configs": [{"targets": [receiver_target]}]},
                        {
                            "job_name": "worker",
                            "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                        },
                    ],
                }
            )
        )
        prometheus = processes.start_process(
            "prometheus",
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
        )
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        try:
            client = Simulator(sim.url)
            tenant = add_tenant(database_url, sim=client, s3_endpoint=s3_endpoint, name="prom")
            item = client.make_media(account=tenant.name, message_type="image", size=2000)
            client.close()
            with httpx.Client(timeout=10) as http:
                sent = post_signed(
                    http, f"{receiver.url}/webhooks/{tenant.name}", tenant.hmac_key, item.envelope
                )
            assert sent.status_code == 202

            def alerts() -> dict[str, str]:
                try:
                    found = httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
                except httpx.HTTPError:
                    return {}
                return {a["labels"]["alertname"]: a["state"] for a in found}

            def targets_up() -> bool:
                try:
                    active = httpx.get(f"{api}/targets", timeout=5).json()["data"]
                except httpx.HTTPError:
                    return False
                return {t["health"] for t in active["activeTargets"]} == {"up"}

            processes.wait_until(targets_up, timeout=60, interval=0.5, what="both targets up")
            # Firing only after the rule's `for` held it pending for 3 s.
            processes.wait_until(
                lambda: alerts().get("ArchiverBacklogAging") == "firing",
                timeout=60,
                interval=0.3,
                what="the backlog alert firing",
            )
            assert "ArchiverNoLiveWorker" not in alerts()  # a worker is up and scraped
            print(json.dumps(alerts()))
        finally:
            for proc in (prometheus, worker, sim.process, receiver.process):
                proc.stop()
