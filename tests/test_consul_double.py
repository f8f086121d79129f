"""Tests of the Consul double through python-consul2 over a real socket.

Tests taking the ``consul`` fixture also run, unchanged, against a real Consul when
CONSUL_HTTP_ADDR is set; those taking ``consul_double`` inject faults only the double can.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import consul as consul_lib
import pytest
import requests

from tests.consul_setup import AclTokens, ConsulTarget, consul_client
from tests.doubles.consul import (
    ConsulDouble,
    format_go_duration,
    parse_acl_rules,
    parse_go_duration,
)

pytest_plugins = ["tests.consul_setup"]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: A blocked query woke on the change (target 0.5 s; 3x that on a busy machine), not at the
#: end of its 5 s wait.
WOKE = 1.5


def _client_for(double: ConsulDouble, timeout: float = 10.0) -> Any:
    return consul_client(double.host, double.port, token=double.acl_token, timeout=timeout)


class _Background:
    """Run a call in a thread; keep its result or exception and when it finished."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def join(self, timeout: float = 10.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result

    @property
    def elapsed(self) -> float:
        return self.finished_at - self.started_at


# --------------------------------------------------------------------------- KV


def test_kv_put_get_delete_and_indexes(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("alpha")
    assert c.kv.put(key, "one") is True
    index, entry = c.kv.get(key)
    assert entry["Value"] == b"one"
    assert entry["Key"] == key
    assert entry["CreateIndex"] == entry["ModifyIndex"] == int(index)
    assert entry["LockIndex"] == 0
    assert "Session" not in entry

    assert c.kv.put(key, "two") is True
    index2, entry2 = c.kv.get(key)
    assert entry2["Value"] == b"two"
    assert entry2["CreateIndex"] == entry["CreateIndex"]
    assert entry2["ModifyIndex"] > entry["ModifyIndex"]
    assert int(index2) == entry2["ModifyIndex"]

    assert c.kv.delete(key) is True
    _, gone = c.kv.get(key)
    assert gone is None


def test_missing_key_is_404_with_index_headers(consul: ConsulTarget) -> None:
    resp = requests.get(
        f"{consul.url}/v1/kv/{consul.key('missing')}", headers=consul.headers, timeout=5
    )
    assert resp.status_code == 404
    assert int(resp.headers["X-Consul-Index"]) >= 1
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert "X-Consul-LastContact" in resp.headers


def test_empty_value_reads_back_as_none_and_flags_kept(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("empty")
    assert c.kv.put(key, None, flags=42) is True
    _, entry = c.kv.get(key)
    assert entry["Value"] is None
    assert entry["Flags"] == 42


def test_identical_write_keeps_modify_index(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("same")
    c.kv.put(key, "v")
    _, before = c.kv.get(key)
    assert c.kv.put(key, "v") is True
    _, after = c.kv.get(key)
    assert after["ModifyIndex"] == before["ModifyIndex"]


def test_cas_success_and_stale_index_failure(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("rotation")
    c.kv.put(key, "v1")
    _, entry = c.kv.get(key)
    stale = entry["ModifyIndex"]
    assert c.kv.put(key, "v2", cas=stale) is True
    assert c.kv.put(key, "v3", cas=stale) is False
    _, entry = c.kv.get(key)
    assert entry["Value"] == b"v2"
    assert c.kv.put(consul.key("never-created"), "x", cas=stale) is False


def test_cas_zero_is_create_only(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("create-only")
    assert c.kv.put(key, "first", cas=0) is True
    assert c.kv.put(key, "second", cas=0) is False
    _, entry = c.kv.get(key)
    assert entry["Value"] == b"first"


def test_delete_cas(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("del-cas")
    c.kv.put(key, "v")
    _, entry = c.kv.get(key)
    assert c.kv.delete(key, cas=entry["ModifyIndex"] + 1000) is False
    assert c.kv.delete(key, cas=entry["ModifyIndex"]) is True
    assert c.kv.get(key)[1] is None


def test_recurse_keys_separator_and_delete_tree(consul: ConsulTarget) -> None:
    c = consul.client()
    for name in ("nodes/a", "nodes/b", "nodes/deep/c", "rotation"):
        c.kv.put(consul.key(name), name)
    index, items = c.kv.get(consul.key("nodes/"), recurse=True)
    assert [i["Key"] for i in items] == [
        consul.key(n) for n in ("nodes/a", "nodes/b", "nodes/deep/c")
    ]
    assert int(index) == max(i["ModifyIndex"] for i in items)
    _, keys = c.kv.get(consul.prefix, keys=True, separator="/")
    assert keys == [consul.key("nodes/"), consul.key("rotation")]
    _, raw = c.kv.get(consul.key("nodes/"), keys=True)
    assert len(raw) == 3
    assert c.kv.delete(consul.key("nodes/"), recurse=True) is True
    assert c.kv.get(consul.key("nodes/"), recurse=True)[1] is None
    assert c.kv.get(consul.key("rotation"))[1]["Value"] == b"rotation"


def test_raw_read(consul: ConsulTarget) -> None:
    consul.client().kv.put(consul.key("raw"), b"\x00\xffbytes")
    resp = requests.get(
        f"{consul.url}/v1/kv/{consul.key('raw')}?raw", headers=consul.headers, timeout=5
    )
    assert resp.status_code == 200
    assert resp.content == b"\x00\xffbytes"


# ------------------------------------------------------------------ blocking reads


def test_blocking_get_returns_quickly_on_change(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("active-root")
    c.kv.put(key, "pki_root_a")
    index, _ = c.kv.get(key)
    watcher = _Background(lambda: c.kv.get(key, index=index, wait="5s"))
    time.sleep(0.2)
    changed_at = time.monotonic()
    consul.client().kv.put(key, "pki_root_b")
    new_index, entry = watcher.join()
    assert watcher.finished_at - changed_at < WOKE
    assert int(new_index) > int(index)
    assert entry["Value"] == b"pki_root_b"


def test_blocking_get_without_change_returns_after_wait_unchanged(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("quiet")
    c.kv.put(key, "v")
    index, _ = c.kv.get(key)
    started = time.monotonic()
    new_index, entry = c.kv.get(key, index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 3 * (1.0 + 1.0 / 16), "the wait (1 s, plus up to 1/16 jitter)"
    assert new_index == index
    assert entry["Value"] == b"v"


def test_recurse_blocking_wakes_on_any_change_under_prefix(consul: ConsulTarget) -> None:
    c = consul.client()
    prefix = consul.key("nodes/")
    c.kv.put(prefix + "n1", "phase-0")
    index, _ = c.kv.get(prefix, recurse=True)
    watcher = _Background(lambda: c.kv.get(prefix, recurse=True, index=index, wait="5s"))
    time.sleep(0.2)
    changed_at = time.monotonic()
    consul.client().kv.put(prefix + "n2", "phase-0")
    new_index, items = watcher.join()
    assert watcher.finished_at - changed_at < WOKE
    assert int(new_index) > int(index)
    assert [i["Key"] for i in items] == [prefix + "n1", prefix + "n2"]


def test_index_zero_returns_immediately(consul: ConsulTarget) -> None:
    consul.client().kv.put(consul.key("k"), "v")
    started = time.monotonic()
    resp = requests.get(
        f"{consul.url}/v1/kv/{consul.key('k')}?index=0&wait=5s", headers=consul.headers, timeout=10
    )
    assert resp.status_code == 200
    assert time.monotonic() - started < WOKE


def test_invalid_wait_is_400(consul: ConsulTarget) -> None:
    resp = requests.get(
        f"{consul.url}/v1/kv/{consul.key('k')}?index=5&wait=soon", headers=consul.headers, timeout=5
    )
    assert resp.status_code == 400
    assert resp.text == "Invalid wait time"


# ---------------------------------------------------------------------- sessions


def test_session_create_info_renew_destroy(consul: ConsulTarget) -> None:
    c = consul.client()
    sid = c.session.create(name=consul.key("s"), ttl=10, behavior="delete", lock_delay=0)
    _, info = c.session.info(sid)
    assert info["ID"] == sid
    assert info["TTL"] == "10s"
    assert info["Behavior"] == "delete"
    assert info["LockDelay"] == 0
    renewed = c.session.renew(sid)
    assert renewed["ID"] == sid
    assert sid in [s["ID"] for s in c.session.list()[1]]
    assert c.session.destroy(sid) is True
    assert c.session.info(sid)[1] is None
    with pytest.raises(consul_lib.NotFound):
        c.session.renew(sid)
    assert c.session.destroy(sid) is True  # idempotent


def test_session_ttl_out_of_range_is_refused(consul: ConsulTarget) -> None:
    for ttl in ("5s", "86401s"):
        resp = requests.put(
            f"{consul.url}/v1/session/create",
            headers=consul.headers,
            json={"Name": consul.key("bad"), "TTL": ttl},
            timeout=5,
        )
        assert resp.status_code == 500
        assert "Invalid Session TTL" in resp.text
        assert "must be between" in resp.text


def test_acquire_refused_while_held_then_release(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("nodes/broker-1")
    s1 = c.session.create(name=consul.key("s1"), ttl=10, lock_delay=0)
    s2 = c.session.create(name=consul.key("s2"), ttl=10, lock_delay=0)
    try:
        assert c.kv.put(key, "held-by-1", acquire=s1) is True
        _, entry = c.kv.get(key)
        assert entry["Session"] == s1
        assert entry["LockIndex"] == 1
        assert c.kv.put(key, "held-by-2", acquire=s2) is False
        assert c.kv.put(key, "updated", acquire=s1) is True  # holder updates, LockIndex kept
        assert c.kv.get(key)[1]["LockIndex"] == 1
        assert c.kv.put(key, "nope", release=s2) is False
        assert c.kv.put(key, "released", release=s1) is True
        _, entry = c.kv.get(key)
        assert "Session" not in entry
        assert entry["Value"] == b"released"
        assert c.kv.put(key, "held-by-2", acquire=s2) is True
        assert c.kv.get(key)[1]["LockIndex"] == 2
    finally:
        c.session.destroy(s1)
        c.session.destroy(s2)


def test_acquire_with_unknown_session_is_an_error(consul: ConsulTarget) -> None:
    c = consul.client()
    with pytest.raises(consul_lib.ConsulException, match="invalid session"):
        c.kv.put(consul.key("k"), "v", acquire=str(uuid.uuid4()))


def test_destroy_with_release_behaviour_keeps_key_and_lock_delay_blocks(
    consul: ConsulTarget,
) -> None:
    c = consul.client()
    key = consul.key("lock")
    s1 = c.session.create(name=consul.key("s1"), ttl=10, lock_delay=0.5)
    s2 = c.session.create(name=consul.key("s2"), ttl=10, lock_delay=0)
    try:
        assert c.kv.put(key, "v", acquire=s1) is True
        c.session.destroy(s1)
        destroyed_at = time.monotonic()
        _, entry = c.kv.get(key)
        assert entry["Value"] == b"v"
        assert "Session" not in entry
        assert c.kv.put(key, "v2", acquire=s2) is False  # lock-delay in force
        assert c.kv.put(key, "plain write") is True  # lock-delay only affects acquire
        time.sleep(max(0.0, 0.6 - (time.monotonic() - destroyed_at)))
        assert c.kv.put(key, "v2", acquire=s2) is True
    finally:
        c.session.destroy(s1)
        c.session.destroy(s2)


# ------------------------------------------------------- double-only fault injection


def test_expired_session_deletes_held_key_and_wakes_watcher(
    consul_double: ConsulDouble,
) -> None:
    c = _client_for(consul_double)
    sid = c.session.create(ttl=15, behavior="delete", lock_delay=0)
    assert c.kv.put("nodes/n1", "alive", acquire=sid) is True
    index, _ = c.kv.get("nodes/n1")
    watcher = _Background(lambda: c.kv.get("nodes/n1", index=index, wait="5s"))
    time.sleep(0.2)
    expired_at = time.monotonic()
    assert consul_double.expire_session(sid) is True
    new_index, entry = watcher.join()
    assert watcher.finished_at - expired_at < WOKE
    assert entry is None
    assert int(new_index) > int(index)
    with pytest.raises(consul_lib.NotFound):
        c.session.renew(sid)
    assert consul_double.expire_session(sid) is False


def test_ttl_expires_after_twice_the_ttl_unless_renewed() -> None:
    with ConsulDouble(session_ttl_min=0.1) as double:
        url = double.url
        sid = requests.put(
            f"{url}/v1/session/create", timeout=5, json={"TTL": "0.3s", "Behavior": "release"}
        ).json()["ID"]
        kept = requests.put(
            f"{url}/v1/session/create", timeout=5, json={"TTL": "0.3s", "LockDelay": "0s"}
        ).json()["ID"]
        requests.put(f"{url}/v1/kv/k?acquire={sid}", data="v", timeout=5)
        started = time.monotonic()
        time.sleep(0.35)  # past the TTL, inside the 2x grace
        assert sid in double.session_ids()
        while time.monotonic() - started < 1.0:
            assert requests.put(f"{url}/v1/session/renew/{kept}", timeout=5).status_code == 200
            time.sleep(0.1)
        assert sid not in double.session_ids()
        assert kept in double.session_ids()
        entry = requests.get(f"{url}/v1/kv/k", timeout=5).json()[0]
        assert "Session" not in entry
        # the expired session's key is under the default 15 s lock-delay
        assert requests.put(f"{url}/v1/kv/k?acquire={kept}", timeout=5).json() is False


def test_spurious_wakeups_return_early_with_no_change(consul_double: ConsulDouble) -> None:
    c = _client_for(consul_double)
    c.kv.put("k", "v")
    index, _ = c.kv.get("k")
    consul_double.spurious_wakeups(True, after=0.05)
    started = time.monotonic()
    new_index, entry = c.kv.get("k", index=index, wait="5s")
    assert time.monotonic() - started < WOKE
    assert new_index == index
    assert entry["Value"] == b"v"
    consul_double.spurious_wakeups(False)


def test_missing_key_watch_wakes_on_unrelated_write(consul_double: ConsulDouble) -> None:
    """A missing key reports the KV table index, so any KV write wakes its watchers."""
    c = _client_for(consul_double)
    index, value = c.kv.get("absent")
    assert value is None
    watcher = _Background(lambda: c.kv.get("absent", index=index, wait="5s"))
    time.sleep(0.1)
    _client_for(consul_double).kv.put("elsewhere", "x")
    new_index, value = watcher.join()
    assert value is None
    assert int(new_index) > int(index)
    assert watcher.elapsed < WOKE + 0.5  # with the 0.1-0.2 s before the change


def test_restart_without_data_makes_saved_index_ahead(consul_double: ConsulDouble) -> None:
    """Real Consul blocks a query whose index is ahead for the whole wait, even through
    writes (their indexes are still lower), then answers with a LOWER index."""
    c = _client_for(consul_double)
    for n in range(5):
        c.kv.put("rotation", f"v{n}")
    old_index, _ = c.kv.get("rotation")
    consul_double.restart(keep_data=False)
    assert consul_double.kv_snapshot() == {}
    watcher = _Background(lambda: c.kv.get("rotation", index=old_index, wait="1s"))
    time.sleep(0.2)
    _client_for(consul_double).kv.put("rotation", "after-restart")
    new_index, entry = watcher.join()
    assert watcher.elapsed >= 0.95
    assert int(new_index) < int(old_index)
    assert entry["Value"] == b"after-restart"


def test_restart_keeping_data_drops_blocked_queries(consul_double: ConsulDouble) -> None:
    c = _client_for(consul_double)
    c.kv.put("k", "v")
    index, _ = c.kv.get("k")
    watcher = _Background(lambda: c.kv.get("k", index=index, wait="5s"))
    time.sleep(0.2)
    consul_double.restart(keep_data=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        watcher.join()
    new_index, entry = c.kv.get("k")
    assert new_index == index
    assert entry["Value"] == b"v"


def test_reset_index_wakes_blocked_query_with_lower_index(consul_double: ConsulDouble) -> None:
    c = _client_for(consul_double)
    for n in range(5):
        c.kv.put("k", f"v{n}")
    index, _ = c.kv.get("k")
    watcher = _Background(lambda: c.kv.get("k", index=index, wait="5s"))
    time.sleep(0.2)
    consul_double.reset_index(3)
    new_index, entry = watcher.join()
    assert watcher.elapsed < WOKE + 0.5  # with the 0.1-0.2 s before the change
    assert new_index == "3"
    assert entry["Value"] == b"v4"
    assert entry["ModifyIndex"] == 3


def test_drop_connections_is_a_connection_error(consul_double: ConsulDouble) -> None:
    c = _client_for(consul_double)
    c.kv.put("k", "v")
    index, _ = c.kv.get("k")
    watcher = _Background(lambda: c.kv.get("k", index=index, wait="5s"))
    time.sleep(0.2)
    assert consul_double.drop_connections() == 1
    with pytest.raises(requests.exceptions.ConnectionError):
        watcher.join()
    assert watcher.elapsed < WOKE + 0.5  # with the 0.1-0.2 s before the change
    assert c.kv.get("k")[1]["Value"] == b"v"  # the agent itself is fine
    statuses = [r.status for r in consul_double.request_log if r.query.get("index")]
    assert statuses == [None]


def test_set_down_refuses_connections_then_recovers(consul_double: ConsulDouble) -> None:
    c = _client_for(consul_double, timeout=2)
    c.kv.put("k", "v")
    port = consul_double.port
    consul_double.set_down(True)
    assert consul_double.is_down
    with pytest.raises(requests.exceptions.ConnectionError):
        c.kv.get("k")
    consul_double.set_down(False)
    assert consul_double.port == port
    assert c.kv.get("k")[1]["Value"] == b"v"


def test_acl_token_required() -> None:
    with ConsulDouble(acl_token="s3cret") as double:
        anonymous = consul_client(double.host, double.port)
        with pytest.raises(consul_lib.ACLPermissionDenied, match="Permission denied"):
            anonymous.kv.get("k")
        wrong = consul_client(double.host, double.port, token="other")
        with pytest.raises(consul_lib.ACLPermissionDenied, match="ACL not found"):
            wrong.kv.put("k", "v")
        good = consul_client(double.host, double.port, token="s3cret")
        assert good.kv.put("k", "v") is True
        resp = requests.get(f"{double.url}/v1/kv/k?token=s3cret", timeout=5)
        assert resp.status_code == 200


def test_request_log_and_failed_cas_consumes_an_index(consul_double: ConsulDouble) -> None:
    c = _client_for(consul_double)
    c.kv.put("k", "v")
    _, entry = c.kv.get("k")
    assert c.kv.put("k", "x", cas=entry["ModifyIndex"] + 7) is False
    assert c.kv.put("k", "w") is True
    _, after = c.kv.get("k")
    assert after["ModifyIndex"] == entry["ModifyIndex"] + 2  # the failed CAS went to Raft
    log = consul_double.request_log
    assert log[0] == ("PUT", "/v1/kv/k", {}, 200)
    assert log[2].query == {"cas": str(entry["ModifyIndex"] + 7)}


def test_standalone_entry_point() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.consul", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith("http://127.0.0.1:")
        resp = requests.put(f"{info['url']}/v1/kv/hello", data="world", timeout=5)
        assert resp.json() is True
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_go_durations() -> None:
    assert parse_go_duration("15s") == 15_000_000_000
    assert parse_go_duration("1m30s") == 90_000_000_000
    assert parse_go_duration("0.5s") == 500_000_000
    assert parse_go_duration("0") == 0
    for bad in ("", "5", "1d", "s"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    assert format_go_duration(10_000_000_000) == "10s"
    assert format_go_duration(24 * 3600 * 1_000_000_000) == "24h0m0s"
    assert format_go_duration(1_500_000) == "1.5ms"


# ------------------------------------------------- scoped wake-ups (memdb watch channels)


def _returned_within(watcher: _Background, seconds: float) -> bool:
    watcher._thread.join(seconds)
    return not watcher._thread.is_alive()


def test_single_key_watch_ignores_other_keys_and_wakes_on_its_own(consul: ConsulTarget) -> None:
    """A found key's watch is its radix leaf's channel (kvsGetTxn -> GetWatch): only a write
    to that key closes it."""
    c = consul.client()
    key, other = consul.key("rotation"), consul.key("nodes/n1")
    c.kv.put(key, "r0")
    c.kv.put(other, "n0")
    index, _ = c.kv.get(key)
    watcher = _Background(lambda: c.kv.get(key, index=index, wait="5s"))
    time.sleep(0.2)
    writer = consul.client()
    for n in range(5):
        writer.kv.put(other, f"n{n + 1}")
        writer.kv.put(consul.key(f"nodes/new-{n}"), "x")
    assert not _returned_within(watcher, 0.5), "a write to another key woke the key's watcher"
    changed_at = time.monotonic()
    writer.kv.put(key, "r1")
    new_index, entry = watcher.join()
    assert watcher.finished_at - changed_at < WOKE
    assert entry["Value"] == b"r1"
    assert int(new_index) == entry["ModifyIndex"]


def test_prefix_watch_wakes_only_for_writes_under_the_prefix(consul: ConsulTarget) -> None:
    c = consul.client()
    prefix = consul.key("nodes/")
    c.kv.put(prefix + "n1", "x")
    c.kv.put(consul.key("rotation"), "r0")
    index, _ = c.kv.get(prefix, recurse=True)
    watcher = _Background(lambda: c.kv.get(prefix, recurse=True, index=index, wait="5s"))
    time.sleep(0.2)
    writer = consul.client()
    writer.kv.put(consul.key("rotation"), "r1")
    writer.kv.put(consul.key("nodesX"), "outside, shares the text of the prefix")
    writer.kv.put(consul.key("keeper"), "k")
    assert not _returned_within(watcher, 0.5), "a write outside the prefix woke the list"
    changed_at = time.monotonic()
    writer.kv.put(prefix + "n2", "y")
    new_index, items = watcher.join()
    assert watcher.finished_at - changed_at < WOKE
    assert [i["Key"] for i in items] == [prefix + "n1", prefix + "n2"]
    assert int(new_index) == items[1]["ModifyIndex"]


def test_missing_key_watch_is_scoped_to_its_radix_node(consul: ConsulTarget) -> None:
    """GetWatch on a missing key returns the channel of the last radix node visited: here the
    leaf node of ``a/x`` (the only key sharing ``a/``), so writes under ``b/`` leave it alone,
    while rewriting ``a/x`` wakes it with the (higher) table index and no entry."""
    c = consul.client()
    c.kv.put(consul.key("a/x"), "1")
    c.kv.put(consul.key("b/y"), "1")
    index, value = c.kv.get(consul.key("a/keeper"))
    assert value is None
    watcher = _Background(lambda: c.kv.get(consul.key("a/keeper"), index=index, wait="5s"))
    time.sleep(0.2)
    writer = consul.client()
    writer.kv.put(consul.key("b/y"), "2")
    writer.kv.put(consul.key("b/z"), "1")
    assert not _returned_within(watcher, 0.5), "a write in another radix subtree woke it"
    writer.kv.put(consul.key("a/x"), "2")
    new_index, value = watcher.join()
    assert value is None
    assert int(new_index) > int(index)


def test_double_counts_no_reruns_for_unrelated_writes(consul_double: ConsulDouble) -> None:
    c = _client_for(consul_double)
    c.kv.put("p/rotation", "r0")
    index, _ = c.kv.get("p/rotation")
    list_index, _ = c.kv.get("p/", recurse=True)
    one = _Background(lambda: c.kv.get("p/rotation", index=index, wait="5s"))
    c2 = _client_for(consul_double)
    listing = _Background(lambda: c2.kv.get("p/", recurse=True, index=list_index, wait="5s"))
    _wait_blocked(consul_double, 2)
    before = consul_double.compute_reruns
    writer = _client_for(consul_double)
    writer.kv.put("elsewhere/k", "v")
    time.sleep(0.1)
    assert consul_double.compute_reruns == before
    writer.kv.put("p/nodes/n1", "v")  # wakes the list (it returns), not the single key
    listing.join()
    assert consul_double.compute_reruns == before + 1
    assert consul_double.blocked_queries == 1
    writer.kv.put("p/rotation", "r1")
    assert one.join()[1]["Value"] == b"r1"
    assert consul_double.compute_reruns == before + 2


def _wait_blocked(double: ConsulDouble, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while double.blocked_queries < count:
        assert time.monotonic() < deadline, f"only {double.blocked_queries} of {count} blocked"
        time.sleep(0.02)


def _read_response(sock: Any) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_thousand_blocked_key_watchers_cost_nothing_per_unrelated_write(
    consul_double: ConsulDouble,
) -> None:
    """1,000 blocked single-key GETs (500 on distinct keys, 500 on one key) stay asleep through
    1,000 writes to other keys: zero compute re-runs (one shared condition used to re-run all
    1,000 on every write, 1,000,000 re-runs); writing their keys then returns every one."""
    c = _client_for(consul_double)
    for n in range(500):
        c.kv.put(f"fleet/watch/{n}", "v0")
    c.kv.put("fleet/rotation", "v0")
    indexes = {n: int(c.kv.get(f"fleet/watch/{n}")[0]) for n in range(500)}
    rotation_index = int(c.kv.get("fleet/rotation")[0])
    socks = []
    try:
        for n in range(1000):
            path, idx = (
                (f"fleet/watch/{n}", indexes[n]) if n < 500 else ("fleet/rotation", rotation_index)
            )
            sock = socket.create_connection((consul_double.host, consul_double.port), timeout=30)
            sock.sendall(
                f"GET /v1/kv/{path}?index={idx}&wait=60s HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            socks.append(sock)
        _wait_blocked(consul_double, 1000)
        before = consul_double.compute_reruns
        for n in range(1000):
            c.kv.put(f"fleet/nodes/{n}", "up")
        assert consul_double.compute_reruns == before
        assert consul_double.blocked_queries == 1000
        for n in range(500):
            c.kv.put(f"fleet/watch/{n}", "v1")
        c.kv.put("fleet/rotation", "v1")
        for sock in socks:
            status, _, body = _read_response(sock)
            assert status == 200
            assert json.loads(body)[0]["Value"] is not None
        assert consul_double.compute_reruns == before + 1000
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------------------------------------------- /v1/txn
# agent/txn_endpoint.go Txn/convertOps, agent/consul/txn_endpoint.go preCheck/Apply,
# agent/consul/state/txn.go txnKVS/txnDispatch, agent/consul/state/kvs.go (error texts).


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _txn(consul: ConsulTarget, ops: Any, **kwargs: Any) -> requests.Response:
    return requests.put(
        f"{consul.url}/v1/txn", headers=consul.headers, timeout=10, **(
            kwargs or {"json": ops}
        )
    )


def _kv(verb: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


def test_txn_writes_in_one_index_and_answers_results(consul: ConsulTarget) -> None:
    a, b = consul.key("txn/a"), consul.key("txn/b")
    resp = _txn(consul, [_kv("set", a, Value=_b64(b"one"), Flags=7),
                         _kv("cas", b, Value=_b64(b"two"), Index=0), _kv("get", a)])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["Errors"] is None
    set_a, cas_b, get_a = (r["KV"] for r in body["Results"])
    assert set_a["Key"] == a and set_a["Value"] is None and set_a["Flags"] == 7
    assert cas_b["Key"] == b and cas_b["Value"] is None
    assert get_a["Value"] == _b64(b"one"), "get returns the value written earlier in the txn"
    assert set_a["ModifyIndex"] == cas_b["ModifyIndex"] == get_a["ModifyIndex"], "one index"
    c = consul.client()
    _, entry = c.kv.get(b)
    assert entry["Value"] == b"two" and entry["ModifyIndex"] == cas_b["ModifyIndex"]
    # a delete gives no result entry
    resp = _txn(consul, [_kv("delete", a), _kv("delete-cas", b, Index=cas_b["ModifyIndex"])])
    assert resp.status_code == 200 and resp.json() == {"Results": [], "Errors": None}
    assert c.kv.get(a)[1] is None and c.kv.get(b)[1] is None


def test_txn_rolls_back_and_reports_every_failed_op(consul: ConsulTarget) -> None:
    c = consul.client()
    lock, rec = consul.key("keeper"), consul.key("rotation")
    session = c.session.create(name=consul.prefix + "txn", ttl=30, lock_delay=0)
    assert c.kv.put(lock, "me", acquire=session)
    assert c.kv.put(rec, "v1")
    _, before = c.kv.get(rec)
    resp = _txn(consul, [_kv("set", consul.key("other"), Value=_b64(b"x")),
                         _kv("check-session", lock, Session="not-the-holder"),
                         _kv("cas", rec, Value=_b64(b"v2"), Index=before["ModifyIndex"] + 99)])
    assert resp.status_code == 409, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"Results": None, "Errors": [
        {"OpIndex": 1, "What": f'failed session check for key "{lock}", current session '
                               f'"{session}" != "not-the-holder"'},
        {"OpIndex": 2, "What": f'failed to set key "{rec}", index is stale'}]}
    assert c.kv.get(consul.key("other"))[1] is None, "the set before the failure rolled back"
    assert c.kv.get(rec)[1]["ModifyIndex"] == before["ModifyIndex"]
    # the fenced write of the keeper: check-session + cas
    resp = _txn(consul, [_kv("check-session", lock, Session=session),
                         _kv("cas", rec, Value=_b64(b"v2"), Index=before["ModifyIndex"])])
    assert resp.status_code == 200, resp.text
    checked, written = (r["KV"] for r in resp.json()["Results"])
    assert checked["Key"] == lock and checked["Session"] == session and checked["Value"] is None
    assert written["Key"] == rec and written["Value"] is None
    assert c.kv.get(rec)[1]["Value"] == b"v2"
    c.session.destroy(session)


def test_txn_error_texts(consul: ConsulTarget) -> None:
    c = consul.client()
    k, gone = consul.key("k"), consul.key("gone")
    assert c.kv.put(k, "v")
    _, entry = c.kv.get(k)
    index = entry["ModifyIndex"]
    session = c.session.create(name=consul.prefix + "txn", ttl=30, lock_delay=0)
    other = c.session.create(name=consul.prefix + "txn-other", ttl=30, lock_delay=0)
    assert c.kv.put(consul.key("held"), "x", acquire=other)
    held = consul.key("held")
    cases = [
        (_kv("check-session", gone, Session=session),
         f'failed to check session, key "{gone}" doesn\'t exist'),
        (_kv("check-session", k, Session=session),
         f'failed session check for key "{k}", current session "" != "{session}"'),
        (_kv("check-index", gone, Index=1), f'failed to check index, key "{gone}" doesn\'t exist'),
        (_kv("check-index", k, Index=index + 1),
         f'failed index check for key "{k}", current modify index {index} != {index + 1}'),
        (_kv("check-not-exists", k), f'key "{k}" exists'),
        (_kv("get", gone), f'key "{gone}" doesn\'t exist'),
        (_kv("cas", k, Value=_b64(b"x"), Index=0), f'failed to set key "{k}", index is stale'),
        (_kv("cas", gone, Value=_b64(b"x"), Index=5),
         f'failed to set key "{gone}", index is stale'),
        (_kv("delete-cas", k, Index=index + 1), f'failed to delete key "{k}", index is stale'),
        (_kv("lock", held, Session=session), f'failed to lock key "{held}", lock is already held'),
        (_kv("lock", k), "missing session"),
        (_kv("lock", k, Session="00000000-0000-0000-0000-000000000000"),
         'invalid session "00000000-0000-0000-0000-000000000000"'),
        (_kv("unlock", held, Session=session),
         f'failed to unlock key "{held}", lock isn\'t held, or is held by another session'),
        (_kv("frob", k), 'unknown KV verb "frob"'),
        (_kv("set", "", Value=_b64(b"x")), "Must provide key"),
    ]
    for op, what in cases:
        resp = _txn(consul, [op])
        assert resp.status_code == 409, (op, resp.text)
        assert resp.json()["Errors"] == [{"OpIndex": 0, "What": what}], op
    # the checks that pass: check-index, check-not-exists, delete-cas of an absent key
    resp = _txn(consul, [_kv("check-index", k, Index=index), _kv("check-not-exists", gone),
                         _kv("delete-cas", gone, Index=3)])
    assert resp.status_code == 200, resp.text
    assert [r["KV"]["Key"] for r in resp.json()["Results"]] == [k]
    c.session.destroy(session)
    c.session.destroy(other)


def test_txn_lock_unlock_like_acquire_release(consul: ConsulTarget) -> None:
    c = consul.client()
    key = consul.key("lock")
    session = c.session.create(name=consul.prefix + "txn", ttl=30, lock_delay=0)
    resp = _txn(consul, [_kv("lock", key, Value=_b64(b"me"), Session=session)])
    assert resp.status_code == 200, resp.text
    locked = resp.json()["Results"][0]["KV"]
    assert locked["Session"] == session and locked["LockIndex"] == 1
    _, entry = c.kv.get(key)
    assert entry["Session"] == session and entry["Value"] == b"me"
    resp = _txn(consul, [_kv("unlock", key, Value=_b64(b"free"), Session=session)])
    assert resp.status_code == 200, resp.text
    _, entry = c.kv.get(key)
    assert "Session" not in entry and entry["LockIndex"] == 1 and entry["Value"] == b"free"
    c.session.destroy(session)


def test_txn_read_only_answers_from_the_state_store(consul: ConsulTarget) -> None:
    c = consul.client()
    assert c.kv.put(consul.key("tree/a"), "1") and c.kv.put(consul.key("tree/b"), "2")
    resp = _txn(consul, [_kv("get-tree", consul.key("tree/"))])
    assert resp.status_code == 200, resp.text
    assert [(r["KV"]["Key"], r["KV"]["Value"]) for r in resp.json()["Results"]] == [
        (consul.key("tree/a"), _b64(b"1")), (consul.key("tree/b"), _b64(b"2"))]
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert "X-Consul-LastContact" in resp.headers
    resp = _txn(consul, [_kv("delete-tree", consul.key("tree/"))])
    assert resp.status_code == 200 and resp.json()["Results"] == []
    assert c.kv.get(consul.key("tree/"), recurse=True)[1] is None


def test_txn_malformed_bodies_and_limits(consul: ConsulTarget) -> None:
    for body in (b"{", b"", b'{"KV": {}}', b'[{"KV": {"Key": 5}}]',
                 b'[{"KV": {"Verb": "set", "Key": "k", "Value": "not base64!"}}]'):
        resp = _txn(consul, None, data=body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.text.startswith("Failed to parse body: "), resp.text
    ops = [_kv("get", consul.key(f"k{i}")) for i in range(129)]
    resp = _txn(consul, ops)
    assert resp.status_code == 413
    assert resp.text.startswith("Transaction contains too many operations (129 > ")
    resp = _txn(consul, [_kv("check-not-exists", consul.key(f"k{i}")) for i in range(64)])
    assert resp.status_code == 200, resp.text
    resp = _txn(consul, [_kv("set", consul.key("big"), Value=_b64(b"x" * (512 * 1024 + 1)))])
    assert resp.status_code == 413


def test_txn_limit_is_64_operations_as_in_consul_1_10(consul_double: ConsulDouble) -> None:
    url = f"{consul_double.url}/v1/txn"
    resp = requests.put(url, json=[_kv("get", f"k{i}") for i in range(65)], timeout=10)
    assert (resp.status_code, resp.text) == (413, "Transaction contains too many operations "
                                                  "(65 > 64)")
    assert requests.get(url, timeout=10).status_code == 405


def test_txn_index_use_and_lock_delay(consul_double: ConsulDouble) -> None:
    url = f"{consul_double.url}/v1/txn"
    start = consul_double.index
    assert requests.put(url, json=[_kv("get", "nope")], timeout=10).status_code == 409
    assert consul_double.index == start, "a read-only txn does not go through Raft"
    assert requests.put(url, json=[_kv("cas", "k", Value=_b64(b"x"), Index=9)],
                        timeout=10).status_code == 409
    assert consul_double.index == start + 1, "a rolled-back write consumed an index"
    c = _client_for(consul_double)
    session = c.session.create(ttl=30, lock_delay=15, behavior="release")
    assert c.kv.put("held", "x", acquire=session)
    c.session.destroy(session)
    other = c.session.create(ttl=30)
    before = consul_double.index
    resp = requests.put(url, json=[_kv("lock", "held", Session=other)], timeout=10)
    assert resp.status_code == 409
    assert resp.json()["Errors"] == [{"OpIndex": 0,
                                      "What": 'failed to lock key "held" due to lock delay'}]
    assert consul_double.index == before, "preCheck refuses before Raft"


def test_txn_write_wakes_only_the_watchers_of_what_it_wrote(consul: ConsulTarget) -> None:
    c = consul.client(timeout=40)
    rec, other = consul.key("rotation"), consul.key("nodes/n1")
    assert c.kv.put(rec, "v1") and c.kv.put(other, "{}")
    index, _ = c.kv.get(rec)
    other_index, _ = c.kv.get(other)
    watch_rec = _Background(lambda: c.kv.get(rec, index=index, wait="20s"))
    c2 = consul.client(timeout=40)
    watch_other = _Background(lambda: c2.kv.get(other, index=other_index, wait="3s"))
    time.sleep(0.3)
    resp = _txn(consul, [_kv("cas", rec, Value=_b64(b"v2"), Index=int(index))])
    assert resp.status_code == 200, resp.text
    new_index, entry = watch_rec.join(15)
    assert entry["Value"] == b"v2" and int(new_index) > int(index)
    assert watch_rec.elapsed < 10, "the transaction's write woke the key's watcher"
    returned, _ = watch_other.join(15)
    assert returned == other_index and watch_other.elapsed >= 2.5, "others slept on"


def test_stale_session_cannot_write_after_data_loss(consul_double: ConsulDouble) -> None:
    """The counterexample the fence closes: after a data loss a cas on index 0 succeeds
    again, a check-session with the lost session does not."""
    c = _client_for(consul_double)
    session = c.session.create(ttl=30)
    assert c.kv.put("p/keeper", "n0", acquire=session)
    consul_double.restart(keep_data=False)
    url = f"{consul_double.url}/v1/txn"
    resp = requests.put(url, json=[_kv("check-session", "p/keeper", Session=session),
                                   _kv("cas", "p/rotation", Value=_b64(b"stale"), Index=0)],
                        timeout=10)
    assert resp.status_code == 409
    assert resp.json()["Errors"] == [
        {"OpIndex": 0, "What": 'failed to check session, key "p/keeper" doesn\'t exist'}]
    assert consul_double.kv_snapshot() == {}
    assert c.kv.put("p/rotation", "stale", cas=0), "unfenced, the stale write would win"


# ------------------------------------------------------------------------------ ACL rules
# acl/policy_authorizer.go getPolicy / KeyWritePrefix, kvs_endpoint.go kvsPreApply and
# FilterDirEnt, txn_endpoint.go preCheck: these run against a real Consul too when
# CONSUL_HTTP_TOKEN is a management token (tests.consul_setup ``consul_acl``).


def _raw(target: ConsulTarget, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, target.url + path, headers=target.headers,
                            verify=target.verify, timeout=10, **kwargs)


def test_acl_exact_key_beats_prefix_and_longest_prefix_wins(consul_acl: AclTokens) -> None:
    p = consul_acl.base.prefix
    admin = consul_acl.base
    for name in ("a", "sub/b", "sub/deep/c", "sub/exact"):
        assert _raw(admin, "PUT", f"/v1/kv/{p}{name}", data=b"v").json() is True
    token = consul_acl.token(f'''
        key_prefix "{p}" {{ policy = "read" }}
        key_prefix "{p}sub/" {{ policy = "write" }}
        key_prefix "{p}sub/deep/" {{ policy = "deny" }}
        key "{p}sub/exact" {{ policy = "read" }}
    ''')
    t = consul_acl.target(token)
    writes = {name: _raw(t, "PUT", f"/v1/kv/{p}{name}", data=b"w")
              for name in ("a", "sub/b", "sub/deep/c", "sub/exact")}
    assert {n: r.status_code for n, r in writes.items()} == {
        "a": 403, "sub/b": 200, "sub/deep/c": 403, "sub/exact": 403}
    assert writes["a"].text.startswith("Permission denied")
    assert _raw(t, "GET", f"/v1/kv/{p}sub/deep/c").status_code == 403
    assert _raw(t, "GET", f"/v1/kv/{p}sub/exact").status_code == 200
    # a recursive read is filtered to what the token may read, not refused
    listed = _raw(t, "GET", f"/v1/kv/{p}?recurse")
    assert listed.status_code == 200
    assert sorted(e["Key"][len(p):] for e in listed.json()) == ["a", "sub/b", "sub/exact"]
    keys = _raw(t, "GET", f"/v1/kv/{p}?keys")
    assert sorted(k[len(p):] for k in keys.json()) == ["a", "sub/b", "sub/exact"]
    # delete of a tree needs write on the prefix and on every rule under it
    assert _raw(t, "DELETE", f"/v1/kv/{p}sub/?recurse").status_code == 403
    assert _raw(t, "DELETE", f"/v1/kv/{p}sub/b").status_code == 200


def test_acl_default_deny_and_unknown_token(consul_acl: AclTokens) -> None:
    p = consul_acl.base.prefix
    nothing = consul_acl.target(consul_acl.token('node_prefix "" { policy = "read" }'))
    assert _raw(nothing, "GET", f"/v1/kv/{p}x").status_code == 403
    assert _raw(nothing, "PUT", f"/v1/kv/{p}x", data=b"1").status_code == 403
    unknown = consul_acl.target(str(uuid.uuid4()))
    resp = _raw(unknown, "PUT", f"/v1/kv/{p}x", data=b"1")
    assert (resp.status_code, resp.text) == (403, "ACL not found")


def test_acl_txn_checks_each_op(consul_acl: AclTokens) -> None:
    p = consul_acl.base.prefix
    token = consul_acl.token(f'''
        key_prefix "{p}" {{ policy = "read" }}
        key "{p}mine" {{ policy = "write" }}
    ''')
    t = consul_acl.target(token)
    ops = [{"KV": {"Verb": "check-not-exists", "Key": f"{p}mine"}},
           {"KV": {"Verb": "set", "Key": f"{p}mine", "Value": base64.b64encode(b"1").decode()}},
           {"KV": {"Verb": "set", "Key": f"{p}theirs",
                   "Value": base64.b64encode(b"1").decode()}}]
    resp = _raw(t, "PUT", "/v1/txn", json=ops)
    assert resp.status_code == 409  # not a 403: a refusal is one of the transaction's errors
    errors = resp.json()["Errors"]
    assert [e["OpIndex"] for e in errors] == [2]
    assert errors[0]["What"].startswith("Permission denied")
    assert _raw(consul_acl.base, "GET", f"/v1/kv/{p}mine").status_code == 404  # all or nothing
    assert _raw(t, "PUT", "/v1/txn", json=ops[:2]).status_code == 200


def test_acl_sessions_need_session_write(consul_acl: AclTokens) -> None:
    p = consul_acl.base.prefix
    kv_only = consul_acl.target(consul_acl.token(f'key_prefix "{p}" {{ policy = "write" }}'))
    resp = _raw(kv_only, "PUT", "/v1/session/create", json={"Name": f"{p}s", "TTL": "15s"})
    assert resp.status_code == 403 and resp.text.startswith("Permission denied")
    both = consul_acl.target(consul_acl.token(
        f'key_prefix "{p}" {{ policy = "write" }}\nsession_prefix "" {{ policy = "write" }}'))
    created = _raw(both, "PUT", "/v1/session/create", json={"Name": f"{p}s", "TTL": "15s"})
    assert created.status_code == 200
    sid = created.json()["ID"]
    assert _raw(kv_only, "PUT", f"/v1/session/renew/{sid}").status_code == 403
    assert _raw(kv_only, "GET", f"/v1/session/info/{sid}").json() == []  # filtered
    assert _raw(both, "PUT", f"/v1/kv/{p}lock?acquire={sid}", data=b"x").json() is True
    assert _raw(both, "PUT", f"/v1/session/destroy/{sid}").status_code == 200


def test_acl_error_texts_by_version() -> None:
    """Consul 1.10/1.11 say "Permission denied"; 1.12+ name the accessor and the permission
    (acl/errors.go PermissionDeniedError.Error; hashicorp/consul#12620)."""
    for version, expected in (
        ("1.10", "Permission denied"),
        ("1.12", "Permission denied: token with AccessorID '{a}' lacks permission "
                 "'key:write' on \"p/x\""),
    ):
        with ConsulDouble(acl_token="mgmt", acl_errors=version) as double:
            secret = double.create_token('key_prefix "p/" { policy = "read" }')
            resp = requests.put(f"{double.url}/v1/kv/p/x", data=b"1", timeout=5,
                                headers={"X-Consul-Token": secret})
            assert (resp.status_code, resp.text) == (
                403, expected.format(a=double.accessor_of(secret)))
            anonymous = requests.put(f"{double.url}/v1/kv/p/x", data=b"1", timeout=5)
            assert anonymous.status_code == 403
            if version == "1.12":
                assert anonymous.text.startswith("Permission denied: anonymous token lacks "
                                                 "permission 'key:write' on \"p/x\". The "
                                                 "anonymous token is used implicitly")


def test_acl_rules_merge_deny_wins() -> None:
    rules = parse_acl_rules('key "a" { policy = "write" }\n# key "b" { policy = "write" }\n'
                            'key "a" { policy = "deny" }\nkey "c" { policy = "read" }\n'
                            'key "c" { policy = "write" }')
    assert rules == {("key", "a"): "deny", ("key", "c"): "write"}


def test_acl_token_can_be_set_on_a_running_double(consul_double: ConsulDouble) -> None:
    """Tests turn ACLs on after the fixture made the double (tests/test_rotation_consul.py)."""
    assert requests.put(f"{consul_double.url}/v1/kv/k", data=b"1", timeout=5).status_code == 200
    consul_double.acl_token = "mgmt"
    assert requests.put(f"{consul_double.url}/v1/kv/k", data=b"1", timeout=5).status_code == 403
    ok = requests.put(f"{consul_double.url}/v1/kv/k", data=b"1", timeout=5,
                      headers={"X-Consul-Token": "mgmt"})
    assert ok.status_code == 200


def test_acl_token_self_describes_the_token_and_only_a_known_one(consul_acl: AclTokens) -> None:
    """``GET /v1/acl/token/self`` (agent/acl_endpoint.go ACLTokenSelf, ACL.TokenRead by
    secret): any known token reads itself, whatever its rules; no token or an unknown one is
    403 ``ACL not found``. Together with a 403 on a direct key read, it tells a refused token
    from an empty prefix (a denied recursive read is only filtered)."""
    p = consul_acl.base.prefix
    assert _raw(consul_acl.base, "PUT", f"/v1/kv/{p}active-root", data=b"x").status_code == 200
    nothing = consul_acl.token('key_prefix "elsewhere/" { policy = "read" }')
    me = _raw(consul_acl.target(nothing), "GET", "/v1/acl/token/self")
    assert me.status_code == 200
    body = me.json()
    assert body["SecretID"] == nothing and body["AccessorID"]
    assert [pol["Name"] for pol in body["Policies"]] == [body["Description"]]  # AclTokens names
    for token in (None, str(uuid.uuid4())):
        refused = _raw(consul_acl.target(token), "GET", "/v1/acl/token/self")
        assert (refused.status_code, refused.text) == (403, "ACL not found")
    denied = consul_acl.target(nothing)
    assert _raw(denied, "GET", f"/v1/kv/{p}?recurse").status_code == 404  # filtered: "empty"
    assert _raw(denied, "GET", f"/v1/kv/{p}active-root").status_code == 403  # refused


def test_acl_token_self_without_acls_is_401() -> None:
    with ConsulDouble() as double:
        resp = requests.get(f"{double.url}/v1/acl/token/self", timeout=5)
        assert (resp.status_code, resp.text) == (401, "ACL support disabled")
