"""The KRaft Raft client of a broker double: the outbound side of the controller listener.

``KafkaRaftManager.buildNetworkClient`` builds the Raft client's channel once, from the
controller listener's configuration at start, and never registers it for reconfiguration
(KAFKA-20025; fixed on trunk by apache/kafka PR 23288, in no release up to 4.4). So:

* it keeps the truststore (and keystore) it loaded at start, whatever the files hold later;
* every *new* connection to a voter (a leader change, a reconnect) is a handshake made with that
  start-up material; a voter whose certificate it does not trust is unreachable to it.

With the controller listener on SASL_SSL and ``ssl.client.auth=none`` the client presents no
certificate (SASL PLAIN authenticates it), so only its trust matters; that is what this models.
``fixed=True`` plays a release with the fix: the client follows the listener's reloads.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping

from cryptography.hazmat.primitives import serialization

from tests.doubles.kafka.errors import JavaError
from tests.doubles.kafka.stores import create_truststore


class RaftUnreachable(Exception):
    """A new handshake from the Raft client to a voter failed (the voter is stranded)."""


class RaftClient:
    """The Raft client's TLS side: a client context built from ``configs`` once."""

    def __init__(self, configs: Mapping[str, str]) -> None:
        self.configs = dict(configs)
        self.context = self._context()

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # the double's voters all listen on 127.0.0.1
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            truststore = create_truststore(self.configs)
        except JavaError as exc:
            raise RaftUnreachable(f"Raft client cannot load its truststore: {exc}") from exc
        trusted = truststore.store.trusted() if truststore is not None else []
        if trusted:
            ctx.load_verify_locations(cadata="".join(
                c.public_bytes(serialization.Encoding.PEM).decode() for c in trusted))
        return ctx

    def handshake(self, host: str, port: int, timeout: float = 5.0) -> None:
        """A new connection to a voter's controller listener; RaftUnreachable if it fails."""
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw, \
                    self.context.wrap_socket(raw) as tls:
                tls.getpeercert()
        except (OSError, ssl.SSLError) as exc:
            raise RaftUnreachable(f"Raft client to {host}:{port}: {exc}") from None
