"""The drill, small: separate sidecar processes, live traffic, one fault per case."""

from __future__ import annotations

import contextlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sidecar import layout
from sidecar.volume import Volume, read_generation
from tests.drill import FAULTS, RELOAD_FAILS_ALERTS, Result, run_drill
from tests.prom import TARGET_LABELS, used_everywhere


def check(result: Result) -> None:
    assert result.converged, result.report
    assert result.failed_handshakes == 0, result.report
    assert result.attempts > 0, "traffic ran during the drill"
    for p in result.participants:  # never a mixed or half-written generation on any volume
        for number in Volume(p.volume).generations():
            read_generation(layout.generation_dir(p.volume, number))
    check_stops(result)


#: The docs' target (docs/configuration.md, exit codes): both sidecars stop within 2 s of
#: SIGTERM, whatever they are doing (the drill's report prints the slowest stop); a test fails
#: only past 3x that, which a machine busy with a build beside it still meets (one stop took
#: 2.34 s on such a machine).
STOP_TARGET = 2.0
STOP_SECONDS = 3 * STOP_TARGET


def check_stops(result: Result) -> None:
    """Every sidecar, sent SIGTERM at teardown (all at once), exited by itself with code 0
    within STOP_SECONDS; only a process a fault killed -9 (and did not restart) is exempt."""
    kinds = {"pki-auth-manager", "tls-monitor"}
    assert len(result.stops) == len(kinds) * len(result.participants), result.report
    for stop in result.stops:
        if stop.outcome == "killed by a fault":
            continue
        assert stop.outcome == "exited" and stop.returncode == 0, (stop, result.report)
        assert stop.seconds is not None and stop.seconds < STOP_SECONDS, (stop, result.report)
    line = next(line for line in result.report.splitlines() if "slowest stop:" in line)
    assert all(kind in line for kind in kinds), result.report


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


def svg_texts(path: Path) -> list[str]:
    """Every text element of an SVG (parsing it as XML on the way)."""
    root = ET.parse(path).getroot()
    return ["".join(element.itertext())
            for element in root.iter("{http://www.w3.org/2000/svg}text")]


def check_picture(result: Result, fault: str) -> None:
    """timeline.svg in the kept directory: a row label per participant (and none twice),
    and the fault's marks, labelled with its name."""
    assert result.picture == result.base / "timeline.svg"
    texts = svg_texts(result.picture)
    for p in result.participants:
        assert texts.count(p.name) == 1, (p.name, texts)
    assert "rotation record" in texts
    assert any(t == fault or t.startswith(f"{fault}:") for t in texts), (fault, texts)


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
    # The WAN partition is between the two datacenters of a rotation domain; controller-restarts
    # waits for one renewal before the flip here (the command line waits for two).
    result = run_drill(brokers=2, clients=1, faults=[fault], keep=tmp_path, deadline=90,
                       datacenters=2 if fault == "wan-partition" else 1, renewals=1)
    check(result)
    check_picture(result, fault)
    report = result.report
    expectations = {
        "vault-outage": "renewal_failed unavailable",
        "broker-refuses": "reload_failed refused_by_kafka",
        "volume-full": "renewal_failed volume",
        "volume-read-only": "still current and intact",
        "malformed-root": "rotation_input_invalid",
        "rollback": "rollback: active-root -> pki_root_a",
        "third-root": "rotation_deferred",
        "client-reload-fails": "reload_failed action_failed",
        "impersonation": "impersonation=refused",
        "controller-restarts": "max_down_at_once=1",
        "wan-partition": "rotation waited during the WAN partition: phase 1",
    }
    # The kill and consul-restart faults show in what the sidecars logged (below), not in the
    # drill's own notes of what it did.
    assert expectations.get(fault, "") in report, report
    if fault == "controller-restarts":
        # A renewal, then A->B->A: each broker restarted once, in phase 1 of A->B (B->A
        # adds no root its Raft client lacks), never two at once; its Raft client reached
        # every voter all along.
        assert result.controller_restarts == (0, 2, 1), report
        assert "1 renewal on every broker" in report, report
        found = re.search(r"Raft handshakes: attempted=(\d+) failed=0", report)
        assert found is not None and int(found[1]) > 0, report
    if fault == "kill-auth-manager":
        for process in killed(result):
            # The registration outlives kill -9: the new process resumes the same session.
            first, *_, last = lives(result, process)
            before = {e["session"] for e in first
                      if e["event"] in ("consul_session_created", "consul_session_resumed")}
            after = {e["session"] for e in events_named(last, "consul_session_resumed")}
            assert after and after <= before, (process, before, after)
    elif fault == "wan-partition":
        # Traffic ran inside each datacenter and across the two (while the link was up).
        found = re.search(r"inside a datacenter: (\d+), across two: (\d+)", report)
        assert found is not None and int(found[1]) > 0 and int(found[2]) > 0, report
    elif fault == "consul-restart":
        for p in result.participants:
            # Consul lost its data: each auth manager saw its session gone and registered anew.
            events = [e["event"] for e in logged(result, f"{p.name}-auth")]
            assert "consul_session_lost" in events, (p.name, report)
            after = events[events.index("consul_session_lost"):]
            assert "consul_session_created" in after, (p.name, report)
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


