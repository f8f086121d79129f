"""SslFactory's rules: DefaultSslEngineFactory (the stores and SSL contexts of one listener),
CertificateEntries (what a new keystore must keep), SslEngineValidator (the inter-broker
handshakes) and createNewSslEngineFactory, which decides whether a reload is accepted."""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.doubles.kafka.configs import ALLOW_DN_CHANGES, ALLOW_SAN_CHANGES
from tests.doubles.kafka.errors import (
    CONFIG_EXCEPTION,
    INVALID_CONFIGURATION,
    PKIX_FAILURE,
    SSL_HANDSHAKE_EXCEPTION,
    JavaError,
)
from tests.doubles.kafka.profiles import KafkaProfile
from tests.doubles.kafka.stores import (
    LoadedStore,
    create_keystore,
    create_truststore,
)

#: ssl.client.auth -> what the server side asks of a client (SslFactory / SslClientAuth).
CLIENT_AUTH = {"required": ssl.CERT_REQUIRED, "requested": ssl.CERT_OPTIONAL,
               "none": ssl.CERT_NONE}


class SslEngineFactory:
    """DefaultSslEngineFactory: the configs it was built from, its stores, its SSL contexts."""

    def __init__(self, configs: Mapping[str, str], tmpdir: str) -> None:
        self.configs = dict(configs)
        self.keystore = create_keystore(self.configs)
        self.truststore = create_truststore(self.configs)
        if self.keystore is None or self.keystore.store.key is None:
            raise JavaError(
                INVALID_CONFIGURATION,
                "A listener of this double needs a keystore with a private key entry",
            )
        self.server_context = self._context(ssl.PROTOCOL_TLS_SERVER, tmpdir)
        self.client_context = self._context(ssl.PROTOCOL_TLS_CLIENT, tmpdir)

    @property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate this factory serves."""
        assert self.keystore is not None
        return self.keystore.store.chain[0]

    def should_be_rebuilt(self, next_configs: Mapping[str, str]) -> bool:
        """DefaultSslEngineFactory.shouldBeRebuilt."""
        if dict(next_configs) != self.configs:
            return True
        return any(s is not None and s.modified() for s in (self.truststore, self.keystore))

    def _context(self, protocol: ssl._SSLMethod, tmpdir: str) -> ssl.SSLContext:
        assert self.keystore is not None and self.keystore.store.key is not None
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False  # SslEngineValidator disables endpoint identification
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:  # ssl.client.auth (the double's listeners default to required, as ours set it)
            ctx.verify_mode = CLIENT_AUTH.get(self.configs.get("ssl.client.auth", "required"),
                                              ssl.CERT_REQUIRED)
        store = self.keystore.store
        assert store.key is not None
        pem = store.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in store.chain)
        fd, path = tempfile.mkstemp(dir=tmpdir, suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        if self.truststore is None:
            ctx.load_default_certs(
                ssl.Purpose.CLIENT_AUTH
                if protocol == ssl.PROTOCOL_TLS_SERVER
                else ssl.Purpose.SERVER_AUTH
            )
        else:
            trusted = self.truststore.store.trusted()
            if trusted:
                ctx.load_verify_locations(
                    cadata="".join(
                        c.public_bytes(serialization.Encoding.PEM).decode() for c in trusted
                    )
                )
        return ctx


def _java_dn(name: x509.Name) -> str:
    """X500Principal.toString(): RFC 1779 style, most specific RDN first."""

    def value(v: str | bytes) -> str:
        return v if isinstance(v, str) else "#" + v.hex()

    return ", ".join(
        "+".join(f"{a.rfc4514_attribute_name}={value(a.value)}" for a in rdn)
        for rdn in reversed(name.rdns)
    )


def _canonical_dn(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Roughly X500Principal's canonical form: case and inner whitespace folded."""
    return tuple(
        tuple(sorted((a.oid.dotted_string, " ".join(str(a.value).lower().split())) for a in rdn))
        for rdn in name.rdns
    )


def _java_ip(value: ipaddress.IPv4Address | ipaddress.IPv6Address | Any) -> str:
    if isinstance(value, ipaddress.IPv6Address):
        return ":".join(
            f"{int.from_bytes(value.packed[i : i + 2], 'big'):x}" for i in range(0, 16, 2)
        )
    return str(value)


