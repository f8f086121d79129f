"""A stand-in for the one Kubernetes API call Vault's Kubernetes auth makes: TokenReview.

``TokenReviewer().start()`` serves ``POST /apis/authentication.k8s.io/v1/tokenreviews`` on
127.0.0.1; ``token(namespace, name)`` mints a service-account JWT (ES256, legacy claims) that
the review then accepts. Any other token is answered ``authenticated: false``, as the API
server answers a forged or deleted account's token.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = ["TokenReviewer"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenReviewer:
    """The TokenReview endpoint, knowing the tokens it minted."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._accounts: dict[str, dict[str, Any]] = {}
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def ca_pem(self) -> str:
        """A cluster CA certificate for Vault's config (unused: the URL is plain HTTP)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(1).not_valid_before(now)
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def token(self, namespace: str, name: str) -> str:
        """A signed service-account token for ``namespace/name`` that reviews as valid."""
        uid = str(uuid.uuid4())
        claims = {"iss": "kubernetes/serviceaccount",
                  "sub": f"system:serviceaccount:{namespace}:{name}",
                  "kubernetes.io/serviceaccount/namespace": namespace,
                  "kubernetes.io/serviceaccount/service-account.name": name,
                  "kubernetes.io/serviceaccount/service-account.uid": uid}
        signing = (_b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()) + "."
                   + _b64(json.dumps(claims).encode()))
        r, s = decode_dss_signature(self._key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        jwt = signing + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        self._accounts[jwt] = {"username": claims["sub"], "uid": uid,
                               "groups": ["system:serviceaccounts",
                                          f"system:serviceaccounts:{namespace}"]}
        return jwt

    def review(self, token: str) -> dict[str, Any]:
        user = self._accounts.get(token)
        status = {"authenticated": True, "user": user} if user else \
            {"authenticated": False, "error": "invalid bearer token"}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}

    def start(self) -> TokenReviewer:
        reviewer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                payload = json.dumps(reviewer.review(str(body["spec"]["token"]))).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
