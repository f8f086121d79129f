"""Listeners Kafka cannot reload (the KRaft controller's): the monitor restarts the broker,
one broker at a time, only while the cluster shows every broker alive."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from monitor import restart_gate
from sidecar.settings import ConfigError
from sidecar.volume import Volume
from tests.manager_kit import metric
from tests.monitor_kit import PHASES, broker_rig, supervised_sleeper, wait_for
from tests.vault_setup import VaultTarget

PEER = ("127.0.0.1", 1)  # a peer broker's address in Metadata (never dialled by these tests)


def test_gate_rules() -> None:
    assert restart_gate.cluster_whole({1, 2, 3}, 3)
    assert not restart_gate.cluster_whole({1, 3}, 3)
    assert restart_gate.cluster_whole({1, 2, 3, 4}, 3)  # a broker added since configured
    assert [restart_gate.place_in_line(b, {1, 2, 3}) for b in (1, 2, 3)] == [0, 1, 2]
    assert restart_gate.place_in_line(5, {1, 7}) == 1  # not in Metadata yet: still a place
    assert restart_gate.describe_missing({3, 1}, 3) == \
        "the cluster shows 2 of 3 brokers alive (1, 3)"
    assert restart_gate.describe_missing(set(), 1) == \
        "the cluster shows 0 of 1 brokers alive (none)"


def test_restart_listeners_need_the_cluster_size(vault: VaultTarget, tmp_path: Path) -> None:
    with broker_rig(vault, tmp_path) as rig, \
            pytest.raises(ConfigError, match="restart_cluster_size"):
        rig.monitor(restart_listeners=["CONTROLLER"], reload_action="restart",
                    reload_pid_file=tmp_path / "kafka.pid")


def test_restart_waits_for_a_whole_cluster(vault: VaultTarget, tmp_path: Path) -> None:
    """A peer is down: the broker reloads its dynamic listeners but is not restarted; once the
    cluster is whole it is, and the acknowledgement names the restart."""
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path) as rig, supervised_sleeper(pid_file) as first:
        broker = rig.require_double()
        broker.peers = {3: PEER}  # broker 2 is down
        rig.install(PHASES[1])
        reloader, metrics, log = rig.monitor(
            restart_listeners=["CONTROLLER"], restart_cluster_size=3, restart_stagger=0.0,
            reload_action="restart", reload_pid_file=pid_file, action_timeout=10)
        assert not reloader.handle()
        failure = log.named("reload_failed")[-1]
        assert failure["result"] == "restart_deferred"
        assert failure["error"] == "the cluster shows 2 of 3 brokers alive (1, 3)"
        assert metric(metrics, "tls_monitor_reloads_total", result="restart_deferred") == 1
        assert int(pid_file.read_text()) == first  # not restarted
        assert Volume(rig.volume).read_ack() is None  # nor acknowledged

        broker.peers = {2: PEER, 3: PEER}  # broker 2 is back
        assert reloader.handle(), log.events
        restarted = int(pid_file.read_text())
        assert restarted != first
        ack = Volume(rig.volume).read_ack()
        assert ack is not None
        assert f"CONTROLLER:restart:{restarted}" in ack.targets
        assert log.named("restarting")[-1]["listeners"] == ["CONTROLLER"]


def test_brokers_take_turns_by_id(vault: VaultTarget, tmp_path: Path) -> None:
    """Broker 1 is second in line after broker 0: it waits its stagger, sees broker 0 gone
    (restarting), and does not restart alongside it."""
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path) as rig, supervised_sleeper(pid_file) as first:
        broker = rig.require_double()
        broker.peers = {0: PEER, 2: PEER}
        rig.install(PHASES[1])
        reloader, _, log = rig.monitor(
            restart_listeners=["CONTROLLER"], restart_cluster_size=3, restart_stagger=1.0,
            reload_action="restart", reload_pid_file=pid_file, action_timeout=10)


        def broker_0_restarts() -> None:  # while broker 1 waits its turn
            wait_for(lambda: log.named("restart_waiting_turn"), "broker 1 to wait its turn")
            broker.peers.pop(0)

        thread = threading.Thread(target=broker_0_restarts, daemon=True)
        thread.start()
        assert not reloader.handle()
        thread.join(5)
        assert log.named("restart_waiting_turn")[-1]["place"] == 1
        assert log.named("reload_failed")[-1]["error"] == \
            "the cluster shows 2 of 3 brokers alive (1, 2)"
        assert int(pid_file.read_text()) == first


def test_a_broker_started_on_the_current_generation_is_not_restarted(
        vault: VaultTarget, tmp_path: Path) -> None:
    """At a first start the broker loaded the current stores itself: its pid file is newer
    than the volume's current link, so there is nothing to restart for."""
    pid_file = tmp_path / "kafka.pid"
    with broker_rig(vault, tmp_path) as rig:
        rig.install(PHASES[1])
        with supervised_sleeper(pid_file) as first:  # started after the generation
            reloader, _, log = rig.monitor(
                restart_listeners=["CONTROLLER"], restart_cluster_size=3,
                restart_stagger=0.0, reload_action="restart", reload_pid_file=pid_file)
            assert reloader.handle(), log.events
            assert int(pid_file.read_text()) == first
            assert log.named("restart_not_needed")
            ack = Volume(rig.volume).read_ack()
            assert ack is not None and "CONTROLLER:loaded-at-start" in ack.targets