def _java_sans(cert: x509.Certificate) -> list[tuple[int, str]]:
    """X509Certificate.getSubjectAlternativeNames() as (type, value) pairs, in order."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[tuple[int, str]] = []
    for gn in ext:
        if isinstance(gn, x509.DNSName):
            out.append((2, gn.value))
        elif isinstance(gn, x509.IPAddress):
            out.append((7, _java_ip(gn.value)))
        elif isinstance(gn, x509.RFC822Name):
            out.append((1, gn.value))
        elif isinstance(gn, x509.UniformResourceIdentifier):
            out.append((6, gn.value))
        elif isinstance(gn, x509.DirectoryName):
            out.append((4, gn.value.rfc4514_string()))
        elif isinstance(gn, x509.RegisteredID):
            out.append((8, gn.value.dotted_string))
    return out


def _fmt_sans(sans: list[tuple[int, str]]) -> str:
    return "[" + ", ".join(f"[{t}, {v}]" for t, v in sans) + "]"


def ensure_compatible(
    new: LoadedStore, old: LoadedStore, allow_dn: bool, allow_san: bool, legacy: bool
) -> None:
    """SslFactory.CertificateEntries.ensureCompatible (KIP-978) or the pre-3.7 equality check."""
    if legacy:
        same = len(new.entries) == len(old.entries) and all(
            _canonical_dn(n.cert.subject) == _canonical_dn(o.cert.subject)
            and set(_java_sans(n.cert)) == set(_java_sans(o.cert))
            for n, o in zip(new.entries, old.entries, strict=False)
        )
        if not same:
            raise JavaError(
                CONFIG_EXCEPTION, "Keystore DistinguishedName or SubjectAltNames do not match"
            )
        return
    for check_dn, enabled in ((True, not allow_dn), (False, not allow_san)):
        if not enabled:
            continue
        if len(new.entries) != len(old.entries):
            raise JavaError(
                CONFIG_EXCEPTION,
                f"Keystore entries do not match, existing store "
                f"contains {len(old.entries)} entries, new store contains "
                f"{len(new.entries)} entries",
            )
        for n, o in zip(new.entries, old.entries, strict=True):
            if check_dn:
                if (
                    _canonical_dn(n.cert.subject) != _canonical_dn(o.cert.subject)
                    and n.cert.subject.rfc4514_string().lower()
                    != o.cert.subject.rfc4514_string().lower()
                ):
                    raise JavaError(
                        CONFIG_EXCEPTION,
                        (
                            "Keystore DistinguishedName does not match:  "
                            f"existing={{alias={o.alias}, "
                            f"DN={_java_dn(o.cert.subject)}}}, new={{alias={n.alias}, "
                            f"DN={_java_dn(n.cert.subject)}}}"
                        ),
                    )
            else:
                old_sans, new_sans = _java_sans(o.cert), _java_sans(n.cert)
                if not set(old_sans) <= set(new_sans):
                    raise JavaError(
                        CONFIG_EXCEPTION,
                        (
                            f"Keystore SubjectAltNames do not match:  existing={{alias={o.alias}, "
                            f"SAN={_fmt_sans(old_sans)}}}, new={{alias={n.alias}, "
                            f"SAN={_fmt_sans(new_sans)}}}"
                        ),
                    )


class HandshakeFailed(JavaError):
    """SslEngineValidator's failure; ``server_refused_client``: the server side refused the
    client's certificate (rather than the client the server's)."""

    def __init__(self, message: str, server_refused_client: bool) -> None:
        super().__init__(SSL_HANDSHAKE_EXCEPTION, message)
        self.server_refused_client = server_refused_client


def tls_exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """A handshake in memory, then one byte each way (TLS 1.3 reports a refused client
    certificate only on the first read). Raises HandshakeFailed like SslEngineValidator's
    failure."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    acting = client  # the side whose call raised

    def pump() -> None:
        s_in.write(c_out.read())
        c_in.write(s_out.read())

    def step(obj: ssl.SSLObject) -> bool:
        nonlocal acting
        acting = obj
        try:
            obj.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    def exchange(writer: ssl.SSLObject, reader: ssl.SSLObject, byte: bytes) -> None:
        nonlocal acting
        acting = writer
        writer.write(byte)
        pump()
        acting = reader
        if reader.read(1) != byte:
            raise HandshakeFailed("no application data", reader is server)

    try:
        done_c = done_s = False
        for _ in range(20):
            done_c = done_c or step(client)
            pump()
            done_s = done_s or step(server)
            pump()
            if done_c and done_s:
                break
        if not (done_c and done_s):
            raise HandshakeFailed("Did not finish handshake", False)
        exchange(client, server, b"\x00")
        exchange(server, client, b"\x01")
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        # The server refused the client's certificate: its own verification failed, or the
        # client read the server's alert about it.
        server_refused = acting is server or any(
            alert in reason for alert in ("UNKNOWN_CA", "CERTIFICATE_UNKNOWN", "BAD_CERTIFICATE")
        )
        if "CERTIFICATE_VERIFY_FAILED" in reason or "UNKNOWN_CA" in reason:
            raise HandshakeFailed(PKIX_FAILURE, server_refused) from e
        raise HandshakeFailed(reason, server_refused) from e


