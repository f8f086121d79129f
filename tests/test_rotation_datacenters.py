"""One rotation over two datacenters of a WAN-federated Consul (two federated doubles).

Every participant talks to its own datacenter's agent only; the keepers talk across the WAN
(sidecar.domain). Double only: the link between the datacenters is cut and restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import operator_cli
from sidecar.consul_store import ConsulStore
from sidecar.domain import SUMMARY, parse_summary
from sidecar.rotation import PhaseMaterial, compatible, parse_record
from tests.doubles.consul import ConsulDouble, partition
from tests.rotation_kit import Cluster, target_for
from tests.vault_setup import VaultTarget

DOMAIN = "dc1,dc2"


@dataclasses.dataclass
class Federation:
    dc1: ConsulDouble
    dc2: ConsulDouble
    one: Cluster
    two: Cluster

    def clusters(self) -> tuple[Cluster, Cluster]:
        return self.one, self.two

    def served(self) -> list[PhaseMaterial]:
        out = []
        for cluster in self.clusters():
            for node in cluster.nodes.values():
                found = node.served()
                if found is not None:
                    out.append(PhaseMaterial(frozenset(found[0]), found[1]))
        return out

    def converged(self, root: str) -> bool:
        return self.one.converged(root) and self.two.converged(root)


@pytest.fixture
def federation(vault: VaultTarget, tmp_path: Path) -> Iterator[Federation]:
    dc1, dc2 = ConsulDouble(datacenter="dc1"), ConsulDouble(datacenter="dc2")
    dc1.join_wan(dc2)
    target1 = target_for(dc1)
    target2 = dataclasses.replace(target_for(dc2), prefix=target1.prefix)
    one = Cluster(target1, vault, tmp_path / "dc1", datacenters=DOMAIN)
    two = Cluster(target2, vault, tmp_path / "dc2", datacenters=DOMAIN)
    try:
        yield Federation(dc1, dc2, one, two)
    finally:
        one.stop()
        two.stop()
        dc1.close()
        dc2.close()


@contextlib.contextmanager
def always_compatible(fed: Federation) -> Iterator[None]:
    """Every pair of participants, in either datacenter, trusts each other's signer, all along
    the block."""
    stop, problems = threading.Event(), []

    def check() -> None:
        while not stop.wait(0.02):
            for a, b in itertools.combinations(fed.served(), 2):
                if not compatible(a, b):
                    problems.append(f"{a} and {b}")

    checker = threading.Thread(target=check)
    checker.start()
    try:
        yield
    finally:
        stop.set()
        checker.join()
    assert not problems, problems[:3]


def start_everyone(fed: Federation) -> None:
    fed.one.set_root("pki_root_a")
    for cluster, dc in ((fed.one, "dc1"), (fed.two, "dc2")):
        cluster.start(f"broker-{dc}")
        cluster.start(f"client-{dc}", role="client")
    fed.one.wait_until(lambda: fed.converged("pki_root_a"), "both datacenters on A",
                       timeout=90)


def test_one_rotation_spans_both_datacenters(federation: Federation) -> None:
    fed = federation
    start_everyone(fed)
    # The second datacenter's record is the primary's, copied by its own keeper.
    assert fed.one.store.get("rotation").entry.value == fed.two.store.get("rotation").entry.value
    with always_compatible(fed):
        fed.one.set_root("pki_root_b")
        fed.one.wait_until(lambda: fed.converged("pki_root_b"), "both datacenters on B",
                           timeout=90)
    summary = parse_summary(fed.two.store.get(SUMMARY).entry.value)
    record = parse_record(fed.one.store.get("rotation").entry.value)
    assert summary is not None and summary.rotation_id == record.id and summary.holds
    # Only keepers cross the WAN: a few requests per phase, not one per participant.
    assert 0 < sum(fed.dc1.wan_forwarded.values()) + sum(fed.dc2.wan_forwarded.values()) < 60


def status(fed: Federation, capsys: pytest.CaptureFixture[str]) -> str:
    assert operator_cli.main(["--consul-addr", fed.dc1.url, "--consul-prefix",
                              fed.one.config_prefix, "--cluster", fed.one.cluster, "status",
                              "--datacenters", DOMAIN]) == 0
    return capsys.readouterr().out


def test_status_shows_each_datacenters_progress(federation: Federation,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fed = federation
    start_everyone(fed)
    record = fed.one.record()
    shown = status(fed, capsys)
    assert f"dc1 (primary): {record.id} phase 3 stable; 2/2 participants at the phase" in shown
    assert f"dc2: {record.id} phase 3 stable; 2/2 participants at the phase" in shown
    partition(fed.dc1, fed.dc2, cut=True)
    assert "dc2: UNREACHABLE" in status(fed, capsys)
    assert operator_cli.main(["--consul-addr", fed.dc1.url, "status", "--datacenters",
                              "dc1"]) == 2


def test_a_wan_partition_makes_the_rotation_wait_and_it_resumes(federation: Federation) -> None:
    fed = federation
    start_everyone(fed)
    with always_compatible(fed):
        fed.one.set_root("pki_root_b")
        fed.one.wait_until(lambda: (r := fed.one.record()) is not None and r.to_root ==
                           "pki_root_b" and r.phase >= 1, "the rotation to start")
        partition(fed.dc1, fed.dc2, cut=True)
        time.sleep(6)
        record = fed.one.record()
        assert record is not None and not record.stable and record.phase <= 2, record
        mirror = fed.two.record()
        assert mirror is not None and abs(mirror.phase - record.phase) <= 1
        # The primary's keeper waits for dc2; dc2's keeper sees the forward fail as Consul
        # reports it.
        assert any(event["datacenters"] == ["dc2"] for node in fed.one.nodes.values()
                   for event in node.log.named("rotation_waiting_for_datacenters"))
        assert any("Remote DC has no server currently reachable" in event["error"]
                   for node in fed.two.nodes.values()
                   for event in node.log.named("keeper_wan_failed"))
        partition(fed.dc1, fed.dc2, cut=False)
        fed.one.wait_until(lambda: fed.converged("pki_root_b"), "both datacenters on B",
                           timeout=120)


def test_a_datacenter_that_lost_its_data_resumes(federation: Federation) -> None:
    fed = federation
    start_everyone(fed)
    fed.one.set_root("pki_root_b")
    fed.one.wait_until(lambda: (r := fed.one.record()) is not None and r.to_root ==
                       "pki_root_b" and r.phase >= 1, "the rotation to start")
    fed.dc2.restart(keep_data=False)
    fed.one.wait_until(lambda: fed.converged("pki_root_b"), "both datacenters on B",
                       timeout=150)
    assert ConsulStore(fed.dc2.url, fed.one.store.prefix).get("rotation").entry is not None


def test_the_primary_rebuilds_a_lost_record_from_every_datacenter(
        federation: Federation) -> None:
    """The primary loses its data mid-rotation: its keeper rebuilds the record from its own
    participants' reports and the other datacenter's summary; everyone converges."""
    fed = federation
    start_everyone(fed)
    with always_compatible(fed):
        fed.one.set_root("pki_root_b")
        fed.one.wait_until(lambda: (r := fed.one.record()) is not None and r.to_root ==
                           "pki_root_b" and r.phase >= 2, "phase 2")
        fed.dc1.restart(keep_data=False)
        fed.one.set_root("pki_root_b")  # the operator restores the key Consul lost
        fed.one.wait_until(lambda: fed.converged("pki_root_b"), "both datacenters on B",
                           timeout=150)
    assert any(node.log.named("rotation_bootstrapped") for node in fed.one.nodes.values())
