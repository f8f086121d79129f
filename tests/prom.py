"""Real Prometheus tooling for the tests and the drill: promtool, a Prometheus server on
loopback with the shipped rules, and what the rules and the dashboard use.

The binaries come from Debian's ``prometheus`` package (``.ci/run`` installs it). A missing
one is an error, never a skip.

Shorter durations for the drill: ``render_rules(path, scale)`` rewrites every duration literal
of a rule file (each ``for:``, each range selector ``[15m]``) multiplied by ``scale``, so
``scale=1/30`` turns ``for: 10m`` into ``for: 20s``. The rules contain no other time constant
(margins are ``for:`` durations; lifetimes and dwell come from the sidecars' own metrics), so
the rendered rules say the same thing on a faster clock.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
RECORDING = MONITORING / "recording.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULE_TESTS = ROOT / "tests" / "prometheus" / "rules_test.yaml"
JOBS = ("pki-auth-manager", "tls-monitor")
#: Labels the scrape configuration attaches (target labels), not the sidecars.
TARGET_LABELS = {"cluster", "instance", "job", "participant"}


class ToolMissing(RuntimeError):
    pass


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} is not installed: apt-get install prometheus (Debian's "
                          "package has prometheus and promtool; .ci/run installs it)")
    return found


# --------------------------------------------------------------------------- durations

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def seconds(text: str) -> float:
    total = sum(int(n) * UNITS[u] for n, u in DURATION.findall(text))
    assert DURATION.sub("", text) == "", f"not a Prometheus duration: {text!r}"
    return total


def duration(value: float) -> str:
    millis = max(1, round(value * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def render_rules(path: Path, scale: float) -> str:
    """The rule file with every ``for:`` and range-selector duration times ``scale``."""
    data = yaml.safe_load(path.read_text())

    def scaled(match: re.Match[str]) -> str:
        return f"[{duration(seconds(match.group(1)) * scale)}]"

    for group in data["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[([0-9a-z]+)\]", scaled, rule["expr"])
            if "for" in rule:
                rule["for"] = duration(seconds(rule["for"]) * scale)
    return yaml.safe_dump(data, sort_keys=False, width=1000)


# --------------------------------------------------------------------------- what is used

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan"}
AGGREGATING = ("by", "without", "on", "ignoring", "group_left", "group_right")


@dataclass
class Used:
    """Metric names, label names and exact label values an expression refers to."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    values: set[tuple[str, str, str]] = field(default_factory=set)  # (metric, label, value)

    def update(self, other: Used) -> None:
        self.metrics |= other.metrics
        self.labels |= other.labels
        self.values |= other.values


def used_in(expr: str) -> Used:
    """Parse what a PromQL expression refers to (enough PromQL for the shipped files)."""
    used = Used()
    text = re.sub(r"\$\{?\w+\}?", "x", expr)  # Grafana variables
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    grouping = r"\b(?:" + "|".join(AGGREGATING) + r")\s*\(([^)]*)\)"
    for words in re.findall(grouping, text):
        used.labels |= {w.strip() for w in words.split(",") if w.strip()}
    text = re.sub(grouping, " ", text)
    for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", text):
        for label, op, value in re.findall(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"", matchers):
            used.labels.add(label)
            if op == "=" and name and label not in TARGET_LABELS:
                used.values.add((name, label, value))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\"[^\"]*\"", " ", text)
    for token, call in re.findall(r"([a-zA-Z_:][\w:]*)\s*(\()?", text):
        if call or token.lower() in KEYWORDS or re.fullmatch(r"\d.*", token):
            continue
        used.metrics.add(token)
    return used


def rule_expressions() -> Iterable[str]:
    for path in (RECORDING, ALERTS):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield rule["expr"]


def dashboard_expressions() -> Iterable[str]:
    data = json.loads(DASHBOARD.read_text())
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in data["templating"]["list"]:
        if variable.get("type") == "query":
            query = variable["query"]
            yield query["query"] if isinstance(query, dict) else query


def recorded_names() -> set[str]:
    return {rule["record"] for group in yaml.safe_load(RECORDING.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}


def label_values_query(query: str) -> str:
    """The PromQL inside a Grafana ``label_values(expr, label)`` variable query."""
    match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
    return match.group(1) if match else query


def used_everywhere() -> Used:
    used = Used()
    for expr in [*rule_expressions(), *map(label_values_query, dashboard_expressions())]:
        used.update(used_in(expr))
    used.metrics -= recorded_names()
    used.metrics -= {"up"}  # Prometheus's own, per target
    return used


# --------------------------------------------------------------------------- the server


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class AlertSeen:
    name: str
    labels: dict[str, str]
    pending_at: float | None = None
    firing_at: float | None = None
    description: str = ""


class Prometheus:
    """``prometheus`` on 127.0.0.1 scraping the given targets every second with the shipped
    rules rendered at ``scale``, evaluated every second; polls its alerts API."""

    def __init__(self, base: Path, targets: dict[str, list[tuple[str, dict[str, str]]]],
                 port: int, scale: float) -> None:
        self.base, self.port = base, port
        self.url = f"http://127.0.0.1:{port}"
        base.mkdir(parents=True, exist_ok=True)
        rules = []
        for path in (RECORDING, ALERTS):
            rendered = base / path.name
            rendered.write_text(render_rules(path, scale))
            rules.append(str(rendered))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": rules,
            "scrape_configs": [
                {"job_name": job, "static_configs": [
                    {"targets": [address], "labels": labels} for address, labels in entries]}
                for job, entries in targets.items()]}
        self.config = base / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.alerts: dict[tuple[str, tuple[tuple[str, str], ...]], AlertSeen] = {}
        self.popen: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="prom-alerts")

    def start(self, timeout: float = 30.0) -> Prometheus:
        log = (self.base / "prometheus.log").open("wb")
        self.popen = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.config}",
             f"--storage.tsdb.path={self.base / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.popen.poll() is not None:
                raise RuntimeError(f"prometheus exited: see {self.base / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("prometheus did not become ready")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        answer = http_json(f"{self.url}/api/v1/{path}{query}")
        assert answer["status"] == "success", answer
        return answer["data"]

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            try:
                alerts = self.api("alerts")["alerts"]
            except OSError:
                continue
            now = time.time()
            for alert in alerts:
                labels = dict(alert["labels"])
                name = labels.pop("alertname")
                key = (name, tuple(sorted(labels.items())))
                seen = self.alerts.setdefault(key, AlertSeen(name, labels))
                if seen.pending_at is None:
                    seen.pending_at = now
                if alert["state"] == "firing" and seen.firing_at is None:
                    seen.firing_at = now
                    seen.description = alert["annotations"].get("description", "")

    def firing(self, name: str) -> list[AlertSeen]:
        return [a for a in self.alerts.values() if a.name == name and a.firing_at is not None]

    def series(self, match: str, start: float) -> list[dict[str, str]]:
        """Every series matching ``match`` since ``start`` (unix time)."""
        data: list[dict[str, str]] = self.api("series", **{"match[]": match,
                                                           "start": f"{start:.3f}"})
        return data
