"""The Consul double's datacenters: ``?dc=`` forwarding, per-datacenter state, WAN loss.

Double only: a WAN-federated pair of real datacenters is not at hand here (docs/protocol.md
shows how to join two on one machine with ``consul join -wan``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from sidecar.consul_store import ConsulError, ConsulStore
from tests.doubles.consul import ConsulDouble, partition
from tests.doubles.consul.wan import IN_FLIGHT_LOST, NO_PATH, NOT_AVAILABLE


@pytest.fixture
def federation() -> Iterator[tuple[ConsulDouble, ConsulDouble]]:
    dc1 = ConsulDouble(datacenter="dc1", initial_index=10)
    dc2 = ConsulDouble(datacenter="dc2", initial_index=500)
    dc1.join_wan(dc2)
    try:
        yield dc1, dc2
    finally:
        dc1.close()
        dc2.close()


def test_a_forwarded_request_uses_the_remote_datacenters_kv_index_and_sessions(
        federation: tuple[ConsulDouble, ConsulDouble]) -> None:
    dc1, dc2 = federation
    assert requests.put(f"{dc1.url}/v1/kv/p/rotation?dc=dc2", data=b"r").json() is True
    local = requests.get(f"{dc1.url}/v1/kv/p/rotation")
    assert local.status_code == 404, "written in dc2 only"
    remote = requests.get(f"{dc2.url}/v1/kv/p/rotation")
    forwarded = requests.get(f"{dc1.url}/v1/kv/p/rotation?dc=dc2")
    assert remote.json()[0]["ModifyIndex"] > 500, "dc2's own index"
    assert forwarded.json() == remote.json()
    assert forwarded.headers["X-Consul-Index"] == remote.headers["X-Consul-Index"]
    session = requests.put(f"{dc1.url}/v1/session/create?dc=dc2",
                           json={"TTL": "15s", "Behavior": "delete"}).json()["ID"]
    assert requests.get(f"{dc2.url}/v1/session/info/{session}").json()
    assert requests.get(f"{dc1.url}/v1/session/info/{session}").json() == []
    assert dc1.wan_forwarded == {"dc2": 3}


def test_a_blocking_query_is_forwarded_whole(
        federation: tuple[ConsulDouble, ConsulDouble]) -> None:
    dc1, dc2 = federation
    store = ConsulStore(dc2.url, "p")
    store.put("rotation", b"1")
    index = store.get("rotation").index
    later = threading.Timer(0.3, lambda: store.put("rotation", b"2"))
    later.start()
    began = time.monotonic()
    answer = requests.get(f"{dc1.url}/v1/kv/p/rotation?dc=dc2&index={index}&wait=10s")
    later.join()
    assert answer.status_code == 200 and 0.2 < time.monotonic() - began < 9
    assert int(answer.headers["X-Consul-Index"]) > index
    assert dc1.wan_forwarded == {"dc2": 1}, "one forward for the whole wait"


def test_wan_loss_is_answered_as_consul_answers_it(
        federation: tuple[ConsulDouble, ConsulDouble]) -> None:
    dc1, dc2 = federation
    unknown = requests.get(f"{dc1.url}/v1/kv/x?dc=dc9")
    assert (unknown.status_code, unknown.text) == (500, NO_PATH)
    index = int(requests.get(f"{dc2.url}/v1/kv/x").headers["X-Consul-Index"])
    blocked: list[requests.Response] = []
    waiting = threading.Thread(target=lambda: blocked.append(requests.get(
        f"{dc1.url}/v1/kv/x?dc=dc2&index={index}&wait=30s")))
    waiting.start()
    time.sleep(0.3)
    partition(dc1, dc2, cut=True)
    waiting.join(timeout=10)
    assert (blocked[0].status_code, blocked[0].text) == (500, IN_FLIGHT_LOST)
    cut = requests.get(f"{dc1.url}/v1/kv/x?dc=dc2")
    assert (cut.status_code, cut.text) == (500, NOT_AVAILABLE)
    assert requests.get(f"{dc2.url}/v1/kv/x?dc=dc1").status_code == 500, "both ways"
    # Each side still answers its own datacenter's requests.
    assert requests.put(f"{dc1.url}/v1/kv/x", data=b"1").json() is True
    with pytest.raises(ConsulError) as failed:
        ConsulStore(dc1.url, "p", datacenter="dc2").get("rotation")
    assert failed.value.reason == "error" and NOT_AVAILABLE in str(failed.value)
    partition(dc1, dc2, cut=False)
    assert requests.get(f"{dc1.url}/v1/kv/x?dc=dc2").status_code == 404


def test_the_store_knows_its_agents_datacenter_and_writes_fenced_without_an_index(
        federation: tuple[ConsulDouble, ConsulDouble]) -> None:
    dc1, dc2 = federation
    store = ConsulStore(dc2.url, "p")
    assert store.local_datacenter() == "dc2"
    assert ConsulStore(dc1.url, "p").local_datacenter() == "dc1"
    session = store.create_session("p/n", 15)
    assert not store.put_if_locked("summary", b"x", cas=None, lock_key="keeper", session=session)
    assert store.put("keeper", b"", acquire=session)
    assert store.put_if_locked("summary", b"x", cas=None, lock_key="keeper", session=session)
    assert store.put_if_locked("summary", b"y", cas=None, lock_key="keeper", session=session)
    assert store.get("summary").entry is not None
    assert ConsulStore(dc1.url, "p", datacenter="dc2").get("summary").entry.value == b"y"
