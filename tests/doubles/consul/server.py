"""The double's HTTP server: sockets, threads, connection tracking and request dispatch.

``_Handler`` reads a request (Content-Length or chunked), hands it to ``_handle`` (the
routing in :class:`tests.doubles.consul.ConsulDouble`) and writes the answer as Go's net/http
would (a Date header, no Nagle).  :class:`ServerControls` is the part of the double that owns
the listening socket and the open connections: ``set_down``, ``drop_connections`` and the
request log.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import traceback
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.doubles.consul.blocking import BlockingQueries
from tests.doubles.consul.wire import RequestRecord, _Aborted, _Response, _text


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # A fleet simulation opens thousands of long-poll connections at once: a deep listen
    # backlog (capped by net.core.somaxconn) keeps a connect burst from being refused.
    request_queue_size = 4096

    def __init__(self, addr: tuple[str, int], double: ServerControls) -> None:
        self.double = double
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about connections that the client or a test control cut."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Like Go's net/http: no Nagle, or header and body writes wait on delayed ACKs.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._register_conn(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.double._unregister_conn(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        double = self.server.double
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        flat = {k: v[0] for k, v in query.items()}
        try:
            body = self._read_body()
            resp = double._handle(self.command, path, query, dict(self.headers), body, self)
        except (_Aborted, OSError):
            self.close_connection = True
            double._log(RequestRecord(self.command, path, flat, None))
            return
        except Exception as exc:  # a bug in the double: answer 500 and show it
            traceback.print_exc()
            resp = _text(500, f"consul double internal error: {exc!r}")
        double._log(RequestRecord(self.command, path, flat, resp.status))
        try:
            self.send_response_only(resp.status)
            self.send_header("Date", formatdate(usegmt=True))
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
        except OSError:
            self.close_connection = True


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)



class ServerControls(BlockingQueries):
    """The listening socket, the open connections and the request log of a ConsulDouble."""

    host: str
    _port: int
    _closed: bool
    _server_lock: threading.Lock
    _server: _Server | None
    _thread: threading.Thread | None
    _conns: set[socket.socket]
    _log_entries: list[RequestRecord]

    def _handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
        handler: _Handler,
    ) -> _Response:
        """Answer one request: ConsulDouble routes it to the endpoints."""
        raise NotImplementedError

    @property
    def request_log(self) -> list[RequestRecord]:
        """A copy of every request seen so far (method, path, query, status)."""
        with self._cond:
            return list(self._log_entries)

    def clear_request_log(self) -> None:
        """Forget the requests logged so far."""
        with self._cond:
            self._log_entries.clear()

    def drop_connections(self) -> int:
        """Abort every in-flight blocking query by closing its socket without a response.

        Returns how many were aborted.
        """
        with self._cond:
            victims = list(self._inflight)
            for item in victims:
                item.aborted = True
                _shutdown(item.conn)
            self._broadcast()
            return len(victims)

    def set_down(self, down: bool) -> None:
        """Close (True) or reopen (False) the listening socket on the same port.

        Going down also drops every open connection, as a dead agent would.
        """
        with self._server_lock:
            if down and self._server is not None:
                server, self._server = self._server, None
                server.shutdown()
                server.server_close()
                if self._thread is not None:
                    self._thread.join(timeout=5)
                self._drop_all()
            elif not down and self._server is None and not self._closed:
                self._start_server()

    @property
    def is_down(self) -> bool:
        """Whether the listening socket is closed."""
        return self._server is None

    def _start_server(self) -> None:
        server = _Server((self.host, self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"consul-double-{self._port}",
        )
        self._thread.start()

    def _register_conn(self, conn: socket.socket) -> None:
        with self._cond:
            self._conns.add(conn)

    def _unregister_conn(self, conn: socket.socket) -> None:
        with self._cond:
            self._conns.discard(conn)

    def _drop_all(self) -> None:
        with self._cond:
            for item in self._inflight:
                item.aborted = True
            for conn in list(self._conns):
                _shutdown(conn)
            self._broadcast()

    def _log(self, record: RequestRecord) -> None:
        with self._cond:
            self._log_entries.append(record)
