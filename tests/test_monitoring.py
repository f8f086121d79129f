"""The operations kit (deploy/monitoring, docker/k8s/monitoring.yaml) checked by Prometheus's own
tooling: promtool checks the rules and runs their unit tests (tests/prometheus/rules_test.yaml),
the dashboard's queries are checked as PromQL by promtool too. promtool comes from Debian's
``prometheus`` package, which .ci/run installs: a missing promtool fails, it is never skipped.
The drill with a real Prometheus scraping real sidecars is in tests/test_drill.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prom import (
    ALERTS,
    DASHBOARD,
    RECORDING,
    ROOT,
    RULE_TESTS,
    ToolMissing,
    binary,
    dashboard_expressions,
    label_values_query,
    render_rules,
    seconds,
)

K8S_MONITORING = ROOT / "docker" / "k8s" / "monitoring.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
MKDOCS = ROOT / "mkdocs.yml"
SEVERITIES = {"warning", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        tool = binary("promtool")
    except ToolMissing as exc:
        pytest.fail(str(exc))
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False,
                          cwd=ROOT, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def site_url() -> str:
    """The docs site's address, as mkdocs.yml publishes it."""
    url = str(yaml.load(MKDOCS.read_text(), Loader=yaml.BaseLoader)["site_url"])
    return url if url.endswith("/") else url + "/"


def runbook_anchors() -> set[str]:
    """MkDocs' anchors of the runbook page's headings (its default toc slugify)."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", str(RECORDING), str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_is_not_a_formality(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n"
                      "        expr: sum by (cluster (up)\n")
    assert promtool("check", "rules", str(broken)).returncode != 0


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent (healthy or boundary)"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    anchors = runbook_anchors()
    runbook = f"{site_url()}runbook/#"
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url == f"{runbook}{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbook.md has no section {name} for the runbook_url"
        if "for" in rule:
            assert seconds(rule["for"]) > 0, name


def test_prometheus_rule_carries_the_same_groups() -> None:
    docs = [d for d in yaml.safe_load_all(K8S_MONITORING.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"PrometheusRule", "PodMonitor"}
    shipped = (yaml.safe_load(RECORDING.read_text())["groups"]
               + yaml.safe_load(ALERTS.read_text())["groups"])
    assert kinds["PrometheusRule"]["spec"]["groups"] == shipped
    endpoints = kinds["PodMonitor"]["spec"]["podMetricsEndpoints"]
    jobs = {e["port"]: next(r["replacement"] for r in e["relabelings"]
                            if r["targetLabel"] == "job") for e in endpoints}
    assert jobs == {"pki-metrics": "pki-auth-manager", "monitor-metrics": "tls-monitor"}
    for endpoint in endpoints:
        assert {r["targetLabel"] for r in endpoint["relabelings"]} >= {"job", "cluster"}
    pod = next(d for d in yaml.safe_load_all((ROOT / "docker/k8s/broker-pod.yaml").read_text())
               if d and d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for c in pod["containers"]
             for p in c.get("ports", [])}
    assert ports["pki-metrics"] == 9108 and ports["monitor-metrics"] == 9109


def test_dashboard_variables_and_panels() -> None:
    data = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["cluster"]["type"] == "query"
    titles = {p["title"] for p in data["panels"]}
    assert {"Rotation phase over time", "Participants per served phase", "Barrier keeper",
            "Time to expiry per participant", "Renewals and failures",
            "Reload to verified latency", "Vault errors", "Consul errors and watch"} <= titles
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'cluster="$cluster"' in target["expr"], (panel["title"], target["expr"])


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's variables filled in)."""
    rules = []
    for i, expr in enumerate(dashboard_expressions()):
        expr = label_values_query(expr).replace("$__rate_interval", "1m")
        expr = expr.replace("$cluster", "c1")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_drill_rendering_scales_every_duration(tmp_path: Path) -> None:
    """The drill's faster clock: every for: and range selector scaled, nothing else."""
    rendered = yaml.safe_load(render_rules(ALERTS, 1 / 30))
    original = yaml.safe_load(ALERTS.read_text())
    for before, after in zip(original["groups"][0]["rules"], rendered["groups"][0]["rules"],
                             strict=True):
        if "for" in before:
            assert seconds(after["for"]) == pytest.approx(seconds(before["for"]) / 30)
        windows = re.findall(r"\[(\w+)\]", before["expr"])
        assert [seconds(w) / 30 for w in windows] == pytest.approx(
            [seconds(w) for w in re.findall(r"\[(\w+)\]", after["expr"])])
        assert re.sub(r"\[\w+\]", "", before["expr"]) == re.sub(r"\[\w+\]", "", after["expr"])
        assert before["annotations"] == after["annotations"]
    path = tmp_path / "alerts.yaml"
    path.write_text(render_rules(ALERTS, 1 / 30))
    assert promtool("check", "rules", str(RECORDING), str(path)).returncode == 0