def test_drill_with_prometheus_pages_on_a_held_barrier(tmp_path: Path) -> None:
    """A real Prometheus scrapes every sidecar (1 s) with the shipped rules (durations x 1/30).
    A client app that cannot reload holds the barrier: the alerts for it fire through the
    HTTP API, naming that participant; no other alert fires. Every metric, label and exact
    label value the rules and the dashboard use is in what Prometheus scraped."""
    result = run_drill(brokers=2, clients=1, faults=["client-reload-fails"], keep=tmp_path,
                       deadline=90, prometheus=True)
    check(result)
    report = result.report
    firing = {(a.name, a.labels.get("participant"), a.labels.get("job")): a
              for a in result.alerts if a.firing_at is not None}
    assert ("PkiRotationPhaseStuck", None, "pki-auth-manager") in {
        (name, None, job) for name, _, job in firing}, report
    stuck = next(a for (name, _, _), a in firing.items() if name == "PkiRotationPhaseStuck")
    assert stuck.labels["cluster"] == "drill"
    victim = next(p for p in result.participants if p.role == "client")
    assert victim.auth_listen in stuck.description, stuck.description  # names who holds it
    assert ("PkiRotationParticipantBehind", victim.name, "pki-auth-manager") in firing, report
    assert ("TlsMonitorReloadFailing", victim.name, "tls-monitor") in firing, report
    assert set(RELOAD_FAILS_ALERTS) <= {name for name, _, _ in firing}
    # Nothing else fires; the victim's monitor may also say it serves other material.
    allowed = {*RELOAD_FAILS_ALERTS, "TlsMonitorServedMismatch"}
    unexpected = [key for key in firing if key[0] not in allowed
                  or (key[0] != "PkiRotationPhaseStuck" and key[1] != victim.name)]
    assert not unexpected, report
    assert "== alerts (Prometheus" in report and "firing +" in report

    exported: dict[str, dict[str, set[str]]] = {}
    for series in result.exported:
        labels = exported.setdefault(series["__name__"], {})
        for label, value in series.items():
            labels.setdefault(label, set()).add(value)
    used = used_everywhere()
    assert used.metrics - set(exported) == set(), "used but never scraped"
    scraped_labels = {label for labels in exported.values() for label in labels}
    assert used.labels - scraped_labels == set(), "labels used but never scraped"
    assert scraped_labels >= TARGET_LABELS
    for metric, label, value in used.values:
        assert value in exported[metric].get(label, set()), (metric, label, value)


def test_drill_rotates_between_issuers_of_one_mount(tmp_path: Path) -> None:
    """--roots issuers: pki:root-a -> pki:root-b -> back, within one Vault PKI mount, with a
    rollback mid-way; the state machine treats the identifiers as opaque names."""
    result = run_drill(brokers=2, clients=1, faults=["rollback"], keep=tmp_path, deadline=90,
                       roots="issuers")
    check(result)
    assert "pki:root-b" in result.report


def test_drill_fails_when_a_voter_is_stranded(tmp_path: Path) -> None:
    """The monitors claim a Kafka whose Raft client reloads (raft_restart=never) while the
    brokers play one that does not (KAFKA-20025): once a peer presents root B, a Raft client
    that started on A alone cannot reach it, and the drill counts that as failed handshakes."""
    result = run_drill(brokers=2, clients=1, faults=["controller-restarts"], deadline=90,
                       raft_restart="never", renewals=0)
    assert result.controller_restarts is not None and result.controller_restarts[:2] == (0, 0)
    stranded = [f for f in result.failures if "(Raft client)" in f[1]]
    assert stranded and result.failed_handshakes >= len(stranded), result.report
    assert all("CERTIFICATE_VERIFY_FAILED" in f[3] for f in stranded), stranded[:3]
