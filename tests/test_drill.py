"""The drill, small: separate sidecar processes, live traffic, one fault per case."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar import layout
from sidecar.volume import Volume, read_generation
from tests.drill import FAULTS, Result, run_drill


def check(result: Result) -> None:
    assert result.converged, result.report
    assert result.failed_handshakes == 0, result.report
    assert result.attempts > 0, "traffic ran during the drill"
    for p in result.participants:  # never a mixed or half-written generation on any volume
        for number in Volume(p.volume).generations():
            read_generation(layout.generation_dir(p.volume, number))


def logged(result: Result, process: str) -> list[dict[str, Any]]:
    """The JSON events a sidecar process (``<participant>-auth`` or ``-monitor``) logged."""
    events = []
    for line in (result.base / f"{process}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):  # a line cut short by kill -9
                events.append(json.loads(line))
    return events


def lives(result: Result, process: str) -> list[list[dict[str, Any]]]:
    """A killed process's events, split at each start; asserts it was started again."""
    split: list[list[dict[str, Any]]] = []
    for event in logged(result, process):
        if event["event"] == "started" or not split:
            split.append([])
        split[-1].append(event)
    assert len(split) >= 2, f"{process} did not start again after kill -9"
    return split


def events_named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == name]


def killed(result: Result) -> set[str]:
    processes = {line.split("kill -9 ", 1)[1] for line in result.report.splitlines()
                 if "kill -9 " in line}
    assert processes, result.report
    return processes


def test_drill_rotates_a_to_b_and_back_under_traffic(tmp_path: Path) -> None:
    result = run_drill(brokers=2, clients=1, faults=[], keep=tmp_path, deadline=90)
    check(result)
    phases = [(r.to_root, r.phase, r.stable) for _, r in result.timeline]
    assert ("pki_root_b", 1, False) in phases and ("pki_root_b", 3, True) in phases
    assert phases[-1] == ("pki_root_a", 3, True)
    assert "failed=0" in result.report


@pytest.mark.parametrize("fault", FAULTS)
def test_drill_survives_fault(tmp_path: Path, fault: str) -> None:
    result = run_drill(brokers=2, clients=1, faults=[fault], keep=tmp_path, deadline=90)
    check(result)
    report = result.report
    expectations = {
        "kill-auth-manager": "kill -9",
        "kill-monitor": "kill -9",
        "vault-outage": "renewal_failed unavailable",
        "consul-restart": "Consul restarted",
        "broker-refuses": "reload_failed refused_by_kafka",
        "volume-full": "renewal_failed volume",
        "volume-read-only": "still current and intact",
        "malformed-root": "rotation_input_invalid",
        "rollback": "rollback: active-root -> pki_root_a",
        "third-root": "rotation_deferred",
    }
    assert expectations[fault] in report, report
    if fault == "kill-auth-manager":
        for process in killed(result):
            # The registration outlives kill -9: the new process resumes the same session.
            first, *_, last = lives(result, process)
            before = {e["session"] for e in first
                      if e["event"] in ("consul_session_created", "consul_session_resumed")}
            after = {e["session"] for e in events_named(last, "consul_session_resumed")}
            assert after and after <= before, (process, before, after)
    elif fault == "kill-monitor":
        for process in killed(result):
            # After its restart it verified what the broker or app serves.
            assert events_named(lives(result, process)[-1], "reload_verified"), process
    elif fault == "volume-read-only":
        victim = "kafka-2"
        failures = [event for event in events_named(logged(result, f"{victim}-auth"),
                                                    "renewal_failed")
                    if event.get("kind") == "volume"]
        assert any("permission denied" in event["error"] or "read-only" in event["error"]
                   for event in failures), report
        assert all(event.get("kept_generation") for event in failures), report
        assert f"{victim}: auth manager logged renewal_failed: cannot write generation" \
            in report, report
