"""Test PKI and a Kafka broker fixture (the double, or a real broker via env).

Helpers make EC P-256 CAs and leaf certificates with ``cryptography`` and write keystores and
truststores in the three types Kafka reads (PKCS12, JKS via pyjks, PEM per KIP-651).

Fixture ``kafka_broker`` yields a :class:`BrokerUnderTest`. By default it starts a
:class:`~tests.doubles.kafka.KafkaBrokerDouble` with listeners ``SSL`` and ``INTERNAL``
(inter-broker), each with a PKCS12 keystore for ``CN=broker-1.kafka.test,OU=kafka,O=Example``
signed by root A and a truststore holding root A.

With ``KAFKA_BOOTSTRAP_SERVERS`` set, it yields a handle on that real broker instead:

* ``KAFKA_BOOTSTRAP_SERVERS`` -- the broker's ``SSL`` listener, ``host:port``;
* ``KAFKA_BROKER_ID`` (default 1), ``KAFKA_INTERNAL_BOOTSTRAP`` (its inter-broker listener,
  optional), ``KAFKA_SSL_LISTENER``/``KAFKA_INTERNAL_LISTENER`` (names, default SSL/INTERNAL),
  ``KAFKA_STORE_TYPE`` (the type its listener stores use, default PKCS12);
* ``KAFKA_TEST_PKI_DIR`` -- a directory the broker reads at the same path, holding
  ``root-a.pem``/``root-a.key`` and ``root-b.pem``/``root-b.key``; the broker's listeners must
  have been started on material made by these helpers from root A (DN and SANs above).
  Tests write their new stores there. Client certificates are minted from root A.

Tests that need the double's controls (fault injection, reload counters) skip on a real broker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jks
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.doubles.kafka import KafkaBrokerDouble

BROKER_DN = "CN=broker-1.kafka.test,OU=kafka,O=Example"
BROKER_SANS = ("localhost", "127.0.0.1", "broker-1.kafka.test")
CLIENT_DN = "CN=client-1,OU=kafka,O=Example"
PASSWORD = "changeit"


@dataclass(frozen=True)
class Identity:
    """A private key, its certificate and the issuers' certificates (root included)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def serial(self) -> int:
        """The certificate's serial number."""
        return self.cert.serial_number


def _name(dn: str) -> x509.Name:
    return x509.Name.from_rfc4514_string(dn)


