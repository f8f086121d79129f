"""The auth manager's side of a KRaft broker restart: the cluster's restart lock in Consul,
held while the monitor's request is on the volume, granted on the volume, given back."""

from __future__ import annotations

import threading
from pathlib import Path

from sidecar import restart_handoff
from sidecar.consul_store import ConsulStore
from sidecar.metrics import AuthManagerMetrics
from sidecar.restart_lock import RESTART_LOCK, RestartLock
from tests.consul_setup import ConsulTarget
from tests.manager_kit import RecordingLog


def _lock(store: ConsulStore, session: str, volume: Path, name: str) -> RestartLock:
    volume.mkdir(exist_ok=True)
    return RestartLock(store=store.clone(), session=lambda: session, node_id=name,
                       volume=volume, metrics=AuthManagerMetrics(), log=RecordingLog(),
                       stop=threading.Event(), poll=0.0, watch_wait=1.0, verify_every=0.0)


def _request(volume: Path, generation: int = 7) -> None:
    restart_handoff.write_request(volume, restart_handoff.RestartRequest(generation, "now"))


def test_idle_it_asks_consul_nothing_and_grants_nothing(consul: ConsulTarget,
                                                        tmp_path: Path) -> None:
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    lock = _lock(store, store.create_session(consul.prefix + "a", 30), tmp_path / "a", "kafka-1")
    lock.step()
    assert lock.holding is None and restart_handoff.read_grant(tmp_path / "a") is None
    assert store.get(RESTART_LOCK).entry is None


def test_one_holder_at_a_time_then_the_next(consul: ConsulTarget, tmp_path: Path) -> None:
    """Two brokers ask at once: one holds the lock and has a grant on its volume; the other
    waits, grant-less, until the first withdraws its request and the lock is given back."""
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    sessions = [store.create_session(consul.prefix + n, 30) for n in ("a", "b")]
    volumes = [tmp_path / "a", tmp_path / "b"]
    first, second = (_lock(store, s, v, f"kafka-{i}")
                     for i, (s, v) in enumerate(zip(sessions, volumes, strict=True), 1))
    for volume in volumes:
        _request(volume)
    first.step()
    second.step()
    assert first.holding == sessions[0] and second.holding is None
    grant = restart_handoff.read_grant(volumes[0])
    assert grant is not None and grant.session == sessions[0] and grant.node_id == "kafka-1"
    assert restart_handoff.read_grant(volumes[1]) is None
    entry = store.get(RESTART_LOCK).entry
    assert entry is not None and entry.session == sessions[0]
    assert second.log.named("restart_lock_waiting")[-1]["holder"] == sessions[0]

    first.step()  # still requested: still held, checked against Consul
    assert first.holding == sessions[0]
    restart_handoff.remove_request(volumes[0])  # the broker is back and verified
    first.step()
    assert first.holding is None and restart_handoff.read_grant(volumes[0]) is None
    second.step()
    assert second.holding == sessions[1]
    assert restart_handoff.read_grant(volumes[1]) is not None


def test_a_lost_lock_withdraws_the_grant(consul: ConsulTarget, tmp_path: Path) -> None:
    """The session ends (its auth manager was partitioned from Consul past the TTL): the
    lock goes with it, and the grant is taken off the volume so the monitor does not restart
    without it."""
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    session = store.create_session(consul.prefix + "a", 30)
    lock = _lock(store, session, tmp_path / "a", "kafka-1")
    _request(tmp_path / "a")
    lock.step()
    assert restart_handoff.read_grant(tmp_path / "a") is not None
    store.destroy_session(session)
    lock.step()
    assert lock.holding is None and restart_handoff.read_grant(tmp_path / "a") is None
    assert lock.log.named("restart_lock_lost")
