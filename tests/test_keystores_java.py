"""The volume's Java stores, proven with Java itself: keytool listings and a TLS server."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest

from sidecar import layout
from sidecar.bundle import render_bundle
from sidecar.keys import generate_private_key, private_key_pkcs8_pem
from sidecar.material import certificate_pem
from sidecar.volume import Volume
from tests.java_tools import java_mtls_server, keytool_list, mtls_exchange
from tests.pki import LocalRoot, leaf_material

PASSWORD = "s3cret-store-pass"


@pytest.fixture(scope="module")
def roots() -> dict[str, LocalRoot]:
    return {name: LocalRoot(name) for name in ("pki_root_a", "pki_root_b", "pki_root_c")}


@pytest.fixture(scope="module")
def generation(tmp_path_factory: pytest.TempPathFactory, roots: dict[str, LocalRoot]) -> Path:
    """A generation signed by root A, trusting A and B (phase 1 of a rotation A->B)."""
    root = tmp_path_factory.mktemp("volume")
    material = leaf_material(roots["pki_root_a"], [roots["pki_root_a"], roots["pki_root_b"]])
    bundle = render_bundle(material, password=PASSWORD, current=root / "current",
                           generation=1, created_at=dt.datetime.now(dt.UTC))
    return Volume(root).write_generation(bundle)


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "password"
    path.write_text(PASSWORD)
    path.chmod(0o600)
    return path


def client_files(tmp: Path, root: LocalRoot, name: str) -> tuple[Path, Path]:
    key = generate_private_key("ec-p256")
    cert = root.sign(key, f"CN={name},OU=kafka,O=Example", dns=[name])
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(certificate_pem(cert))
    key_path.write_bytes(private_key_pkcs8_pem(key))
    return cert_path, key_path


@pytest.mark.parametrize(("store", "store_type"), [(layout.KEYSTORE_P12, "PKCS12"),
                                                    (layout.KEYSTORE_JKS, "JKS")])
def test_keytool_lists_one_private_key_entry(generation: Path, password_file: Path,
                                             store: str, store_type: str) -> None:
    listing = keytool_list(generation / store, store_type, password_file)
    assert "Your keystore contains 1 entry" in listing
    assert "Entry type: PrivateKeyEntry" in listing
    assert "Certificate chain length: 2" in listing
    assert "CN=broker-1.kafka.test, OU=kafka, O=Example" in listing


@pytest.mark.parametrize(("store", "store_type"), [(layout.TRUSTSTORE_P12, "PKCS12"),
                                                    (layout.TRUSTSTORE_JKS, "JKS")])
def test_keytool_lists_every_trusted_root(generation: Path, password_file: Path,
                                          store: str, store_type: str) -> None:
    listing = keytool_list(generation / store, store_type, password_file)
    assert "Your keystore contains 2 entries" in listing
    assert listing.count("Entry type: trustedCertEntry") == 2
    assert "Alias name: pki_root_a" in listing and "Alias name: pki_root_b" in listing


@pytest.mark.parametrize("store_type", ["PKCS12", "JKS"])
def test_java_server_accepts_trusted_client_and_rejects_untrusted(
        generation: Path, password_file: Path, roots: dict[str, LocalRoot], tmp_path: Path,
        store_type: str) -> None:
    ext = "p12" if store_type == "PKCS12" else "jks"
    ca_bundle = tmp_path / "server-ca.pem"
    ca_bundle.write_bytes(certificate_pem(roots["pki_root_a"].cert))
    with java_mtls_server(generation / f"keystore.{ext}", store_type,
                          generation / f"truststore.{ext}", store_type, password_file) as port:
        for trusted in ("pki_root_a", "pki_root_b"):
            cert, key = client_files(tmp_path, roots[trusted], f"client-{trusted}")
            answer = mtls_exchange(port, cert, key, ca_bundle)
            assert answer.startswith(f"OK CN=client-{trusted},OU=kafka,O=Example ping")
        cert, key = client_files(tmp_path, roots["pki_root_c"], "client-untrusted")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            mtls_exchange(port, cert, key, ca_bundle)


def test_pem_files_are_consistent_and_private(generation: Path) -> None:
    key_pem = (generation / layout.KEY_PEM).read_bytes()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8 for Kafka PEM stores
    keystore_pem = (generation / layout.KEYSTORE_PEM).read_bytes()
    assert keystore_pem.startswith(key_pem)
    assert keystore_pem.count(b"BEGIN CERTIFICATE") == 2
    for name in (layout.KEY_PEM, layout.KEYSTORE_PEM, layout.KEYSTORE_P12, layout.KEYSTORE_JKS,
                 layout.TRUSTSTORE_P12, layout.TRUSTSTORE_JKS, layout.BROKER_PROPERTIES,
                 layout.CLIENT_PROPERTIES, layout.CONNECT_PROPERTIES):
        assert (generation / name).stat().st_mode & 0o777 == 0o600, name
    context = ssl.create_default_context()
    context.load_cert_chain(generation / layout.FULLCHAIN_PEM, generation / layout.KEY_PEM)


def test_properties_snippets_point_at_current(generation: Path) -> None:
    current = generation.parent.parent / "current"
    client = (generation / layout.CLIENT_PROPERTIES).read_text()
    assert "security.protocol=SSL" in client
    assert f"ssl.keystore.location={current}/keystore.p12" in client
    assert f"ssl.truststore.password={PASSWORD}" in client
    connect = (generation / layout.CONNECT_PROPERTIES).read_text()
    assert f"producer.ssl.keystore.location={current}/keystore.p12" in connect
    assert f"consumer.ssl.truststore.location={current}/truststore.p12" in connect
    rdkafka = (generation / layout.LIBRDKAFKA_PROPERTIES).read_text()
    assert f"ssl.ca.location={current}/ca-bundle.pem" in rdkafka
    assert "password" not in rdkafka
    broker = (generation / layout.BROKER_PROPERTIES).read_text()
    assert "ssl.client.auth=required" in broker
