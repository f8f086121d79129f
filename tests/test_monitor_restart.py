"""KRaft: the controller listener reloads like the others; the broker restarts only when its
Raft client lacks a root (once per rotation), only while its auth manager holds the cluster's
restart lock, and only while the cluster shows every broker alive."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from monitor import restart_gate
from monitor.reloader import Reloader
from monitor.stores import load_stores
from sidecar import restart_handoff
from sidecar.consul_store import ConsulStore
from sidecar.manifest import Manifest
from sidecar.material import format_serial
from sidecar.metrics import AuthManagerMetrics
from sidecar.restart_lock import RESTART_QUEUE, RestartLock
from sidecar.settings import ConfigError
from sidecar.volume import Volume
from tests.consul_setup import ConsulTarget
from tests.doubles.kafka import RaftUnreachable
from tests.manager_kit import RecordingLog, metric
from tests.monitor_kit import PASSWORD, PHASES, Rig, broker_rig, supervised_sleeper, wait_for
from tests.pki import LocalRoot
from tests.vault_setup import VaultTarget

PEER = ("127.0.0.1", 1)  # a peer broker's address in Metadata (never dialled by these tests)


def test_gate_rules() -> None:
    a, b = (LocalRoot(name).cert for name in ("root A", "root B"))
    both = restart_gate.root_fingerprints([a, b])
    only_a = restart_gate.root_fingerprints([a])
    assert len(both) == 2 and only_a < both
    assert restart_gate.raft_restart_needed(only_a, both)  # phase 1 of A->B
    assert not restart_gate.raft_restart_needed(both, both)  # phase 2, a renewal
    assert not restart_gate.raft_restart_needed(both, restart_gate.root_fingerprints([b]))
    assert restart_gate.raft_restart_needed(None, only_a)  # unknown: restart
    assert restart_gate.cluster_whole({1, 2, 3}, 3)
    assert not restart_gate.cluster_whole({1, 3}, 3)
    assert restart_gate.cluster_whole({1, 2, 3, 4}, 3)  # a broker added since configured
    assert restart_gate.describe_missing({3, 1}, 3) == \
        "the cluster shows 2 of 3 brokers alive (1, 3)"


def _kraft(rig: Rig, pid_file: Path, **overrides: Any) -> Any:
    return rig.monitor(**{"controller_listener": "CONTROLLER", "restart_cluster_size": 3,
                          "reload_action": "restart", "reload_pid_file": pid_file,
                          "action_timeout": 10, **overrides})


def _renew(rig: Rig) -> Manifest:
    """A renewal: the same roots, a new certificate (renewal time passed)."""
    rig.manager.renew_at = lambda m: dt.datetime.fromisoformat(m.not_before)  # type: ignore[method-assign]
    try:
        return rig.install(PHASES[0])
    finally:
        del rig.manager.renew_at


def _roots(rig: Rig) -> frozenset[str]:
    stores = load_stores(rig.volume / "current", rig.store_type, PASSWORD)
    return restart_gate.root_fingerprints(stores.trusted)


def test_settings(vault: VaultTarget, tmp_path: Path) -> None:
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path, controller=True) as rig:
        with pytest.raises(ConfigError, match="restart_cluster_size"):
            _kraft(rig, pid_file, restart_cluster_size=0)
        with pytest.raises(ConfigError, match="controller_listener: not in listeners"):
            _kraft(rig, pid_file, controller_listener="RAFT")
        with pytest.raises(ConfigError, match=r"restart_listeners was removed.*"
                                              r"controller_listener=CONTROLLER"):
            rig.monitor(restart_listeners=["CONTROLLER"])
        _kraft(rig, pid_file, restart_cluster_size=0, raft_restart="never",
               reload_action="none")  # a fixed release: no restarts, nothing else needed


def test_a_renewal_reloads_the_controller_listener_and_restarts_nothing(
        vault: VaultTarget, tmp_path: Path) -> None:
    """The broker started on phase 0; a renewal (same roots) is altered into every listener,
    CONTROLLER included, verified there by handshake, and no restart is asked for."""
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path, controller=True) as rig, \
            supervised_sleeper(pid_file) as first:
        broker = rig.require_double()
        broker.peers = {2: PEER, 3: PEER}
        reloader, _, log = _kraft(rig, pid_file)
        assert reloader.handle(), log.events  # the first generation: nothing to change
        renewed = _renew(rig)
        assert reloader.handle(), log.events
        assert format_serial(broker.served_certificate("CONTROLLER").serial_number) \
            == renewed.serial
        assert broker.listener_reload_count("CONTROLLER") == 1, broker.log
        assert int(pid_file.read_text()) == first and not log.named("restarting")
        ack = Volume(rig.volume).read_ack()
        assert ack is not None and ack.generation == renewed.generation
        assert "CONTROLLER" in ack.targets and "raft:trusted" in ack.targets
        assert ack.raft_pid == str(first) and frozenset(ack.raft_roots or ()) == _roots(rig)
        assert restart_handoff.read_request(rig.volume) is None


def test_a_new_root_restarts_once_under_the_lock_and_a_whole_cluster(
        vault: VaultTarget, tmp_path: Path) -> None:
    """Phase 1 adds root B: the listeners reload at once, then the monitor asks for the
    restart lock and waits; granted but a peer down, it defers; with the cluster whole it
    restarts, verifies every listener, records the Raft client's new roots, withdraws its
    request. Phase 2 (same roots) restarts nothing."""
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path, controller=True) as rig, \
            supervised_sleeper(pid_file) as first:
        broker = rig.require_double()
        broker.peers = {3: PEER}  # broker 2 is down
        reloader, metrics, log = _kraft(rig, pid_file)
        assert reloader.handle(), log.events
        phase1 = rig.install(PHASES[1])
        assert not reloader.handle()
        assert not reloader.handle()  # retried: still waiting, said once
        assert len(log.named("restart_waiting")) == 1
        request = restart_handoff.read_request(rig.volume)
        assert request is not None and request.generation == phase1.generation
        assert format_serial(broker.served_certificate("CONTROLLER").serial_number) \
            == phase1.serial  # reloaded dynamically already
        assert metric(metrics, "tls_monitor_restart_waiting_seconds") >= 0.0
        assert Volume(rig.volume).read_ack().generation != phase1.generation  # type: ignore[union-attr]

        restart_handoff.write_grant(rig.volume, restart_handoff.RestartGrant("s", "kafka-1", ""))
        assert not reloader.handle()
        assert log.named("reload_failed")[-1]["result"] == "restart_deferred"
        assert log.named("reload_failed")[-1]["error"] == \
            "the cluster shows 2 of 3 brokers alive (1, 3)"
        assert int(pid_file.read_text()) == first

        broker.peers = {2: PEER, 3: PEER}
        assert reloader.handle(), log.events
        restarted = int(pid_file.read_text())
        assert restarted != first
        ack = Volume(rig.volume).read_ack()
        assert ack is not None and ack.generation == phase1.generation
        assert f"raft:restart:{restarted}" in ack.targets
        assert ack.raft_pid == str(restarted) and frozenset(ack.raft_roots or ()) == _roots(rig)
        assert restart_handoff.read_request(rig.volume) is None
        assert metric(metrics, "tls_monitor_restart_waiting_seconds") == 0.0

        rig.install(PHASES[2])
        assert reloader.handle(), log.events
        assert int(pid_file.read_text()) == restarted


def test_a_broker_started_on_the_current_generation_is_not_restarted(
        vault: VaultTarget, tmp_path: Path) -> None:
    """At a first start the broker loaded the current stores itself (its pid file is newer
    than the generation): its Raft client already trusts both roots."""
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path, controller=True, first=PHASES[1]) as rig, \
            supervised_sleeper(pid_file) as first:
        rig.require_double().peers = {2: PEER, 3: PEER}
        reloader, _, log = _kraft(rig, pid_file)
        assert reloader.handle(), log.events
        assert int(pid_file.read_text()) == first
        ack = Volume(rig.volume).read_ack()
        assert ack is not None and "raft:trusted" in ack.targets
        assert restart_handoff.read_request(rig.volume) is None


def test_the_double_raft_client_keeps_its_start_up_roots(
        vault: VaultTarget, tmp_path: Path) -> None:
    """KAFKA-20025 in the double: after phase 2 (signed by B) the listener serves B, and a
    Raft client that started on phase 0 cannot reach it; a restart (or a fixed release)
    can."""
    with broker_rig(vault, tmp_path, controller=True) as rig:
        broker = rig.require_double()
        port = broker.ports["CONTROLLER"]
        broker.raft_handshake("127.0.0.1", port)
        reloader, _, log = rig.monitor()
        for phase in PHASES[1:3]:
            rig.install(phase)
            assert reloader.handle(), log.events
        with pytest.raises(RaftUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            broker.raft_handshake("127.0.0.1", port)
        broker.raft_fixed = True
        broker.raft_handshake("127.0.0.1", port)
        broker.raft_fixed = False
        broker.restart_process()
        broker.raft_handshake("127.0.0.1", port)


def test_generations_delivered_at_once_restart_one_broker_at_a_time(
        vault: VaultTarget, consul: ConsulTarget, tmp_path: Path) -> None:
    """Three brokers get phase 1 at the same moment, and the cluster always shows all three
    alive (a stand-in restarts in milliseconds): only the restart queue keeps them apart. Each
    broker's auth manager queues (the real RestartLock, on Consul) for its monitor; the
    three restarts never overlap, and each leaves the queue."""
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    stop = threading.Event()
    windows: dict[int, tuple[float, float]] = {}
    with contextlib.ExitStack() as stack:
        monitors, locks = [], []
        for i in (1, 2, 3):
            base = tmp_path / f"broker-{i}"
            base.mkdir()
            rig = stack.enter_context(broker_rig(vault, base, controller=True))
            rig.require_double().peers = {2: PEER, 3: PEER}  # each double plays broker 1
            pid_file = base / "kafka.pid"
            stack.enter_context(supervised_sleeper(pid_file))
            reloader, _, log = _kraft(rig, pid_file, retry_interval=0.1)
            assert reloader.handle(), log.events
            session = store.create_session(f"{consul.prefix}broker-{i}", 30)
            lock = RestartLock(store=store.clone(), session=lambda s=session: s,
                               node_id=f"kafka-{i}", volume=rig.volume,
                               metrics=AuthManagerMetrics(), log=RecordingLog(), stop=stop,
                               poll=0.05, watch_wait=2.0)
            locks.append(lock)
            monitors.append((i, rig, reloader, log))
        stack.callback(stop.set)

        def timed(i: int, reloader: Reloader) -> None:
            act = reloader._run_action

            def run_action(*args: Any) -> str:
                assert restart_handoff.read_grant(reloader.config.volume_dir) is not None
                started = time.monotonic()
                done = act(*args)
                windows[i] = (started, time.monotonic())
                return done
            reloader._run_action = run_action  # type: ignore[method-assign]

        for i, _, reloader, _ in monitors:
            timed(i, reloader)
        for _, rig, _, _ in monitors:  # the same moment, as far as three writes go
            rig.install(PHASES[1])
        for lock in locks:
            lock.start()

        def apply(reloader: Reloader) -> None:
            deadline = time.monotonic() + 60
            while not reloader.handle() and time.monotonic() < deadline:
                time.sleep(0.05)

        threads = [threading.Thread(target=apply, args=(m[2],)) for m in monitors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert sorted(windows) == [1, 2, 3], [m[3].events[-3:] for m in monitors]
        spans = sorted(windows.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, spans  # one restart ends before the next begins
        for _, rig, _, log in monitors:
            assert log.named("restart_waiting")
            wait_for(lambda r=rig: restart_handoff.read_grant(r.volume) is None,
                     "the lock to be given back")
        wait_for(lambda: not store.child(RESTART_QUEUE).read().entries, "an empty queue")


def test_a_broker_older_than_every_generation_restarts_once(
        vault: VaultTarget, tmp_path: Path) -> None:
    """Nothing says what a process that predates every generation on the volume loaded (no
    ack records it): even a renewal asks for the restart, once; afterwards the ack knows."""
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path, controller=True) as rig, \
            supervised_sleeper(pid_file) as first:
        rig.require_double().peers = {2: PEER, 3: PEER}
        day_ago = time.time() - 86400
        os.utime(pid_file, (day_ago, day_ago))
        reloader, _, log = _kraft(rig, pid_file)
        assert not reloader.handle()
        assert restart_handoff.read_request(rig.volume) is not None
        restart_handoff.write_grant(rig.volume, restart_handoff.RestartGrant("s", "kafka-1", ""))
        assert reloader.handle(), log.events
        assert int(pid_file.read_text()) != first
        _renew(rig)
        assert reloader.handle(), log.events
        ack = Volume(rig.volume).read_ack()
        assert ack is not None and "raft:trusted" in ack.targets
