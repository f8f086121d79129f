"""The rotation, coordinated through Consul, with real auth managers against Vault."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import layout
from sidecar.rotation import phase_material
from sidecar.volume import Volume, read_generation
from tests.consul_setup import ConsulTarget
from tests.doubles.consul import ConsulDouble
from tests.doubles.vault import VaultDouble
from tests.manager_kit import metric
from tests.rotation_kit import Cluster, acknowledge_generation, target_for
from tests.vault_setup import VaultTarget


@pytest.fixture
def cluster(consul: ConsulTarget, vault: VaultTarget, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(consul, vault, tmp_path)
    yield c
    c.stop()


def phases_seen(cluster: Cluster, stop: threading.Event, seen: list[tuple[str, int]]) -> None:
    while not stop.wait(0.02):
        record = cluster.record()
        if record and (not seen or seen[-1] != (record.to_root, record.phase)):
            seen.append((record.to_root, record.phase))


def test_rotation_a_to_b_through_three_phases(cluster: Cluster) -> None:
    cluster.set_root("pki_root_a")
    for name in ("broker-1", "broker-2"):
        cluster.start(name)
    cluster.start("client-1", role="client")
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
    seen: list[tuple[str, int]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=phases_seen, args=(cluster, stop, seen))
    watcher.start()
    cluster.set_root("pki_root_b")
    cluster.wait_until(lambda: cluster.converged("pki_root_b"), "stable on B")
    stop.set()
    watcher.join()
    assert [p for root, p in seen if root == "pki_root_b"] == [1, 2, 3]
    for node in cluster.nodes.values():
        events = [e["event"] for e in node.log.events]
        assert "certificate_issued" in events
        assert not node.log.named("renewal_failed")
    record = cluster.record()
    assert record.from_root == "pki_root_a" and record.completed_at is not None
    # every participant reported what it serves
    nodes = cluster.store.read()
    for name in cluster.nodes:
        published = json.loads(nodes.value(f"nodes/{name}") or b"{}")
        assert published["signer"] == "pki_root_b"
        assert (published["rotation_id"], published["phase"]) == (record.id, 3)


def test_barrier_waits_for_unacknowledged_participant(cluster: Cluster) -> None:
    cluster.set_root("pki_root_a")
    cluster.start("broker-1")
    lagging = cluster.start("broker-2", monitor=False)
    cluster.wait_until(lambda: lagging.served() is not None, "material written")
    record = cluster.record()
    assert record is not None and not record.stable, "no acknowledgement: not completed"
    metrics = cluster.nodes["broker-1"].manager.metrics
    cluster.wait_until(lambda: metric(metrics, "pki_rotation_waiting_participants") == 1,
                       "the barrier to wait on broker-2")
    # Nothing wakes a participant stuck at the barrier: the gauge must still grow.
    before = metric(metrics, "pki_rotation_phase_seconds")
    time.sleep(0.3)
    assert metric(metrics, "pki_rotation_phase_seconds") >= before + 0.25
    lagging.monitor_enabled.set()
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable once acknowledged")


def installed_phases(volume: Path) -> list[tuple[str | None, int | None]]:
    """(rotation id, phase) of every generation on the volume, oldest first."""
    return [(m.rotation_id, m.phase) for m in (
        read_generation(layout.generation_dir(volume, n)) for n in Volume(volume).generations())]


def test_phases_installed_never_go_down_while_the_monitor_lags(cluster: Cluster) -> None:
    """The monitor acknowledges late (here: an older generation after a newer one was
    installed). The participant decides from what is installed, so within one rotation it
    never installs a lower phase after a higher one, which the barrier may already count.
    Found by the rollback drill: deciding from the acknowledged generation did exactly that."""
    node = cluster.start("broker-1", run=False, keep_generations=20)

    def step(ack: int | None = None) -> None:
        if ack is not None:
            acknowledge_generation(node.volume, ack)
        node.manager.step(node.source)
        phases: dict[str, int] = {}
        for rotation_id, phase in installed_phases(node.volume):
            if rotation_id is not None and phase is not None:
                assert phase >= phases.get(rotation_id, phase), installed_phases(node.volume)
                phases[rotation_id] = phase

    cluster.set_root("pki_root_a")
    step()
    step(ack=1)
    cluster.set_root("pki_root_b")
    step(ack=1)  # rotation A->B starts: phase 1 material (generation 2)
    step(ack=2)  # all serve phase 1: phase 2, signed by B (generation 3), not acknowledged yet
    assert node.served() == (("pki_root_a", "pki_root_b"), "pki_root_b")
    cluster.set_root("pki_root_a")  # roll back while the monitor still serves generation 2
    step()
    step(ack=3)  # the monitor catches up with generation 3 only
    for _ in range(12):
        current = Volume(node.volume).read_current()
        assert current is not None
        step(ack=current[1].generation)
        if cluster.converged("pki_root_a"):
            break
    assert cluster.converged("pki_root_a"), installed_phases(node.volume)


def test_rollback_mid_rotation_returns_to_a(cluster: Cluster) -> None:
    cluster.set_root("pki_root_a")
    for name in ("broker-1", "broker-2"):
        cluster.start(name, min_dwell=1.0)
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A", timeout=90)
    cluster.set_root("pki_root_b")
    cluster.wait_until(lambda: (r := cluster.record()) is not None and r.to_root == "pki_root_b"
                       and r.phase == 2, "phase 2 of A->B")
    cluster.set_root("pki_root_a")
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "back on A", timeout=90)
    events = [e["event"] for n in cluster.nodes.values() for e in n.log.events]
    assert "rotation_rolled_back" in events


def test_third_root_is_deferred_until_stable(cluster: Cluster, vault: VaultTarget) -> None:
    if vault.double is not None:
        vault.double.add_mount("pki_root_c")
    else:
        from tests.vault_setup import prepare

        prepare(vault.client(), mounts=("pki_root_c",), role=vault.role)
    cluster.set_root("pki_root_a")
    cluster.start("broker-1", min_dwell=1.0)
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
    cluster.set_root("pki_root_b")
    cluster.wait_until(lambda: (r := cluster.record()) is not None and r.to_root == "pki_root_b"
                       and r.phase == 1, "A->B started")
    cluster.set_root("pki_root_c")
    cluster.wait_until(lambda: cluster.converged("pki_root_c"), "stable on C", timeout=90)
    log = cluster.nodes["broker-1"].log
    deferred = log.named("rotation_deferred")
    assert deferred and deferred[0]["requested"] == "pki_root_c"
    assert len(deferred) == 1, "the deferral is logged once, not on every pass"
    started = [e["to"] for e in log.named("rotation_started")]
    assert started[-1] == "pki_root_c"


@pytest.mark.parametrize("bad", [b"", b"   ", b"pki root b", b"no_such_mount", b"\xff\xfe"])
def test_bad_active_root_rotates_nothing(cluster: Cluster, bad: bytes) -> None:
    cluster.set_root("pki_root_a")
    node = cluster.start("broker-1")
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
    generation = node.manager.volume.generations()[-1]
    cluster.store.put("active-root", bad)
    metrics = node.manager.metrics
    cluster.wait_until(lambda: metric(metrics, "pki_rotation_input_errors_total",
                                      key="active-root") >= 1, "the bad value to be counted")
    errors = node.log.named("rotation_input_invalid")
    assert errors and errors[0]["key"] == "active-root"
    assert cluster.record().to_root == "pki_root_a"
    assert node.manager.volume.generations()[-1] == generation
    cluster.set_root("pki_root_b")
    cluster.wait_until(lambda: cluster.converged("pki_root_b"), "a valid value then works")


def test_malformed_rotation_record_keeps_material(cluster: Cluster) -> None:
    cluster.set_root("pki_root_a")
    node = cluster.start("broker-1")
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
    served = node.served()
    cluster.store.put("rotation", b'{"id": "x", "phase": 7}')
    cluster.set_root("pki_root_b")
    metrics = node.manager.metrics
    cluster.wait_until(lambda: metric(metrics, "pki_rotation_input_errors_total",
                                      key="rotation") >= 1, "the bad record to be counted")
    assert node.served() == served
    assert node.log.named("renewal_failed")[-1]["kind"] == "rotation_input"


def test_phase_material_is_what_the_design_says() -> None:
    assert phase_material("A", "B", 1).trust == {"A", "B"}
    assert phase_material("A", "B", 1).signer == "A"
    assert phase_material("A", "B", 2).signer == "B"
    assert phase_material("A", "B", 3).trust == {"B"}


def test_session_loss_reregisters(consul_double: ConsulDouble, vault: VaultTarget,
                                  tmp_path: Path) -> None:
    cluster = Cluster(target_for(consul_double), vault, tmp_path)
    try:
        cluster.set_root("pki_root_a")
        node = cluster.start("broker-1")
        cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
        old = node.source.registration.session_id
        assert old is not None
        consul_double.expire_session(old)
        cluster.wait_until(lambda: (s := node.source.registration.session_id) is not None
                           and s != old and cluster.store.read().value("nodes/broker-1")
                           is not None, "re-registration under a new session", timeout=30)
        assert node.log.named("consul_session_lost")
    finally:
        cluster.stop()


def test_consul_data_loss_mid_rotation_is_rebuilt(consul_double: ConsulDouble,
                                                  vault: VaultTarget, tmp_path: Path) -> None:
    cluster = Cluster(target_for(consul_double), vault, tmp_path,
                      min_dwell=1.0, session_ttl=10)
    try:
        cluster.set_root("pki_root_a")
        for name in ("broker-1", "broker-2"):
            cluster.start(name)
        cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
        cluster.set_root("pki_root_b")
        cluster.wait_until(lambda: (r := cluster.record()) is not None
                           and r.to_root == "pki_root_b" and r.phase == 2, "phase 2")
        consul_double.restart(keep_data=False)  # dev agent restarted: everything is gone
        cluster.set_root("pki_root_b")  # the operator puts the key back
        cluster.wait_until(lambda: cluster.converged("pki_root_b"), "stable on B", timeout=90)
        events = [e["event"] for n in cluster.nodes.values() for e in n.log.events]
        assert "rotation_bootstrapped" in events
    finally:
        cluster.stop()


def test_vault_outage_during_a_phase_resumes(consul: ConsulTarget, vault_double: VaultDouble,
                                             tmp_path: Path) -> None:
    target = VaultTarget(url=vault_double.url, token=vault_double.root_token,
                         mounts=("pki_root_a", "pki_root_b"), role="kafka",
                         double=vault_double)
    cluster = Cluster(consul, target, tmp_path)
    try:
        cluster.set_root("pki_root_a")
        node = cluster.start("broker-1")
        cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
        vault_double.fail_next(1000, 503, ["Vault is sealed"])
        cluster.set_root("pki_root_b")
        cluster.wait_until(lambda: len(node.log.named("renewal_failed")) >= 2, "failures")
        assert node.served() == (("pki_root_a",), "pki_root_a"), "old material kept"
        vault_double.reset_faults()
        cluster.wait_until(lambda: cluster.converged("pki_root_b"), "resumed to B")
    finally:
        cluster.stop()
