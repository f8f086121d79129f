"""The drill, small: separate sidecar processes, live traffic, one fault per case."""

from __future__ import annotations

from pathlib import Path

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
        "malformed-root": "rotation_input_invalid",
        "rollback": "rollback: active-root -> pki_root_a",
        "third-root": "rotation_deferred",
    }
    assert expectations[fault] in report, report
