"""The auth manager's side of a KRaft broker restart: the cluster's restart queue in Consul,
joined while the monitor's request is on the volume, granted on the volume when first, left
when the request goes."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from sidecar import restart_handoff
from sidecar.consul_store import ConsulStore, Entry, Snapshot
from sidecar.metrics import AuthManagerMetrics
from sidecar.restart_lock import RESTART_QUEUE, RestartLock, queue_ahead
from tests.consul_setup import ConsulTarget
from tests.manager_kit import RecordingLog
from tests.monitor_kit import wait_for


def _lock(store: ConsulStore, session: str, volume: Path, name: str) -> RestartLock:
    volume.mkdir(exist_ok=True)
    return RestartLock(store=store.clone(), session=lambda: session, node_id=name,
                       volume=volume, metrics=AuthManagerMetrics(), log=RecordingLog(),
                       stop=threading.Event(), poll=0.0, watch_wait=1.0, verify_every=0.0)


def _request(volume: Path, generation: int = 7) -> None:
    restart_handoff.write_request(volume, restart_handoff.RestartRequest(generation, "now"))


def test_queue_order_is_the_entries_modify_index() -> None:
    def entry(key: str, index: int, session: str | None = "s") -> Entry:
        return Entry(key, b"", index, session)

    queue = Snapshot(9, {"b": entry("b", 5), "a": entry("a", 7), "c": entry("c", 3),
                         "gone": entry("gone", 6, None)})
    assert queue_ahead(queue, "c") is None  # first
    assert queue_ahead(queue, "b") == "c"
    assert queue_ahead(queue, "a") == "b"  # not "gone": no session holds it
    with pytest.raises(KeyError):
        queue_ahead(queue, "gone")
    with pytest.raises(KeyError):
        queue_ahead(queue, "absent")


def test_idle_it_asks_consul_nothing_and_grants_nothing(consul: ConsulTarget,
                                                        tmp_path: Path) -> None:
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    lock = _lock(store, store.create_session(consul.prefix + "a", 30), tmp_path / "a", "kafka-1")
    lock.step()
    assert lock.joined is None and restart_handoff.read_grant(tmp_path / "a") is None
    assert not store.child(RESTART_QUEUE).read().entries


def test_first_come_first_served_and_each_waits_for_the_one_ahead(
        consul: ConsulTarget, tmp_path: Path) -> None:
    """Three brokers ask: the first to join holds the grant; the others wait, grant-less, each
    watching only the entry just ahead of its own; when the first leaves, the second is
    granted, and the third still waits for the second."""
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    names = ("kafka-1", "kafka-2", "kafka-3")
    sessions = [store.create_session(consul.prefix + n, 30) for n in names]
    volumes = [tmp_path / n for n in names]
    locks = [_lock(store, s, v, n) for s, v, n in zip(sessions, volumes, names, strict=True)]
    for volume, lock in zip(volumes, locks, strict=True):
        _request(volume)
        lock.step()
    first, second, third = locks
    assert first.holding and not second.holding and not third.holding
    grant = restart_handoff.read_grant(volumes[0])
    assert grant is not None and grant.session == sessions[0] and grant.node_id == "kafka-1"
    assert restart_handoff.read_grant(volumes[1]) is None
    assert restart_handoff.read_grant(volumes[2]) is None
    assert second.log.named("restart_queue_waiting")[-1]["ahead"] == "kafka-1"
    assert third.log.named("restart_queue_waiting")[-1]["ahead"] == "kafka-2"

    first.step()  # still requested: still held, checked against Consul
    assert first.holding
    restart_handoff.remove_request(volumes[0])  # the broker is back and verified
    first.step()
    assert first.joined is None and restart_handoff.read_grant(volumes[0]) is None
    third.step()  # woken by nothing: its blocking query on kafka-2 times out
    assert not third.holding and restart_handoff.read_grant(volumes[2]) is None
    second.step()  # kafka-1 went: look again
    second.step()
    assert second.holding and restart_handoff.read_grant(volumes[1]) is not None
    assert list(store.child(RESTART_QUEUE).read().entries) in (["kafka-2", "kafka-3"],
                                                               ["kafka-3", "kafka-2"])


def test_a_lost_entry_withdraws_the_grant(consul: ConsulTarget, tmp_path: Path) -> None:
    """The session ends (its auth manager was cut off from Consul past the TTL): the entry goes
    with it, and the grant is taken off the volume so the monitor does not restart without
    it."""
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    session = store.create_session(consul.prefix + "a", 30)
    lock = _lock(store, session, tmp_path / "a", "kafka-1")
    _request(tmp_path / "a")
    lock.step()
    assert restart_handoff.read_grant(tmp_path / "a") is not None
    store.destroy_session(session)
    lock.step()
    assert not lock.holding and restart_handoff.read_grant(tmp_path / "a") is None
    assert lock.log.named("restart_queue_lost")


def test_a_volume_that_cannot_take_the_grant_gives_the_place_up(
        consul: ConsulTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grant cannot be written (the volume is full): the thread logs it, leaves the queue
    so that the cluster's other brokers are not held, and tries again later."""
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    lock = _lock(store, store.create_session(consul.prefix + "a", 30), tmp_path / "a", "kafka-1")
    _request(tmp_path / "a")

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(restart_handoff, "write_grant", full)
    lock.start()
    try:
        wait_for(lambda: lock.log.named("restart_queue_failed"), "the failure to be logged")
        wait_for(lambda: not store.child(RESTART_QUEUE).read().entries, "the place given up")
    finally:
        lock.stop.set()
    assert "No space left on device" in lock.log.named("restart_queue_failed")[0]["error"]
