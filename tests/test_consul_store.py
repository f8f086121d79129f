"""ConsulStore and the watch loop against Consul (the double, or a real one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sidecar.consul_store import ConsulError, ConsulStore, Snapshot, next_index, watch_loop
from tests.consul_setup import AclTokens, ConsulTarget, operator_rules, participant_rules
from tests.doubles.consul import ConsulDouble


def test_next_index_follows_consul_rules() -> None:
    assert next_index(0, 42) == 42
    assert next_index(42, 42) == 42  # no change: block again on the same index
    assert next_index(42, 7) == 0  # went backwards: reset, plain read next
    assert next_index(0, 0) == 1  # never block on an index below 1


def test_read_put_cas_delete(consul: ConsulTarget) -> None:
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    assert store.read().entries == {}
    assert store.put("rotation", b"v1", cas=0)
    assert not store.put("rotation", b"v2", cas=0), "cas=0 must only create"
    snap = store.read()
    index = snap.modify_index("rotation")
    assert snap.value("rotation") == b"v1" and index > 0
    assert store.put("rotation", b"v2", cas=index)
    assert not store.put("rotation", b"v3", cas=index), "stale cas must lose"
    assert store.read().value("rotation") == b"v2"
    store.delete("rotation")
    assert store.read().value("rotation") is None


def test_explicit_address_wins_over_environment(consul: ConsulTarget,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")  # python-consul2 would prefer this
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    assert store.put("k", b"v")


def test_session_holds_key_until_it_dies(consul: ConsulTarget) -> None:
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    session = store.create_session(consul.prefix + "node-1", 10)
    assert store.put("nodes/node-1", b"{}", acquire=session)
    other = store.create_session(consul.prefix + "node-1-dup", 10)
    assert not store.put("nodes/node-1", b"{}", acquire=other), "key is held"
    assert store.read().entries["nodes/node-1"].session == session
    store.destroy_session(session)
    assert store.read().value("nodes/node-1") is None, "behavior=delete removes the key"
    assert not store.renew_session(session)
    store.destroy_session(other)


@contextmanager
def watching(store: ConsulStore, wait: float = 30.0
             ) -> Iterator[tuple[list[Snapshot], list[ConsulError], threading.Event]]:
    seen: list[Snapshot] = []
    errors: list[ConsulError] = []
    changed = threading.Event()
    stop = threading.Event()

    def on_snapshot(snapshot: Snapshot) -> None:
        seen.append(snapshot)
        changed.set()

    thread = threading.Thread(target=watch_loop, daemon=True, args=(
        store, wait, on_snapshot, lambda exc, delay: errors.append(exc), stop.is_set))
    thread.start()
    try:
        yield seen, errors, changed
    finally:
        stop.set()


def wait_for(changed: threading.Event, what: str) -> None:
    assert changed.wait(15), f"watch did not see {what}"
    changed.clear()


def test_watch_returns_early_on_change(consul: ConsulTarget) -> None:
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    with watching(store.clone(), wait=60) as (seen, _, changed):
        wait_for(changed, "the first read")
        store.put("active-root", b"pki_root_b")  # well before the 60 s wait ends
        wait_for(changed, "the change")
        assert seen[-1].value("active-root") == b"pki_root_b"


def test_watch_ignores_spurious_wakeups(consul_double: ConsulDouble) -> None:
    store = ConsulStore(consul_double.url, "kafka-pki/t/")
    store.put("active-root", b"pki_root_a")
    consul_double.spurious_wakeups(True, after=0.05)
    with watching(store.clone(), wait=2) as (seen, _, changed):
        wait_for(changed, "the first read")
        assert not changed.wait(1.0), "an early return with no change is not a change"
        store.put("active-root", b"pki_root_b")
        wait_for(changed, "the real change")
    assert [s.value("active-root") for s in seen] == [b"pki_root_a", b"pki_root_b"]


def test_watch_recovers_from_restart_with_index_reset(consul_double: ConsulDouble) -> None:
    store = ConsulStore(consul_double.url, "kafka-pki/t/")
    for i in range(30):  # push the index well above what a fresh agent starts with
        store.put("filler", str(i).encode())
    with watching(store.clone(), wait=30) as (seen, errors, changed):
        wait_for(changed, "the first read")
        consul_double.restart(keep_data=False)
        store.put("active-root", b"pki_root_b")
        wait_for(changed, "the value written after the restart")
        assert seen[-1].value("active-root") == b"pki_root_b"
        assert seen[-1].index < seen[0].index
        assert errors, "the dropped connection is reported"


def test_consul_down_is_a_clear_error(consul_double: ConsulDouble) -> None:
    store = ConsulStore(consul_double.url, "kafka-pki/t/", request_timeout=2)
    consul_double.set_down(True)
    with pytest.raises(ConsulError, match="cannot connect") as info:
        store.read()
    assert info.value.reason == "unavailable"


# -- put_if_locked: the keeper's fenced write (check-session + cas in one transaction) --------


def _keeper(store: ConsulStore, consul_prefix: str, name: str = "keeper-1") -> str:
    session = store.create_session(consul_prefix + name, 10)
    assert store.put("keeper", name.encode(), acquire=session)
    return session


def test_put_if_locked_writes_while_the_session_holds_the_lock(consul: ConsulTarget) -> None:
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    session = _keeper(store, consul.prefix)
    assert store.put_if_locked("rotation", b"v1", cas=0, lock_key="keeper", session=session)
    assert not store.put_if_locked("rotation", b"v2", cas=0, lock_key="keeper",
                                   session=session), "cas=0 only creates"
    index = store.read().modify_index("rotation")
    assert store.put_if_locked("rotation", b"v2", cas=index, lock_key="keeper", session=session)
    assert not store.put_if_locked("rotation", b"v3", cas=index, lock_key="keeper",
                                   session=session), "stale index"
    snap = store.read()
    assert snap.value("rotation") == b"v2" and snap.entries["keeper"].session == session
    store.destroy_session(session)


def test_put_if_locked_refuses_without_the_lock(consul: ConsulTarget) -> None:
    store = ConsulStore(consul.url, consul.prefix, consul.token)
    stranger = store.create_session(consul.prefix + "stranger", 10)
    assert not store.put_if_locked("rotation", b"v1", cas=0, lock_key="keeper",
                                   session=stranger), "lock key absent"
    holder = _keeper(store, consul.prefix)
    assert not store.put_if_locked("rotation", b"v1", cas=0, lock_key="keeper",
                                   session=stranger), "held by another session"
    store.destroy_session(holder)  # behavior=delete: the lock key goes with it
    assert not store.put_if_locked("rotation", b"v1", cas=0, lock_key="keeper",
                                   session=holder), "destroyed session"
    store.put("keeper", b"unlocked")
    assert not store.put_if_locked("rotation", b"v1", cas=0, lock_key="keeper",
                                   session=holder), "key present but held by no session"
    assert store.read().value("rotation") is None
    store.destroy_session(stranger)


def test_put_if_locked_fails_for_a_keeper_whose_session_the_data_loss_took(
        consul_double: ConsulDouble) -> None:
    """The rotation model's counterexample: the stale keeper's check-and-set on index 0 would
    win after Consul lost its data; the fenced write does not."""
    store = ConsulStore(consul_double.url, "kafka-pki/t/")
    session = _keeper(store, "kafka-pki/t/")
    consul_double.restart(keep_data=False)
    assert not store.put_if_locked("rotation", b"stale", cas=0, lock_key="keeper",
                                   session=session)
    assert consul_double.kv_snapshot() == {}
    assert store.put("rotation", b"stale", cas=0), "unfenced, it would have won"


def test_put_if_locked_other_failures_are_consul_errors(consul_double: ConsulDouble) -> None:
    store = ConsulStore(consul_double.url, "kafka-pki/t/", request_timeout=2)
    session = _keeper(store, "kafka-pki/t/")
    with pytest.raises(ConsulError) as info:  # 413: the value is over Consul's limit
        store.put_if_locked("rotation", b"x" * (512 * 1024), cas=0, lock_key="keeper",
                            session=session)
    assert info.value.reason == "error" and "413" in str(info.value)
    consul_double.set_down(True)
    with pytest.raises(ConsulError) as info:
        store.put_if_locked("rotation", b"v", cas=0, lock_key="keeper", session=session)
    assert info.value.reason == "unavailable"


# ----------------------------------------------------------- least privilege (shipped policies)


def test_participant_token_writes_only_its_keys(consul_acl: AclTokens) -> None:
    """The shipped participant policy: its own report, keeper, rotation; read everything else.
    A refusal names the key and the rule the token lacks."""
    p = consul_acl.base.prefix
    admin = ConsulStore(consul_acl.base.url, p, consul_acl.base.token)
    assert admin.put("active-root", b"pki_root_a")
    token = consul_acl.token(participant_rules(p, "kafka-1"))
    store = ConsulStore(consul_acl.base.url, p, token)
    session = store.create_session(p + "kafka-1", 15)
    try:
        assert store.put("nodes/kafka-1", b"{}", acquire=session)
        assert store.put("keeper", b"kafka-1", acquire=session)
        assert store.put_if_locked("rotation", b"r1", cas=0, lock_key="keeper", session=session)
        snap = store.read()
        assert snap.value("active-root") == b"pki_root_a" and snap.value("rotation") == b"r1"
        for key in ("nodes/kafka-2", "active-root"):
            with pytest.raises(ConsulError) as info:
                store.put(key, b"x")
            assert info.value.reason == "forbidden" and info.value.permanent
            message = str(info.value)
            assert message.startswith(f"Consul write {key} under {p}: permission denied (")
            assert f'the token needs key "{p}{key}" write' in message
            assert "docker/consul/kafka-pki-sidecar.policy.hcl" in message
        assert admin.read().value("active-root") == b"pki_root_a"
    finally:
        store.destroy_session(session)


def test_refused_transaction_is_forbidden_not_rolled_back(consul_acl: AclTokens) -> None:
    """Consul reports an ACL refusal inside a transaction as a 409 error (txn_endpoint.go
    preCheck): the store must not read it as "lost the lock", which would retry forever."""
    p = consul_acl.base.prefix
    token = consul_acl.token(f'key_prefix "{p}" {{ policy = "read" }}\n'
                             f'key "{p}keeper" {{ policy = "write" }}\n'
                             'session_prefix "" { policy = "write" }')
    store = ConsulStore(consul_acl.base.url, p, token)
    session = store.create_session(p + "kafka-1", 15)
    try:
        assert store.put("keeper", b"kafka-1", acquire=session)
        with pytest.raises(ConsulError) as info:
            store.put_if_locked("rotation", b"r1", cas=0, lock_key="keeper", session=session)
        assert info.value.reason == "forbidden"
        assert f'the token needs key "{p}rotation" write' in str(info.value)
    finally:
        store.destroy_session(session)


def test_session_refusal_names_the_session_rule(consul_acl: AclTokens) -> None:
    p = consul_acl.base.prefix
    store = ConsulStore(consul_acl.base.url, p,
                        consul_acl.token(f'key_prefix "{p}" {{ policy = "write" }}'))
    with pytest.raises(ConsulError, match='the token needs session_prefix "" write'):
        store.create_session(p + "kafka-1", 15)


def test_unknown_token_is_named_as_unknown(consul_acl: AclTokens) -> None:
    store = ConsulStore(consul_acl.base.url, consul_acl.base.prefix, "not-a-token")
    with pytest.raises(ConsulError, match=r"\(ACL not found\); Consul does not know this token"):
        store.read()


def test_operator_read_only_token_reads_and_cannot_write(consul_acl: AclTokens) -> None:
    p = consul_acl.base.prefix
    ConsulStore(consul_acl.base.url, p, consul_acl.base.token).put("active-root", b"a")
    writer = ConsulStore(consul_acl.base.url, p, consul_acl.token(operator_rules(p)))
    assert writer.put("active-root", b"b")
    with pytest.raises(ConsulError, match="permission denied"):
        writer.put("rotation", b"forged")
    reader = ConsulStore(consul_acl.base.url, p,
                         consul_acl.token(operator_rules(p, read_only=True)))
    assert reader.read().value("active-root") == b"b"
    with pytest.raises(ConsulError, match=f'needs key "{p}active-root" write'):
        reader.put("active-root", b"c")