def make_ca(label: str) -> Identity:
    """A self-signed root CA ``CN=Test Root <label>``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"CN=Test Root {label},O=Example")
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(key, cert)


def make_leaf(
    ca: Identity,
    dn: str = BROKER_DN,
    sans: Sequence[str] = BROKER_SANS,
    *,
    client: bool = True,
    server: bool = True,
) -> Identity:
    """A leaf certificate signed by ``ca``; SANs that parse as IPs become IP SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    general: list[x509.GeneralName] = []
    for s in sans:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            general.append(x509.DNSName(s))
    usages = [
        u
        for u, on in (
            (ExtendedKeyUsageOID.SERVER_AUTH, server),
            (ExtendedKeyUsageOID.CLIENT_AUTH, client),
        )
        if on
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(dn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return Identity(key, builder.sign(ca.key, hashes.SHA256()), (ca.cert,))


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write(path: Path, data: bytes) -> Path:
    """Atomic write (temp file + rename) with mode 0600, like the product's volume writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def write_keystore(
    path: Path, ident: Identity, store_type: str = "PKCS12", password: str = PASSWORD
) -> dict[str, str]:
    """Write ``ident`` as a keystore; returns the ``ssl.keystore.*`` settings to load it."""
    t = store_type.upper()
    if t == "PKCS12":
        data = pkcs12.serialize_key_and_certificates(
            b"kafka",
            ident.key,
            ident.cert,
            list(ident.chain),
            serialization.BestAvailableEncryption(password.encode()),
        )
    elif t == "JKS":
        pkcs8 = ident.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        certs = [c.public_bytes(serialization.Encoding.DER) for c in (ident.cert, *ident.chain)]
        entry = jks.PrivateKeyEntry.new("kafka", certs, pkcs8)
        entry.encrypt(password)
        data = jks.KeyStore.new("jks", [entry]).saves(password)
    elif t == "PEM":  # KIP-651: PKCS#8 key + chain in one file, no store password
        data = ident.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + _pem(ident.cert, *ident.chain)
        _write(path, data)
        return {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(path)}
    else:
        raise ValueError(store_type)
    _write(path, data)
    return {
        "ssl.keystore.type": t,
        "ssl.keystore.location": str(path),
        "ssl.keystore.password": password,
        "ssl.key.password": password,
    }


def write_truststore(
    path: Path, cas: Sequence[Identity], store_type: str = "PKCS12", password: str = PASSWORD
) -> dict[str, str]:
    """Write trusted roots as a truststore; returns the ``ssl.truststore.*`` settings."""
    t = store_type.upper()
    if t == "PKCS12":  # serialize_java_truststore marks each certificate trusted for Java
        data = pkcs12.serialize_java_truststore(
            [pkcs12.PKCS12Certificate(ca.cert, f"root-{i}".encode()) for i, ca in enumerate(cas)],
            serialization.BestAvailableEncryption(password.encode()),
        )
    elif t == "JKS":
        entries = [
            jks.TrustedCertEntry.new(f"root-{i}", ca.cert.public_bytes(serialization.Encoding.DER))
            for i, ca in enumerate(cas)
        ]
        data = jks.KeyStore.new("jks", entries).saves(password)
    elif t == "PEM":
        _write(path, _pem(*(ca.cert for ca in cas)))
        return {"ssl.truststore.type": "PEM", "ssl.truststore.location": str(path)}
    else:
        raise ValueError(store_type)
    _write(path, data)
    return {
        "ssl.truststore.type": t,
        "ssl.truststore.location": str(path),
        "ssl.truststore.password": password,
    }


def listener_prefixed(listener: str, settings: dict[str, str]) -> dict[str, str]:
    """``ssl.x`` -> ``listener.name.<listener lower-case>.ssl.x`` (Kafka's per-listener form)."""
    return {f"listener.name.{listener.lower()}.{k}": v for k, v in settings.items()}


@dataclass(frozen=True)
class ClientFiles:
    """PEM files for a librdkafka / ``ssl`` client."""

    ca: Path
    cert: Path
    key: Path

    def admin_config(self, bootstrap: str) -> dict[str, Any]:
        """confluent-kafka AdminClient settings for ``security.protocol=SSL``."""
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.ca),
            "ssl.certificate.location": str(self.cert),
            "ssl.key.location": str(self.key),
            "ssl.endpoint.identification.algorithm": "none",
            "socket.timeout.ms": 10000,
        }

    def ssl_context(self) -> ssl.SSLContext:
        """A client context presenting the client certificate, trusting ``ca``."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def write_client_files(
    directory: Path, ident: Identity, trusted: Sequence[Identity]
) -> ClientFiles:
    """Client key/cert/CA bundle PEM files (key mode 0600)."""
    key = ident.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ClientFiles(
        ca=_write(directory / "client-ca.pem", _pem(*(t.cert for t in trusted))),
        cert=_write(directory / "client.pem", _pem(ident.cert, *ident.chain)),
        key=_write(directory / "client.key", key),
    )


API_VERSIONS_V0 = struct.pack(">hhih", 18, 0, 7, 4) + b"test"


def fetch_served_certificate(
    address: str,
    ctx: ssl.SSLContext,
    timeout: float = 5.0,
) -> x509.Certificate:
    """Connect, exchange one Kafka request (a real read, see FIELD-NOTES on TLS 1.3) and
    return the certificate the listener served."""
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        tls.sendall(struct.pack(">i", len(API_VERSIONS_V0)) + API_VERSIONS_V0)
        head = tls.recv(4)
        if len(head) < 4:
            raise ConnectionError("listener closed the connection")
        assert der is not None
        return x509.load_der_x509_certificate(der)


# --------------------------------------------------------------------------------------------
# The fixture
# --------------------------------------------------------------------------------------------


@dataclass
class BrokerUnderTest:
    """What a test needs from the broker, double or real."""

    broker_id: int
    addresses: dict[str, str]  # listener name -> host:port
    pki_dir: Path  # where tests write new stores (readable by the broker)
    root_a: Identity
    root_b: Identity
    client: ClientFiles
    double: KafkaBrokerDouble | None = None
    stores: dict[str, dict[str, str]] = field(default_factory=dict)  # listener -> ssl.* settings
    external: str = "SSL"  # the client listener's name
    internal: str = "INTERNAL"  # the inter-broker listener's name
    store_type: str = "PKCS12"  # the type the listeners were started with

    @property
    def is_double(self) -> bool:
        """True when the broker is the in-process double."""
        return self.double is not None

    def require_double(self) -> KafkaBrokerDouble:
        """The double, or skip the calling test on a real broker."""
        if self.double is None:
            pytest.skip("needs the broker double's test controls")
        return self.double

    def bootstrap(self, listener: str = "SSL") -> str:
        """``host:port`` of a listener."""
        return self.addresses[listener]


def _load_identity(directory: Path, label: str) -> Identity:
    cert = x509.load_pem_x509_certificate((directory / f"root-{label}.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / f"root-{label}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Identity(key, cert)


def start_double(
    directory: Path, root_a: Identity, root_b: Identity, store_type: str = "PKCS12", **kwargs: Any
) -> BrokerUnderTest:
    """Start a double with listeners SSL and INTERNAL, each on its own root-A stores."""
    config: dict[str, str] = {}
    stores: dict[str, dict[str, str]] = {}
    ext = {"PKCS12": "p12", "JKS": "jks", "PEM": "pem"}[store_type]
    for listener in ("SSL", "INTERNAL"):
        settings = write_keystore(
            directory / f"{listener.lower()}-keystore-0.{ext}", make_leaf(root_a), store_type
        )
        settings |= write_truststore(
            directory / f"{listener.lower()}-truststore-0.{ext}", [root_a], store_type
        )
        stores[listener] = settings
        config |= listener_prefixed(listener, settings)
    double = KafkaBrokerDouble(1, {"SSL": 0, "INTERNAL": 0}, config, "INTERNAL", **kwargs)
    double.start()
    client = write_client_files(directory / "client", make_leaf(root_a, CLIENT_DN, ()), [root_a])
    return BrokerUnderTest(
        1,
        {n: double.bootstrap(n) for n in double.ports},
        directory,
        root_a,
        root_b,
        client,
        double,
        stores,
        store_type=store_type,
    )


@contextlib.contextmanager
def broker_with_stores(
    tmp_path: Path,
    store_type: str,
    **kwargs: Any,
) -> Iterator[BrokerUnderTest]:
    """Like the ``kafka_broker`` fixture, for a given store type (and double options)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        if kwargs or store_type != os.environ.get("KAFKA_STORE_TYPE", "PKCS12"):
            pytest.skip(f"the real broker was not started on {store_type} stores / these options")
        yield from _real_broker(tmp_path)
        return
    broker = start_double(tmp_path, make_ca("A"), make_ca("B"), store_type, **kwargs)
    try:
        yield broker
    finally:
        assert broker.double is not None
        broker.double.stop()


def _real_broker(tmp_path: Path) -> Iterator[BrokerUnderTest]:
    pki = os.environ.get("KAFKA_TEST_PKI_DIR")
    if not pki:
        pytest.fail("KAFKA_BOOTSTRAP_SERVERS is set but KAFKA_TEST_PKI_DIR (the broker's test "
                    "PKI directory) is not: see docs/testing.md")
    pki_dir = Path(pki)
    root_a, root_b = _load_identity(pki_dir, "a"), _load_identity(pki_dir, "b")
    external = os.environ.get("KAFKA_SSL_LISTENER", "SSL")
    internal = os.environ.get("KAFKA_INTERNAL_LISTENER", "INTERNAL")
    addresses = {external: os.environ["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0]}
    if os.environ.get("KAFKA_INTERNAL_BOOTSTRAP"):
        addresses[internal] = os.environ["KAFKA_INTERNAL_BOOTSTRAP"]
    client = write_client_files(tmp_path / "client", make_leaf(root_a, CLIENT_DN, ()), [root_a])
    work = pki_dir / f"run-{os.getpid()}-{tmp_path.name}"
    yield BrokerUnderTest(
        int(os.environ.get("KAFKA_BROKER_ID", "1")),
        addresses,
        work,
        root_a,
        root_b,
        client,
        external=external,
        internal=internal,
        store_type=os.environ.get("KAFKA_STORE_TYPE", "PKCS12"),
    )


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[BrokerUnderTest]:
    """The broker double (listeners SSL and INTERNAL), or the real broker from the env."""
    with broker_with_stores(tmp_path, "PKCS12") as broker:
        yield broker
