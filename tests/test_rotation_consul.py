"""The rotation, coordinated through Consul, with real auth managers against Vault."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from sidecar import layout
from sidecar.consul_store import ConsulError, ConsulStore
from sidecar.coordinator import published_state
from sidecar.manifest import Manifest
from sidecar.operator_cli import status_data
from sidecar.renewal import Desired
from sidecar.rotation import NodeState, parse_node, phase_material
from sidecar.volume import Volume, read_generation
from tests.consul_setup import ConsulTarget
from tests.doubles.consul import ConsulDouble
from tests.manager_kit import metric
from tests.rotation_kit import Cluster, Node, target_for
from tests.vault_setup import FaultyVault, VaultTarget


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


def test_one_keeper_and_participants_not_woken_by_reports(cluster: Cluster) -> None:
    """Participants watch the record only: reports (every participant's, several each) wake
    nobody but the keeper, which is one of them and shows in ``kafka-pki status``."""
    cluster.set_root("pki_root_a")
    for i in range(4):
        cluster.start(f"broker-{i}", role="broker" if i < 3 else "client")
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
    cluster.wait_until(lambda: len(cluster.keepers()) == 1, "one keeper")
    (keeper,) = cluster.keepers()
    assert metric(keeper.manager.metrics, "pki_rotation_keeper") == 1
    others = [n for n in cluster.nodes.values() if n is not keeper]

    def wakeups(node: Node) -> float:
        return metric(node.manager.metrics, "pki_consul_watch_wakeups_total", key="rotation")

    before = {n.name: wakeups(n) for n in others}
    for round_ in range(5):  # reports change (as renewals do) without the record changing
        for node in cluster.nodes.values():
            cluster.store.put(f"nodes/{node.name}-extra-{round_}", b"{}")
    time.sleep(0.5)
    assert {n.name: wakeups(n) for n in others} == before
    data = status_data(cluster.store.read(), time.time())
    assert data["keeper"]["node_id"] == keeper.name


def test_keeper_crash_mid_rotation_is_replaced(consul_double: ConsulDouble, vault: VaultTarget,
                                               tmp_path: Path) -> None:
    """kill -9 of the keeper while the barrier waits: its session expires (TTL), another
    participant takes the lock and the rotation completes."""
    cluster = Cluster(target_for(consul_double), vault, tmp_path, session_ttl=10)
    try:
        cluster.set_root("pki_root_a")
        for i in range(3):
            cluster.start(f"broker-{i}")
        cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
        cluster.wait_until(lambda: len(cluster.keepers()) == 1, "one keeper")
        (keeper,) = cluster.keepers()
        lagging = next(n for n in cluster.nodes.values() if n is not keeper)
        lagging.monitor_enabled.clear()  # the barrier will wait on it in phase 1
        cluster.set_root("pki_root_b")
        cluster.wait_until(lambda: (r := cluster.record()) is not None
                           and r.to_root == "pki_root_b", "phase 1")
        keeper.crash()
        del cluster.nodes[keeper.name]
        crashed_at = time.monotonic()
        lagging.monitor_enabled.set()
        # Target: within 2x the session TTL (10 s), when Consul invalidates the session at the
        # latest; a test fails only past 3x that.
        target = 2 * 10
        cluster.wait_until(lambda: len(cluster.keepers()) == 1, "a new keeper",
                           timeout=3 * target + 5)
        handover = time.monotonic() - crashed_at
        assert handover < 3 * target, f"hand-over took {handover:.1f}s (target {target} s)"
        cluster.wait_until(lambda: cluster.converged("pki_root_b"), "stable on B", timeout=60)
        new_keeper = cluster.keepers()[0]
        assert new_keeper.log.named("keeper_acquired")
    finally:
        cluster.stop()


def test_barrier_waits_for_unacknowledged_participant(cluster: Cluster) -> None:
    cluster.set_root("pki_root_a")
    cluster.start("broker-1")
    lagging = cluster.start("broker-2", monitor=False)
    cluster.wait_until(lambda: lagging.served() is not None, "material written")
    record = cluster.record()
    assert record is not None and not record.stable, "no acknowledgement: not completed"
    cluster.wait_until(lambda: cluster.keeper_metric("pki_rotation_waiting_participants") == 1,
                       "the keeper's barrier to wait on broker-2")
    metrics = cluster.nodes["broker-1"].manager.metrics
    # Nothing wakes a participant stuck at the barrier: the gauge must still grow.
    before = metric(metrics, "pki_rotation_phase_seconds")
    time.sleep(0.3)
    assert metric(metrics, "pki_rotation_phase_seconds") >= before + 0.25
    # What the "participant behind" alert compares: broker-2 serves nothing verified yet.
    lagging_metrics = lagging.manager.metrics
    assert metric(lagging_metrics, "pki_rotation_served_phase") == -1
    assert metric(metrics, "pki_rotation_served_phase") == metric(metrics, "pki_rotation_phase")
    assert metric(metrics, "pki_rotation_min_dwell_seconds") == 0
    lagging.monitor_enabled.set()
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable once acknowledged")
    cluster.wait_until(lambda: metric(lagging_metrics, "pki_rotation_served_phase")
                       == metric(lagging_metrics, "pki_rotation_phase"), "served once acked")


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
        node.step(ack)
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


def _manifest(generation: int, signer: str, trust: tuple[str, ...],
              rotation_id: str) -> Manifest:
    return Manifest(generation=generation, created_at="", signer=signer, trust=trust,
                    serial=f"s{generation}", subject="", issuer=signer, sans=(), not_before="",
                    not_after="", key_type="", files={}, rotation_id=rotation_id)


def test_published_state_counts_the_record_acted_on_only_for_the_latest_generation() -> None:
    ab_a = _manifest(2, "A", ("A", "B"), "r1")
    ab_b = _manifest(3, "B", ("A", "B"), "r1")
    again = _manifest(4, "A", ("A", "B"), "r2")
    acted = Desired("A", ("A", "B"), "r2", 2)
    latest = published_state("n", "broker", again, again, acted, 1.0)
    assert (latest.rotation_id, latest.phase, latest.serial) == ("r2", 2, "s4")
    # The monitor serves generation 2, which is what r2 asked, but generation 3 (B->A@1)
    # waits and may be served next: the served generation's own id, no phase.
    behind = published_state("n", "broker", ab_a, again, acted, 1.0)
    assert (behind.signer, behind.rotation_id, behind.phase) == ("A", "r1", None)
    # Nothing served yet: the installed material, not counted (no rotation id, no serial).
    assert published_state("n", "broker", None, ab_b, acted, 1.0) == NodeState(
        "n", trust=frozenset({"A", "B"}), signer="B", updated_at=1.0)
    assert published_state("n", "broker", None, None, acted, 1.0) == NodeState(
        "n", updated_at=1.0)


def _stepper(cluster: Cluster, name: str) -> tuple[Node, Callable[..., None]]:
    node = cluster.start(name, run=False, keep_generations=20)
    return node, node.step


def _published(cluster: Cluster, name: str) -> NodeState:
    return parse_node(name, cluster.store.read().value(f"nodes/{name}"))


def _lose_consul_data(cluster: Cluster, double: ConsulDouble, node: Node, root: str) -> None:
    double.restart(keep_data=False)
    cluster.set_root(root)  # the operator puts the key back
    cluster.wait_until(lambda: node.source.registration.session_id is None,
                       "the lost session to be noticed", timeout=30)


def _settle(cluster: Cluster, node: Node, step: Callable[..., None], root: str) -> None:
    for _ in range(12):
        current = Volume(node.volume).read_current()
        assert current is not None
        step(ack=current[1].generation)
        if cluster.converged(root):
            return
    raise AssertionError(installed_phases(node.volume))


def test_a_generation_the_monitor_has_not_served_keeps_the_barrier_waiting(
        consul_double: ConsulDouble, vault: VaultTarget, tmp_path: Path) -> None:
    """Found by the rotation model once it told installed from served generations. Consul
    loses its data during A->B@2 while the monitor still serves phase 1 ({A,B} signed by A); the
    record rebuilt for A is B->A@2, which asks for that material again, after the installed
    phase 2 generation (B->A@1). Publishing the rebuilt record's id for the served generation
    let the barrier count phase 2 and move to @3 (trust {A}) while the monitor was about to
    serve the B-signed generation: a failed handshake with every participant at @3."""
    cluster = Cluster(target_for(consul_double), vault, tmp_path, session_ttl=10)
    try:
        node, step = _stepper(cluster, "broker-1")
        cluster.set_root("pki_root_a")
        step()
        step(ack=1)
        cluster.set_root("pki_root_b")
        step(ack=1)  # A->B@1: generation 2
        step(ack=2)  # A->B@2: generation 3, not served yet
        started = cluster.record()
        _lose_consul_data(cluster, consul_double, node, "pki_root_a")
        step()  # registers again, rebuilds B->A@2 from generation 2, installs generation 4
        record = cluster.record()
        assert (record.from_root, record.to_root, record.phase) == (
            "pki_root_b", "pki_root_a", 2)
        assert installed_phases(node.volume)[-2:] == [(started.id, 2), (record.id, 2)]
        published = _published(cluster, "broker-1")
        assert published.signer == "pki_root_a" and published.rotation_id == started.id
        step()
        assert cluster.record().phase == 2, "the monitor may serve generation 3 next"
        step(ack=3)
        assert cluster.record().phase == 2
        _settle(cluster, node, step, "pki_root_a")
    finally:
        cluster.stop()


def test_a_lost_record_is_rebuilt_around_material_not_served_yet(
        consul_double: ConsulDouble, vault: VaultTarget, tmp_path: Path) -> None:
    """Found by the rotation model. A participant's first generation is installed but not
    served yet when Consul loses its data and the operator asks for B. Publishing nothing, it
    let a record be rebuilt as B->B@3 from an empty registry, so that another participant would
    serve ({B}, B) while this one's monitor served ({A}, A). Its installed material is published
    (without a rotation id, so the barrier does not count it): the record starts from A."""
    cluster = Cluster(target_for(consul_double), vault, tmp_path, session_ttl=10)
    try:
        node, step = _stepper(cluster, "broker-1")
        cluster.set_root("pki_root_a")
        step()  # from nothing: A->A@3, generation 1, not served yet
        published = _published(cluster, "broker-1")
        assert (published.signer, published.rotation_id, published.serial) == (
            "pki_root_a", None, None)
        _lose_consul_data(cluster, consul_double, node, "pki_root_b")
        step()
        record = cluster.record()
        assert (record.from_root, record.to_root, record.phase) == (
            "pki_root_a", "pki_root_b", 0)
        _settle(cluster, node, step, "pki_root_b")
    finally:
        cluster.stop()


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


def test_vault_outage_during_a_phase_resumes(consul: ConsulTarget, faulty_vault: FaultyVault,
                                             tmp_path: Path) -> None:
    target = faulty_vault.target()
    cluster = Cluster(consul, target, tmp_path)
    try:
        cluster.set_root("pki_root_a")
        node = cluster.start("broker-1")
        cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
        # Signing fails (the keeper could still check that pki_root_b exists).
        faulty_vault.fail_next(1000, 503, ["Vault is sealed"], path="/sign/")
        cluster.set_root("pki_root_b")
        cluster.wait_until(lambda: len(node.log.named("renewal_failed")) >= 2, "failures")
        assert node.served() == (("pki_root_a",), "pki_root_a"), "old material kept"
        faulty_vault.reset_faults()
        cluster.wait_until(lambda: cluster.converged("pki_root_b"), "resumed to B")
    finally:
        cluster.stop()


def _denying(consul: ConsulTarget) -> ConsulTarget:
    """``consul`` with ACLs on: the double is given a token; a real Consul must deny a wrong
    token by itself (ACLs enabled, default policy deny), or the test cannot run there."""
    if consul.double is not None:
        consul.double.acl_token = consul.token or "the-sidecars-token"
        return dataclasses.replace(consul, token=consul.double.acl_token)
    try:
        ConsulStore(consul.url, consul.prefix, "not-a-known-token").get("active-root")
    except ConsulError as exc:
        if exc.reason == "forbidden":
            return consul
    pytest.skip("this Consul accepts an unknown token (ACLs disabled)")


def test_consul_acl_denied_is_permanent_unreachable_is_not(
        consul: ConsulTarget, vault: VaultTarget, tmp_path: Path) -> None:
    """A 403 (token unknown, or its policy lacks the key) is reported as permanent and retried
    only at backoff_max; Consul not answering keeps the exponential back-off."""
    cluster = Cluster(_denying(consul), vault, tmp_path, backoff_initial=2.0, backoff_max=60.0)
    try:
        cluster.set_root("pki_root_a")
        denied = cluster.start("broker-1", run=False, consul_token="not-a-known-token")
        assert 30.0 <= denied.manager.step(denied.source) <= 60.0, "at once backoff_max"
        (failed,) = denied.log.named("renewal_failed")
        assert failed["permanent"] is True and failed["kind"] == "permanent_consul_forbidden"
        assert "permission denied" in failed["error"] and "CONSUL_HTTP_TOKEN" in failed["error"]
        assert "kafka-pki-sidecar.policy.hcl" in failed["error"]
        metrics = denied.manager.metrics
        assert metric(metrics, "pki_renewals_total",
                      result="error_permanent_consul_forbidden") == 1
        assert metric(metrics, "pki_errors_total", kind="permanent_consul_forbidden") == 1
        assert metric(metrics, "pki_consul_errors_total", reason="forbidden") == 1
        ready, detail = denied.manager.readiness()
        assert not ready and "failing permanently" in detail and "CONSUL_HTTP_TOKEN" in detail

        with socket.socket() as unused:  # a port nothing listens on
            unused.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{unused.getsockname()[1]}"
        down = cluster.start("broker-2", run=False, consul_addr=closed)
        assert down.manager.step(down.source) < 30.0, "transient: exponential back-off"
        (failed,) = down.log.named("renewal_failed")
        assert failed["permanent"] is False and failed["kind"] == "consul_unavailable"
        assert "failing permanently" not in down.manager.readiness()[1]
    finally:
        cluster.stop()


# -- roots as issuers of one mount (Vault 1.11+) ---------------------------------------------------

def test_rotation_between_two_issuers_of_one_mount(consul_double: ConsulDouble,
                                                   faulty_vault: FaultyVault, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``pki:root-a`` -> ``pki:root-b`` in one mount, through the three phases; an unknown
    issuer (in Consul, or to ``kafka-pki rotate --to``) rotates nothing; then back to A."""
    from sidecar.operator_cli import main

    double = faulty_vault
    double.add_mount("pki", with_root=False)
    double.add_issuer("pki", "root-a")
    double.add_issuer("pki", "root-b")
    vault = double.target(mounts=("pki",))
    monkeypatch.setenv("VAULT_ADDR", double.url)
    monkeypatch.setenv("VAULT_TOKEN", double.root_token)
    cluster = Cluster(target_for(consul_double), vault, tmp_path)
    options = ["--consul-addr", cluster.consul.url, "--consul-prefix", cluster.config_prefix,
               "--cluster", cluster.cluster]
    try:
        cluster.set_root("pki:root-a")
        broker = cluster.start("broker-1")
        cluster.start("client-1", role="client")
        cluster.wait_until(lambda: cluster.converged("pki:root-a"), "stable on root-a")
        generation = broker.manager.volume.generations()[-1]
        cluster.store.put("active-root", b"pki:root-z")
        # The keeper reads active-root and reports it: either participant may be keeper.
        reports = lambda: [e for n in cluster.nodes.values()  # noqa: E731
                           for e in n.log.named("rotation_input_invalid")]
        cluster.wait_until(lambda: bool(reports()), "the unknown issuer to be reported")
        error = reports()[0]["error"]
        assert "'pki:root-z' is not a usable Vault PKI issuer" in error
        assert "unable to find PKI issuer for reference: root-z" in error
        assert broker.manager.volume.generations()[-1] == generation
        with pytest.raises(SystemExit, match="pki:root-z is not a usable Vault PKI issuer"):
            main([*options, "rotate", "--to", "pki:root-z"])
        seen: list[tuple[str, int]] = []
        stop = threading.Event()
        watcher = threading.Thread(target=phases_seen, args=(cluster, stop, seen))
        watcher.start()
        assert main([*options, "rotate", "--to", "pki:root-b"]) == 0
        cluster.wait_until(lambda: cluster.converged("pki:root-b"), "stable on root-b")
        stop.set()
        watcher.join()
        assert [p for root, p in seen if root == "pki:root-b"] == [1, 2, 3]
        for node in cluster.nodes.values():
            current = node.volume / "current"
            manifest = read_generation(current)
            assert (manifest.signer, manifest.trust) == ("pki:root-b", ("pki:root-b",))
            cert = x509.load_pem_x509_certificate((current / layout.CERT_PEM).read_bytes())
            assert cert.issuer == double.ca_cert("pki:root-b").subject
        data = status_data(cluster.store.read(), time.time())
        assert data["active_root"] == "pki:root-b"
        assert (data["rotation"]["from"], data["rotation"]["to"]) == ("pki:root-a",
                                                                      "pki:root-b")
        assert {p["signer"] for p in data["participants"]} == {"pki:root-b"}
        assert double.sign_count["pki:root-b"] >= 2 and double.sign_count["pki"] >= 4
        assert main([*options, "rotate", "--to", "pki:root-a"]) == 0
        cluster.wait_until(lambda: cluster.converged("pki:root-a"), "back on root-a")
    finally:
        cluster.stop()
