"""Tests of the counting Consul proxy (tests/consul_proxy.py) in front of the Consul double."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from sidecar.consul_store import ConsulStore
from tests.consul_proxy import CountingProxy, ProxyStats
from tests.consul_setup import consul_client
from tests.doubles.consul import ConsulDouble

pytest_plugins = ["tests.consul_setup"]


@pytest.fixture
def proxied(consul_double: ConsulDouble) -> Iterator[tuple[ConsulDouble, CountingProxy]]:
    with CountingProxy(consul_double.url) as proxy:
        yield consul_double, proxy


def _address(proxy: CountingProxy) -> tuple[str, int]:
    return proxy.host, proxy.port


def _wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _expected_from_log(double: ConsulDouble) -> dict[str, Any]:
    log = double.request_log
    methods: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for record in log:
        methods[record.method] = methods.get(record.method, 0) + 1
        if record.status is not None:
            statuses[record.status] = statuses.get(record.status, 0) + 1
    blocking = sum(
        1
        for r in log
        if r.method == "GET"
        and r.query.get("index", "0").isdigit()
        and int(r.query.get("index", "0")) > 0
    )
    return {"requests": len(log), "methods": methods, "statuses": statuses, "blocking": blocking}


def test_consul_store_works_through_the_proxy(
    proxied: tuple[ConsulDouble, CountingProxy],
) -> None:
    double, proxy = proxied
    store = ConsulStore(proxy.url, "fleet/", request_timeout=10)
    assert store.put("rotation", b"r0") is True
    read = store.get("rotation")
    assert read.entry is not None and read.entry.value == b"r0"
    assert store.put("rotation", b"r1", cas=read.entry.modify_index) is True
    assert store.put("rotation", b"stale", cas=read.entry.modify_index) is False
    assert store.put("nodes/n1", b"up", cas=0) is True
    snapshot = store.read()
    assert snapshot.content() == {"rotation": b"r1", "nodes/n1": b"up"}
    session = store.create_session("n1", ttl_seconds=15)
    assert store.put("keeper", b"n1", acquire=session) is True
    other = store.create_session("n2", ttl_seconds=15)
    assert store.put("keeper", b"n2", acquire=other) is False
    assert store.get("keeper").entry.session == session  # type: ignore[union-attr]
    assert store.renew_session(session) is True
    store.destroy_session(session)
    store.destroy_session(other)
    store.delete("nodes/n1")
    assert store.get("nodes/n1").entry is None
    # the proxy saw exactly what the double answered
    stats = proxy.stats()
    expected = _expected_from_log(double)
    assert stats.requests == stats.responses == expected["requests"]
    assert dict(stats.methods) == expected["methods"]
    assert dict(stats.statuses) == expected["statuses"]
    assert stats.blocking_queries == expected["blocking"] == 0
    assert stats.connections == stats.upstream_connections == 1  # one keep-alive session
    assert stats.kv_entries == 1 + 2 + 1 + 0  # get rotation, read (2 keys), get keeper


def test_counts_are_exact_for_a_known_sequence(
    proxied: tuple[ConsulDouble, CountingProxy],
) -> None:
    _, proxy = proxied
    conn = http.client.HTTPConnection(*_address(proxy), timeout=10)
    body_bytes = 0

    def call(method: str, target: str, body: bytes | None = None) -> tuple[int, bytes, Any]:
        nonlocal body_bytes
        conn.request(method, target, body=body)
        resp = conn.getresponse()
        data = resp.read()
        body_bytes += len(data)
        return resp.status, data, resp.headers

    assert call("PUT", "/v1/kv/app/a", b"1")[:2] == (200, b"true")
    assert call("PUT", "/v1/kv/app/b", b"22")[:2] == (200, b"true")
    status, data, headers = call("GET", "/v1/kv/app/a")
    assert status == 200 and len(json.loads(data)) == 1
    index = headers["X-Consul-Index"]
    assert len(json.loads(call("GET", "/v1/kv/app/?recurse")[1])) == 2
    assert json.loads(call("GET", "/v1/kv/app/?keys")[1]) == ["app/a", "app/b"]
    assert call("GET", "/v1/kv/app/a?raw")[:2] == (200, b"1")
    assert call("GET", "/v1/kv/app/missing")[0] == 404
    assert call("DELETE", "/v1/kv/app/b")[:2] == (200, b"true")
    status, data, headers = call("GET", f"/v1/kv/app/a?index={index}&wait=100ms")
    assert status == 200 and headers["X-Consul-Index"] == index  # timed out unchanged
    conn.close()

    stats = counted(proxy, 9)
    assert stats.requests == stats.responses == 9
    assert dict(stats.methods) == {"PUT": 2, "GET": 6, "DELETE": 1}
    assert dict(stats.paths) == {"PUT /v1/kv/app/a": 1, "PUT /v1/kv/app/b": 1,
                                 "GET /v1/kv/app/a": 3, "GET /v1/kv/app/": 2,
                                 "GET /v1/kv/app/missing": 1, "DELETE /v1/kv/app/b": 1}
    assert stats.blocking_queries == 1
    assert dict(stats.statuses) == {200: 8, 404: 1}
    assert stats.response_body_bytes == body_bytes
    assert stats.kv_entries == 1 + 2 + 2 + 1
    assert stats.connections == stats.upstream_connections == 1
    assert isinstance(stats, ProxyStats)
    with pytest.raises(AttributeError):
        stats.requests = 0  # type: ignore[misc]

    proxy.reset()
    zero = proxy.stats()
    assert (zero.requests, zero.responses, zero.kv_entries, zero.response_body_bytes) == (0,) * 4
    assert dict(zero.methods) == {} and dict(zero.statuses) == {} and dict(zero.paths) == {}


def counted(proxy: CountingProxy, responses: int) -> ProxyStats:
    """The proxy's stats once it has counted ``responses`` responses (or after 5 s): it counts
    a response after passing it on, so the client can read it first."""
    deadline = time.monotonic() + 5
    while proxy.stats().responses < responses and time.monotonic() < deadline:
        time.sleep(0.01)
    return proxy.stats()


def test_headers_pass_through_unchanged() -> None:
    with ConsulDouble(acl_token="s3cret") as double, CountingProxy(double.url) as proxy:
        denied = requests.get(f"{proxy.url}/v1/kv/k", timeout=5)
        assert denied.status_code == 403
        ok = requests.put(
            f"{proxy.url}/v1/kv/k", data="v", headers={"X-Consul-Token": "s3cret"}, timeout=5
        )
        assert ok.json() is True
        got = requests.get(f"{proxy.url}/v1/kv/k", headers={"X-Consul-Token": "s3cret"}, timeout=5)
        assert got.headers["X-Consul-Index"] == str(got.json()[0]["ModifyIndex"])
        assert got.headers["X-Consul-KnownLeader"] == "true"
        assert dict(counted(proxy, 3).statuses) == {403: 1, 200: 2}


def test_blocking_query_through_the_proxy_returns_when_the_key_changes(
    proxied: tuple[ConsulDouble, CountingProxy],
) -> None:
    double, proxy = proxied
    c = consul_client(proxy.host, proxy.port, timeout=10)
    c.kv.put("rotation", "r0")
    index, _ = c.kv.get("rotation")
    result: list[Any] = []
    watcher = threading.Thread(
        target=lambda: result.append(c.kv.get("rotation", index=index, wait="5s")), daemon=True
    )
    watcher.start()
    _wait_for(lambda: double.blocked_queries == 1, "the query to block")
    writer = consul_client(proxy.host, proxy.port, timeout=10)
    writer.kv.put("nodes/other", "x")
    watcher.join(0.3)
    assert watcher.is_alive()
    changed_at = time.monotonic()
    writer.kv.put("rotation", "r1")
    watcher.join(5)
    assert not watcher.is_alive()
    assert time.monotonic() - changed_at < 1.5, "woke on the change (0.5 s target, x3)"
    new_index, entry = result[0]
    assert int(new_index) > int(index) and entry["Value"] == b"r1"
    assert proxy.stats().blocking_queries == 1


async def _blocking_gets(url: str, targets: list[str]) -> list[tuple[asyncio.StreamReader, Any]]:
    split = urlsplit(url)
    conns = []
    for target in targets:
        reader, writer = await asyncio.open_connection(split.hostname, split.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: consul\r\n\r\n".encode())
        conns.append((reader, writer))
    await asyncio.gather(*(w.drain() for _, w in conns))
    return conns


async def _read_responses(conns: list[tuple[asyncio.StreamReader, Any]]) -> list[tuple[int, Any]]:
    async def one(reader: asyncio.StreamReader) -> tuple[int, Any]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(
            int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")
        )
        return int(lines[0].split()[1]), json.loads(await reader.readexactly(length))

    try:
        return await asyncio.wait_for(asyncio.gather(*(one(r) for r, _ in conns)), 30)
    finally:
        for _, writer in conns:
            writer.close()


def test_500_concurrent_blocking_queries_all_return_when_their_keys_are_written(
    proxied: tuple[ConsulDouble, CountingProxy],
) -> None:
    double, proxy = proxied
    store = requests.Session()
    indexes = {}
    for n in range(250):
        store.put(f"{double.url}/v1/kv/fleet/watch/{n}", data="v0", timeout=5)
        resp = store.get(f"{double.url}/v1/kv/fleet/watch/{n}", timeout=5)
        indexes[n] = resp.headers["X-Consul-Index"]
    store.put(f"{double.url}/v1/kv/fleet/rotation", data="v0", timeout=5)
    rotation = store.get(f"{double.url}/v1/kv/fleet/rotation", timeout=5).headers["X-Consul-Index"]
    targets = [f"/v1/kv/fleet/watch/{n}?index={indexes[n]}&wait=60s" for n in range(250)]
    targets += [f"/v1/kv/fleet/rotation?index={rotation}&wait=60s"] * 250

    loop = asyncio.new_event_loop()
    try:
        conns = loop.run_until_complete(_blocking_gets(proxy.url, targets))
        _wait_for(lambda: double.blocked_queries == 500, "500 blocked queries")
        assert proxy.stats().open_upstream_connections == 500
        for n in range(250):
            store.put(f"{double.url}/v1/kv/fleet/watch/{n}", data="v1", timeout=5)
        store.put(f"{double.url}/v1/kv/fleet/rotation", data="v1", timeout=5)
        results = loop.run_until_complete(_read_responses(conns))
    finally:
        loop.close()
    assert [status for status, _ in results] == [200] * 500
    assert all(body[0]["Value"] == "djE=" for _, body in results)  # base64 of "v1"
    stats = proxy.stats()
    assert stats.blocking_queries == 500
    assert stats.connections == stats.upstream_connections == 500
    assert stats.kv_entries == 500
    _wait_for(lambda: proxy.stats().open_upstream_connections == 0, "upstream sockets closed")


def test_a_client_closing_a_long_poll_closes_its_upstream_connection(
    proxied: tuple[ConsulDouble, CountingProxy],
) -> None:
    double, proxy = proxied
    requests.put(f"{proxy.url}/v1/kv/k", data="v", timeout=5)
    index = requests.get(f"{proxy.url}/v1/kv/k", timeout=5).headers["X-Consul-Index"]
    sock = socket.create_connection(_address(proxy))
    sock.sendall(f"GET /v1/kv/k?index={index}&wait=30s HTTP/1.1\r\nHost: c\r\n\r\n".encode())
    _wait_for(lambda: double.blocked_queries == 1, "the query to block")
    assert proxy.stats().open_upstream_connections == 1
    sock.close()
    _wait_for(lambda: proxy.stats().open_upstream_connections == 0, "the upstream to close")


def test_consul_dropping_a_long_poll_is_a_connection_error_through_the_proxy(
    proxied: tuple[ConsulDouble, CountingProxy],
) -> None:
    double, proxy = proxied
    c = consul_client(proxy.host, proxy.port, timeout=10)
    c.kv.put("k", "v")
    index, _ = c.kv.get("k")
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            c.kv.get("k", index=index, wait="5s")
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _wait_for(lambda: double.blocked_queries == 1, "the query to block")
    assert double.drop_connections() == 1
    watcher.join(5)
    assert not watcher.is_alive()
    assert errors and isinstance(errors[0], requests.exceptions.ConnectionError)
    assert proxy.stats().requests == proxy.stats().responses + 1


def test_upstream_down_is_a_connection_error(
    proxied: tuple[ConsulDouble, CountingProxy],
) -> None:
    double, proxy = proxied
    double.set_down(True)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{proxy.url}/v1/kv/k", timeout=5)
    assert proxy.stats().upstream_errors == 1
    double.set_down(False)
    assert requests.get(f"{proxy.url}/v1/kv/k", timeout=5).status_code == 404


class _ChunkedHandler(BaseHTTPRequestHandler):
    """An upstream answering with chunked and with close-delimited bodies."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        body = json.dumps([{"Key": f"k{n}", "Value": None} for n in range(3)]).encode()
        if self.path.startswith("/v1/kv/chunked"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Consul-Index", "7")
            self.end_headers()
            for start in range(0, len(body), 10):
                piece = body[start : start + 10]
                self.wfile.write(f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        else:  # no length, no chunking: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True


def test_chunked_and_close_delimited_responses() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        upstream = f"http://127.0.0.1:{server.server_address[1]}"
        with CountingProxy(upstream) as proxy:
            conn = http.client.HTTPConnection(*_address(proxy), timeout=10)
            expected = json.dumps([{"Key": f"k{n}", "Value": None} for n in range(3)]).encode()
            for _ in range(2):  # keep-alive across chunked responses
                conn.request("GET", "/v1/kv/chunked?recurse")
                resp = conn.getresponse()
                assert resp.read() == expected
                assert resp.headers["X-Consul-Index"] == "7"
            conn.request("GET", "/v1/kv/plain?recurse")
            resp = conn.getresponse()
            assert resp.read() == expected
            conn.close()
            stats = proxy.stats()
            assert stats.responses == 3
            assert stats.response_body_bytes == 3 * len(expected)
            assert stats.kv_entries == 9
            assert stats.upstream_connections == 1
            _wait_for(lambda: proxy.stats().open_connections == 0, "connections to close")
    finally:
        server.shutdown()
        server.server_close()


def test_stop_closes_open_long_polls(consul_double: ConsulDouble) -> None:
    proxy = CountingProxy(consul_double.url)
    proxy.start()
    requests.put(f"{proxy.url}/v1/kv/k", data="v", timeout=5)
    index = consul_double.index
    sock = socket.create_connection(_address(proxy), timeout=5)
    sock.sendall(f"GET /v1/kv/k?index={index}&wait=30s HTTP/1.1\r\nHost: c\r\n\r\n".encode())
    _wait_for(lambda: consul_double.blocked_queries == 1, "the query to block")
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 5
    assert sock.recv(1024) == b""  # closed without a response
    sock.close()
