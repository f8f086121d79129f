"""Faults in front of a real Vault API: an HTTP proxy that passes requests on, or does not.

Every Vault behaviour the suite checks comes from a real server (the OpenBao dev server that
``tests.openbao`` starts, or ``VAULT_ADDR``). What no healthy server shows comes from here:

    with VaultFaults(upstream_url) as proxy:       # hand proxy.url to the code under test
        proxy.set_down(True)                       # connection refused
        proxy.fail_next(3, 503, ["Vault is sealed"], path="/sign/")

Faults: ``set_down``, ``set_sealed``, ``fail_next``, ``set_delay`` (a hang),
``corrupt_next_certificate``, ``mismatched_key_next`` and ``expired_next`` (a sign/issue answer
replaced: garbage, or one the server signed for another key, or with a ``not_after`` in the
past), ``report_version`` (``sys/health`` claims another
version). Observations: ``request_log`` ((method, path, status)), ``received``, and
``sign_count``/``issue_count`` by mount and by ``mount:issuer``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socketserver
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.doubles.vault.profiles import PROFILES, VaultProfile, profile_for

__all__ = ["PROFILES", "VaultFaults", "VaultProfile", "profile_for"]

SEALED = "Vault is sealed"

#: ``<mount>/sign/<role>``, ``<mount>/issue/<role>`` and the ``issuer/<ref>/`` forms.
_ISSUING = re.compile(r"^/v1/(?P<mount>.+?)/(?:issuer/(?P<ref>[^/]+)/)?(?P<op>sign|issue)/[^/]+$")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class _Faults:
    fail: list[tuple[int, list[str], str | None]] = field(default_factory=list)
    corrupt: int = 0
    mismatched: int = 0
    expired: int = 0
    delay: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (a test's timeout) is no error of the proxy's."""

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn() (a reverse DNS lookup that can stall).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection, so ``set_down`` leaves no open one behind."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        proxy: VaultFaults = self.server.proxy  # type: ignore[attr-defined]
        status, headers, payload = proxy.handle(self.command, self.path, dict(self.headers), body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_PATCH = do_HEAD = _serve


def _json(status: int, obj: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class VaultFaults:
    """A proxy on 127.0.0.1 in front of the Vault at ``upstream`` (thread-safe controls)."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = upstream.rstrip("/")
        self._https = parts.scheme == "https"
        self._upstream_host = parts.hostname or "127.0.0.1"
        self._upstream_port = parts.port or (443 if self._https else 80)
        self._port = port
        self._lock = threading.RLock()
        self._faults = _Faults()
        self._down = self._sealed = False
        self._version: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.request_log: list[tuple[str, str, int]] = []
        self.received = 0
        self.sign_count: dict[str, int] = {}
        self.issue_count: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> VaultFaults:
        """Listen (port 0 picks a free one, kept across ``set_down``)."""
        self._listen()
        return self

    def stop(self) -> None:
        """Stop listening; answers in flight are cut off."""
        self._close()

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.proxy = self  # type: ignore[attr-defined]
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="vault-faults",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> VaultFaults:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def profile(self) -> VaultProfile:
        """What the server's version (or the one ``report_version`` claims) answers."""
        return profile_for(self._version or self._upstream_version())

    def _upstream_version(self) -> str:
        _, _, payload = self._forward("GET", "/v1/sys/health", {}, b"")
        return str(json.loads(payload)["version"])

    # -- faults ------------------------------------------------------------------------------

    def set_down(self, down: bool) -> None:
        """Close the listening socket (connection refused) or listen again on the same port."""
        with self._lock:
            if down and not self._down:
                self._close()
            elif not down and self._down:
                self._listen()
            self._down = down

    def set_sealed(self, sealed: bool) -> None:
        """While sealed every call answers 503 "Vault is sealed" (sys/health: 503, sealed)."""
        with self._lock:
            self._sealed = sealed

    def fail_next(self, n: int = 1, status: int = 500, errors: Sequence[str] | None = None, *,
                  path: str | None = None) -> None:
        """Answer the next ``n`` requests (whose path contains ``path``, if given) with an error."""
        with self._lock:
            errs = list(errors) if errors is not None else ["internal error"]
            self._faults.fail.extend([(status, errs, path)] * n)

    def set_delay(self, seconds: float) -> None:
        """Hold every answer ``seconds`` (0 to stop), to exercise client timeouts."""
        with self._lock:
            self._faults.delay = max(0.0, seconds)

    def corrupt_next_certificate(self, n: int = 1) -> None:
        """The next ``n`` sign/issue answers carry a garbage "BEGIN CERTIFICATE" blob."""
        with self._lock:
            self._faults.corrupt += n

    def mismatched_key_next(self, n: int = 1) -> None:
        """The next ``n`` sign/issue answers carry a certificate signed for another key."""
        with self._lock:
            self._faults.mismatched += n

    def expired_next(self, n: int = 1) -> None:
        """The next ``n`` sign/issue answers carry a validly signed certificate that expired."""
        with self._lock:
            self._faults.expired += n

    def report_version(self, version: str | None) -> None:
        """``sys/health`` reports ``version`` (None: the server's own)."""
        with self._lock:
            self._version = version

    def reset_faults(self) -> None:
        """Clear every pending fault (not down/sealed state)."""
        with self._lock:
            self._faults = _Faults()

    # -- requests ----------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request: a fault's answer, or the server's (perhaps altered)."""
        path = urlsplit(raw_path).path
        with self._lock:
            self.received += 1
            delay = self._faults.delay
        if delay:
            time.sleep(delay)
        status, out_headers, payload = self._answer(method.upper(), raw_path, path, headers, body)
        with self._lock:
            self.request_log.append((method.upper(), path, status))
        return status, out_headers, payload

    def _answer(self, method: str, raw_path: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        health = path in ("/v1/sys/health", "/v1/sys/seal-status")
        with self._lock:
            if self._sealed and not health:
                return _json(503, {"errors": [SEALED]})
            injected = self._take_failure(path)
        if injected is not None:
            return _json(injected[0], {"errors": injected[1]})
        status, out_headers, payload = self._forward(method, raw_path, headers, body)
        if path == "/v1/sys/health" and status != 502:
            return self._dress_health(status, out_headers, payload)
        issuing = _ISSUING.match(path)
        if issuing and status == 200:
            payload = self._issued(method, raw_path, headers, body, payload)
            self._count(issuing["op"], issuing["mount"], issuing["ref"])
        return status, out_headers, payload

    def _take_failure(self, path: str) -> tuple[int, list[str]] | None:
        for index, (status, errors, needle) in enumerate(self._faults.fail):
            if needle is None or needle in path:
                del self._faults.fail[index]
                return status, errors
        return None

    def _dress_health(self, status: int, headers: dict[str, str],
                      payload: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            version, sealed = self._version, self._sealed
        if version is None and not sealed:
            return status, headers, payload
        data = json.loads(payload)
        if version is not None:
            data["version"] = version
        if sealed:
            data["sealed"], status = True, 503
        return _json(status, data)

    def _count(self, op: str, mount: str, ref: str | None) -> None:
        with self._lock:
            counter = self.sign_count if op == "sign" else self.issue_count
            for key in (mount, f"{mount}:{ref}") if ref else (mount,):
                counter[key] = counter.get(key, 0) + 1

    def _forward(self, method: str, raw_path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Pass the request on; a server that cannot be reached is a 502 from the proxy."""
        conn: http.client.HTTPConnection
        if self._https:  # a real Vault with TLS: trusted through VAULT_CACERT, as hvac is
            context = ssl.create_default_context(cafile=os.environ.get("VAULT_CACERT"))
            conn = http.client.HTTPSConnection(self._upstream_host, self._upstream_port,
                                               timeout=120, context=context)
        else:
            conn = http.client.HTTPConnection(self._upstream_host, self._upstream_port,
                                              timeout=120)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
            conn.request(method, raw_path, body=body or None, headers=sent)
            answer = conn.getresponse()
            payload = answer.read()
            kept = {k: v for k, v in answer.getheaders() if k.lower() not in _HOP_HEADERS}
            return answer.status, kept, payload
        except OSError as exc:
            return _json(502, {"errors": [f"the Vault behind the fault proxy: {exc}"]})
        finally:
            conn.close()

    # -- altered certificates ----------------------------------------------------------------

    def _issued(self, method: str, raw_path: str, headers: dict[str, str], body: bytes,
                payload: bytes) -> bytes:
        with self._lock:
            fault = next((name for name in ("corrupt", "mismatched", "expired")
                          if getattr(self._faults, name) > 0), None)
            if fault is not None:
                setattr(self._faults, fault, getattr(self._faults, fault) - 1)
        if fault is None:
            return payload
        answer = json.loads(payload)
        if fault == "corrupt":
            answer["data"]["certificate"] = ("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNh"
                                             "dGU=\n-----END CERTIFICATE-----")
            return json.dumps(answer).encode()
        params = json.loads(body or b"{}")
        if fault == "mismatched":
            params = {**params, **_other_key_request(params)}
        else:  # expired: the server signs a not_after in the past when asked to
            past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
            params = {**{k: v for k, v in params.items() if k != "ttl"}, "not_after": past}
        status, _, again = self._forward(method, raw_path, headers, json.dumps(params).encode())
        if status != 200:
            raise RuntimeError(f"the fault proxy's second request answered {status}: {again!r}")
        replaced = json.loads(again)["data"]
        answer["data"]["certificate"] = replaced["certificate"]
        return json.dumps(answer).encode()


def _other_key_request(params: dict[str, Any]) -> dict[str, Any]:
    """The same request for a fresh key: a CSR (sign) copying the original's subject and
    extensions; an issue request needs nothing, the server picks a new key each time."""
    if "csr" not in params:
        return {}
    original = x509.load_pem_x509_csr(str(params["csr"]).encode())
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(original.subject)
    for ext in original.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    csr = builder.sign(key, hashes.SHA256())
    return {"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
