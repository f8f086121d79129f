"""Kafka's acceptance checks for a keystore/truststore update, run locally first.

What Kafka's SslFactory checks (validateReconfiguration): the new stores open; the key
matches the certificate; the subject DN is unchanged unless ssl.allow.dn.changes, and the
SANs include all the old ones unless ssl.allow.san.changes; the key entry count is unchanged;
and on the inter-broker listener a TLS handshake old-server<->new-client and new-server<->
old-client both succeed. A refusal predicted here is explained instead of discovered.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509

from monitor.stores import StoreMaterial
from sidecar import layout
from sidecar.material import dns_sans, ip_sans, is_issued_by, public_key_matches


class PredictedRefusal(Exception):
    """Kafka would refuse this update (or it is unsafe to send); the message says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_material(new: StoreMaterial, now: dt.datetime) -> None:
    """The new stores are internally sound: key/cert match, valid now, chain verifies."""
    cert = new.certificate
    if not public_key_matches(new.key, cert):
        raise PredictedRefusal("keystore certificate does not match its private key",
                               "key_mismatch")
    if cert.not_valid_after_utc <= now:
        raise PredictedRefusal(f"keystore certificate expired at {cert.not_valid_after_utc}",
                               "expired")
    if cert.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise PredictedRefusal(f"keystore certificate not valid before "
                               f"{cert.not_valid_before_utc}", "not_yet_valid")
    issuers = [*new.chain[1:], *new.trusted]
    if not any(is_issued_by(cert, ca) for ca in issuers):
        raise PredictedRefusal("keystore certificate does not chain to its own chain or "
                               "truststore", "chain")


def check_compatible(new: StoreMaterial, served: x509.Certificate, *, allow_dn_changes: bool,
                     allow_san_changes: bool, old_key_entries: int | None) -> None:
    """The update keeps what Kafka insists on: DN, SANs, entry count.

    Compared with the certificate the listener *serves*, never with the file at its path: a
    Kafka broker before 2.6 (``SslFactory``) compares with the old path read again, which on
    the stable ``current/`` paths is the new keystore itself, and accepts a DN change or a
    dropped SAN. On those brokers this check is the only guard."""
    cert = new.certificate
    if not allow_dn_changes and cert.subject != served.subject:
        raise PredictedRefusal(
            f"Keystore DistinguishedName does not match: served "
            f"{served.subject.rfc4514_string()!r}, new {cert.subject.rfc4514_string()!r}",
            "dn_changed")
    if not allow_san_changes:
        dropped = sorted((dns_sans(served) - dns_sans(cert)) | (ip_sans(served) - ip_sans(cert)))
        if dropped:
            raise PredictedRefusal(f"Keystore SubjectAltNames do not match: new certificate "
                                   f"drops {', '.join(dropped)}", "san_dropped")
    if old_key_entries is not None and new.key_entries != old_key_entries:
        raise PredictedRefusal(f"keystore entry count changes ({old_key_entries} -> "
                               f"{new.key_entries})", "entry_count")


def _server_context(directory: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(directory / layout.FULLCHAIN_PEM, directory / layout.KEY_PEM)
    ctx.load_verify_locations(directory / layout.CA_BUNDLE_PEM)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(directory: Path, check_hostname: bool = False) -> ssl.SSLContext:
    """A client context presenting a generation's certificate and trusting its bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.load_cert_chain(directory / layout.FULLCHAIN_PEM, directory / layout.KEY_PEM)
    ctx.load_verify_locations(directory / layout.CA_BUNDLE_PEM)
    return ctx


def pair_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                   timeout: float = 5.0) -> str | None:
    """A real mTLS handshake over a socket pair (server in a thread, client here), then the
    client reads one byte the server writes. None, or why it failed.

    The read matters: over TLS 1.3 a refused client certificate only shows there.
    """
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(timeout)
    client_sock.settimeout(timeout)
    errors: dict[str, str] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                tls.sendall(b"k")
        except (OSError, ValueError) as exc:
            errors["server"] = _reason(exc)
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve, name="handshake-prediction", daemon=True)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_side=False) as tls:
            if tls.recv(1) != b"k":
                errors["client"] = "the server closed the connection without writing"
    except (OSError, ValueError) as exc:
        errors["client"] = _reason(exc)
    finally:
        client_sock.close()  # also ends a server still waiting for the client
        thread.join(timeout + 1)
    # Both sides: the one that refused says why, the other names the alert it received.
    return "; ".join(f"{side}: {why}" for side, why in sorted(errors.items())) or None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    return str(exc) or type(exc).__name__


def check_handshakes(old_dir: Path, new_dir: Path) -> None:
    """Kafka's inter-broker test: old-server<->new-client and new-server<->old-client."""
    for server_dir, client_dir, label in ((old_dir, new_dir, "old server / new client"),
                                          (new_dir, old_dir, "new server / old client")):
        failure = pair_handshake(_server_context(server_dir), client_context(client_dir))
        if failure is not None:
            raise PredictedRefusal(f"inter-broker test handshake {label} fails: {failure} "
                                   "(a phase was skipped?)", "handshake")