def validate_handshakes(
    old: SslEngineFactory, new: SslEngineFactory, empty_client_chain: bool = False
) -> None:
    """Old server with new client, then new server with old client, as SslEngineValidator.

    ``empty_client_chain`` (``KafkaProfile``): a server that refuses the client's certificate
    reports it as Java's key manager makes it happen on TLS 1.2: the client found no
    certificate issued by a CA the server names and sent none."""
    for server, client in ((old, new), (new, old)):
        try:
            tls_exchange(server.server_context, client.client_context)
        except HandshakeFailed as e:
            empty = [
                f
                for f in (server, client)
                if f.truststore is not None and not f.truststore.store.entries
            ]
            if empty:  # Java's PKIX validator refuses an empty set of trust anchors
                raise JavaError(
                    SSL_HANDSHAKE_EXCEPTION, "the trustAnchors parameter must be non-empty"
                ) from e
            if empty_client_chain and e.server_refused_client:
                raise JavaError(SSL_HANDSHAKE_EXCEPTION, "Empty client certificate chain") from e
            raise


def create_new_factory(
    old: SslEngineFactory,
    next_configs: Mapping[str, str],
    tmpdir: str,
    inter_broker: bool,
    profile: KafkaProfile,
) -> SslEngineFactory:
    """SslFactory.createNewSslEngineFactory: the old factory if nothing changed, else a new,
    validated one. Raises JavaError(ConfigException, 'Validation of ... failed: ...').

    Before 2.6 (``profile.old_keystore_from_disk``) SslFactory compared the new keystore with
    ``this.keystore.load()``: the old *path* read again, not what the listener serves."""
    if not old.should_be_rebuilt(next_configs):
        return old
    try:
        new = SslEngineFactory(next_configs, tmpdir)
        if old.keystore is None:
            if new.keystore is not None:
                raise JavaError(
                    CONFIG_EXCEPTION,
                    "Cannot add SSL keystore to an existing listener"
                    " for which no keystore was configured.",
                )
        else:
            if new.keystore is None:
                raise JavaError(
                    CONFIG_EXCEPTION,
                    "Cannot remove the SSL keystore from an existing"
                    " listener for which a keystore was configured.",
                )
            old_store = old.keystore.store
            if profile.old_keystore_from_disk:
                reread = create_keystore(old.configs)
                assert reread is not None  # the old configs name a keystore
                old_store = reread.store
            ensure_compatible(
                new.keystore.store,
                old_store,
                _true(next_configs.get(ALLOW_DN_CHANGES)),
                _true(next_configs.get(ALLOW_SAN_CHANGES)),
                profile.combined_keystore_message,
            )
        if old.truststore is None and new.truststore is not None:
            raise JavaError(
                CONFIG_EXCEPTION,
                "Cannot add SSL truststore to an existing listener "
                "for which no truststore was configured.",
            )
        if inter_broker:  # SslEngineValidator.validate(old, new)
            validate_handshakes(old, new, profile.empty_client_chain)
        return new
    except JavaError as e:
        raise JavaError(
            CONFIG_EXCEPTION, f"Validation of dynamic config update of SSLFactory failed: {e}"
        ) from e


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"
