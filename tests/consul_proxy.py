"""A counting HTTP/1.1 reverse proxy for Consul traffic (against the double or a real agent).

``CountingProxy(upstream="http://127.0.0.1:8500")``: :meth:`~CountingProxy.start` serves on
127.0.0.1:<free port> from one asyncio thread and returns its URL; point clients at it and
read :meth:`~CountingProxy.stats`.  Built for thousands of concurrent long-poll (blocking
query) connections: each costs two coroutines and two sockets, no thread.

* Keep-alive: one upstream connection per downstream connection, opened lazily at its first
  request; when either side closes (or resets) the other is closed too, so a client giving
  up on a blocking query and Consul dropping one both look the same as without the proxy.
  If the upstream cannot be reached the downstream connection is closed without a response
  (the client sees a connection error, as it would talking to a down agent).
* Bytes are forwarded unchanged, headers included (``X-Consul-Index``, ``X-Consul-Token``);
  messages are framed by ``Content-Length`` or ``Transfer-Encoding: chunked`` (requests and
  responses), responses without either by the connection closing; 1xx interim responses,
  ``HEAD`` and 204/304 are bodiless.
* Counted: requests (by method, and by method and path: ``"POST /v1/pki/sign/kafka"``, so
  it counts a Vault's sign requests too), blocking queries (GETs whose query string has ``index`` >
  0), complete responses (by status), response body bytes (the payload, chunk framing
  excluded) and KV entries returned (the length of the JSON list of a ``GET /v1/kv/...`` 200
  that is not ``?raw``; for ``?keys``, the number of keys).

Run standalone: ``python -m tests.consul_proxy --upstream http://127.0.0.1:8500``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from urllib.parse import parse_qs, urlsplit

__all__ = ["CountingProxy", "ProxyStats"]

LISTEN_BACKLOG = 4096
_MAX_HEAD = 1 << 20


def _frozen(counts: Mapping[object, int]) -> Mapping[object, int]:
    return MappingProxyType(dict(counts))


@dataclass(frozen=True)
class ProxyStats:
    """Totals since start (or the last reset)."""

    requests: int = 0
    methods: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    paths: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    blocking_queries: int = 0
    responses: int = 0
    statuses: Mapping[int, int] = field(default_factory=lambda: _frozen({}))
    response_body_bytes: int = 0
    kv_entries: int = 0
    connections: int = 0
    upstream_connections: int = 0
    upstream_errors: int = 0
    open_connections: int = 0
    open_upstream_connections: int = 0


class _Closed(Exception):
    """The peer closed (or broke) the connection."""


@dataclass
class _Request:
    method: str
    target: str


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()
        self.open = 0
        self.open_upstream = 0

    def reset(self) -> None:
        self.requests = 0
        self.methods: collections.Counter[str] = collections.Counter()
        self.paths: collections.Counter[str] = collections.Counter()
        self.blocking = 0
        self.responses = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.body_bytes = 0
        self.kv_entries = 0
        self.connections = 0
        self.upstream_connections = 0
        self.upstream_errors = 0


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _is_chunked(headers: list[tuple[str, str]]) -> bool:
    te = _header(headers, "transfer-encoding")
    return te is not None and te.lower().split(",")[-1].strip() == "chunked"


def _wants_close(version: str, headers: list[tuple[str, str]]) -> bool:
    tokens = {t.strip().lower() for t in (_header(headers, "connection") or "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def _is_blocking(method: str, target: str) -> bool:
    if method != "GET":
        return False
    index = parse_qs(urlsplit(target).query, keep_blank_values=True).get("index")
    return bool(index) and index[0].isdigit() and int(index[0]) > 0


def _counts_kv_entries(req: _Request, status: int) -> bool:
    split = urlsplit(req.target)
    if req.method != "GET" or status != 200 or not split.path.startswith("/v1/kv/"):
        return False
    return "raw" not in parse_qs(split.query, keep_blank_values=True)


def _kv_entry_count(req: _Request, status: int, body: bytes) -> int:
    if not _counts_kv_entries(req, status):
        return 0
    try:
        data = json.loads(body)
    except ValueError:
        return 0
    return len(data) if isinstance(data, list) else 0


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise _Closed from exc
    except asyncio.LimitOverrunError as exc:
        raise _Closed("header section too large") from exc


async def _copy_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    headers: list[tuple[str, str]],
    *,
    until_eof: bool = False,
    keep: bool = False,
) -> tuple[int, bytes]:
    """Forward one message body unchanged; returns (payload bytes, payload if ``keep``)."""
    kept = bytearray()
    total = 0
    try:
        if _is_chunked(headers):
            while True:
                line = await reader.readuntil(b"\r\n")
                writer.write(line)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:  # trailer section, ends with an empty line
                        trailer = await reader.readuntil(b"\r\n")
                        writer.write(trailer)
                        if trailer == b"\r\n":
                            break
                    break
                chunk = await reader.readexactly(size + 2)
                writer.write(chunk)
                total += size
                if keep:
                    kept += chunk[:-2]
                await writer.drain()
        elif (length := _header(headers, "content-length")) is not None:
            remaining = int(length)
            while remaining:
                data = await reader.read(min(remaining, 1 << 16))
                if not data:
                    raise _Closed("closed inside a body")
                writer.write(data)
                remaining -= len(data)
                total += len(data)
                if keep:
                    kept += data
                await writer.drain()
        elif until_eof:
            while data := await reader.read(1 << 16):
                writer.write(data)
                total += len(data)
                if keep:
                    kept += data
                await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise _Closed(str(exc)) from exc
    return total, bytes(kept)


class _Connection:
    """One downstream connection and its (lazily opened) upstream connection."""

    def __init__(
        self,
        proxy: CountingProxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None
        self.pending: collections.deque[_Request] = collections.deque()
        self.response_task: asyncio.Task[None] | None = None
        self.requests_done = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._forward_requests()
            # the client half-closed or asked to close: let the last responses through
            if self.response_task is not None and self.pending:
                await self.response_task
        except (_Closed, OSError):
            pass
        finally:
            self.close()
            if self.response_task is not None:
                self.response_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.response_task

    def close(self) -> None:
        for w in (self.writer, self.up_writer):
            if w is not None and not w.is_closing():
                w.close()

    async def _open_upstream(self) -> bool:
        proxy = self.proxy
        try:
            self.up_reader, self.up_writer = await asyncio.open_connection(
                proxy.upstream_host,
                proxy.upstream_port,
                ssl=proxy.upstream_ssl,
                limit=_MAX_HEAD,
            )
        except OSError:
            with proxy.counters.lock:
                proxy.counters.upstream_errors += 1
            return False
        sock = self.up_writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with proxy.counters.lock:
            proxy.counters.upstream_connections += 1
            proxy.counters.open_upstream += 1
        self.response_task = asyncio.get_running_loop().create_task(self._forward_responses())
        return True

    async def _forward_requests(self) -> None:
        counters = self.proxy.counters
        while True:
            head = await _read_head(self.reader)
            request_line, headers = _parse_head(head)
            parts = request_line.split(" ")
            if len(parts) != 3:
                raise _Closed(f"bad request line {request_line!r}")
            method, target, version = parts
            with counters.lock:
                counters.requests += 1
                counters.methods[method] += 1
                counters.paths[f"{method} {urlsplit(target).path}"] += 1
                if _is_blocking(method, target):
                    counters.blocking += 1
            if self.up_writer is None and not await self._open_upstream():
                raise _Closed("upstream unreachable")
            assert self.up_writer is not None
            self.pending.append(_Request(method, target))
            self.up_writer.write(head)
            await _copy_body(self.reader, self.up_writer, headers)
            await self.up_writer.drain()
            if _wants_close(version, headers):
                return

    async def _forward_responses(self) -> None:
        assert self.up_reader is not None
        counters = self.proxy.counters
        try:
            while True:
                head = await _read_head(self.up_reader)
                status_line, headers = _parse_head(head)
                parts = status_line.split(" ", 2)
                version, status = parts[0], int(parts[1])
                self.writer.write(head)
                if 100 <= status < 200 and status != 101:
                    await self.writer.drain()
                    continue  # interim response: the final one follows
                if not self.pending:
                    raise _Closed("response without a request")
                req = self.pending.popleft()
                bodiless = req.method == "HEAD" or status in (204, 304)
                framed = _is_chunked(headers) or _header(headers, "content-length") is not None
                to_eof = not bodiless and not framed
                size, body = (0, b"")
                if not bodiless:
                    size, body = await _copy_body(
                        self.up_reader,
                        self.writer,
                        headers,
                        until_eof=to_eof,
                        keep=_counts_kv_entries(req, status),
                    )
                await self.writer.drain()
                entries = _kv_entry_count(req, status, body)
                with counters.lock:
                    counters.responses += 1
                    counters.statuses[status] += 1
                    counters.body_bytes += size
                    counters.kv_entries += entries
                if to_eof or _wants_close(version, headers):
                    break
        except (_Closed, OSError, ValueError, IndexError):
            pass
        finally:
            with counters.lock:
                counters.open_upstream -= 1
            self.close()


class CountingProxy:
    """A counting reverse proxy in front of one Consul HTTP address."""

    def __init__(self, upstream: str = "http://127.0.0.1:8500", host: str = "127.0.0.1") -> None:
        if "://" not in upstream:
            upstream = "http://" + upstream  # CONSUL_HTTP_ADDR may omit the scheme
        split = urlsplit(upstream)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"unsupported upstream {upstream!r}")
        self.upstream = upstream
        self.upstream_host = split.hostname
        self.upstream_port = split.port or (443 if split.scheme == "https" else 80)
        self.upstream_ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if split.scheme == "https" else None
        )
        self.host = host
        self.port = 0
        self.counters = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped: asyncio.Event | None = None

    @classmethod
    def from_env(cls) -> CountingProxy:
        """In front of ``CONSUL_HTTP_ADDR`` (default 127.0.0.1:8500)."""
        return cls(os.environ.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Serve from a background thread; returns the proxy's URL."""
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="consul-counting-proxy")
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.url

    async def _serve(self, ready: threading.Event) -> None:
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, backlog=LISTEN_BACKLOG, limit=_MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopped.wait()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        counters = self.counters
        with counters.lock:
            counters.connections += 1
            counters.open += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            # stop(): end quietly (asyncio's start_server callback would log a cancelled
            # client task as an error); the sockets were closed by run()'s cleanup.
            pass
        finally:
            with counters.lock:
                counters.open -= 1
            self._tasks.discard(task)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop serving and close every connection."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        stopped = self._stopped
        if stopped is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopped.set)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def stats(self) -> ProxyStats:
        c = self.counters
        with c.lock:
            return ProxyStats(
                requests=c.requests,
                methods=_frozen(c.methods),  # type: ignore[arg-type]
                paths=_frozen(c.paths),  # type: ignore[arg-type]
                blocking_queries=c.blocking,
                responses=c.responses,
                statuses=_frozen(c.statuses),  # type: ignore[arg-type]
                response_body_bytes=c.body_bytes,
                kv_entries=c.kv_entries,
                connections=c.connections,
                upstream_connections=c.upstream_connections,
                upstream_errors=c.upstream_errors,
                open_connections=c.open,
                open_upstream_connections=c.open_upstream,
            )

    def reset(self) -> None:
        """Zero the totals (open connection gauges are kept)."""
        with self.counters.lock:
            self.counters.reset()

    def __enter__(self) -> CountingProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT after printing one JSON line with the url; then the stats."""
    parser = argparse.ArgumentParser(description="Counting reverse proxy for Consul")
    parser.add_argument("--upstream", default=os.environ.get("CONSUL_HTTP_ADDR") or "")
    args = parser.parse_args(argv)
    proxy = CountingProxy(args.upstream or "http://127.0.0.1:8500")
    print(json.dumps({"url": proxy.start(), "upstream": proxy.upstream}), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    s = proxy.stats()
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in vars(s).items()}
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
