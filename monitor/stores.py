"""Open a generation's key store and trust store the way Kafka will (PKCS12, JKS or PEM)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jks
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar import layout
from sidecar.keys import PrivateKey, load_private_key
from sidecar.material import MaterialError, parse_certificates

STORE_FILES = {"PKCS12": (layout.KEYSTORE_P12, layout.TRUSTSTORE_P12),
               "JKS": (layout.KEYSTORE_JKS, layout.TRUSTSTORE_JKS),
               "PEM": (layout.KEYSTORE_PEM, layout.CA_BUNDLE_PEM)}


@dataclasses.dataclass(frozen=True)
class StoreMaterial:
    """What a listener would serve and accept with a generation's stores."""

    directory: Path
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]  # leaf first
    trusted: tuple[x509.Certificate, ...]
    key_entries: int

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]


def load_stores(directory: Path, store_type: str, password: str | None) -> StoreMaterial:
    """Open the stores of ``store_type`` in ``directory``; MaterialError if they do not open."""
    keystore, truststore = (directory / name for name in STORE_FILES[store_type])
    try:
        if store_type == "PKCS12":
            key, chain, count = _pkcs12_keystore(keystore.read_bytes(), password)
            trusted = _pkcs12_truststore(truststore.read_bytes(), password)
        elif store_type == "JKS":
            key, chain, count = _jks_keystore(keystore.read_bytes(), password)
            trusted = _jks_truststore(truststore.read_bytes(), password)
        else:
            data = keystore.read_bytes()
            key = load_private_key(data)
            chain = tuple(parse_certificates(data, f"{keystore.name} certificates"))
            count = 1
            trusted = tuple(parse_certificates(truststore.read_bytes(), truststore.name))
    except MaterialError:
        raise
    except (OSError, ValueError, TypeError, jks.util.KeystoreException) as exc:
        raise MaterialError(f"cannot open {store_type} stores in {directory}: {exc}") from exc
    if not chain:
        raise MaterialError(f"{keystore.name} holds no certificate")
    if not trusted:
        raise MaterialError(f"{truststore.name} holds no trusted certificate")
    return StoreMaterial(directory, key, chain, trusted, count)


def _password(password: str | None) -> str:
    if not password:
        raise MaterialError("a store password is needed to open PKCS12/JKS stores")
    return password


def _pkcs12_keystore(data: bytes, password: str | None
                     ) -> tuple[PrivateKey, tuple[x509.Certificate, ...], int]:
    store = pkcs12.load_pkcs12(data, _password(password).encode())
    if store.key is None or store.cert is None:
        raise MaterialError("PKCS12 keystore has no private key entry")
    key = load_private_key(store.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key, (store.cert.certificate, *(c.certificate for c in store.additional_certs)), 1


def _pkcs12_truststore(data: bytes, password: str | None) -> tuple[x509.Certificate, ...]:
    store = pkcs12.load_pkcs12(data, _password(password).encode())
    return tuple(c.certificate for c in store.additional_certs)


def _jks_keystore(data: bytes, password: str | None
                  ) -> tuple[PrivateKey, tuple[x509.Certificate, ...], int]:
    store = jks.KeyStore.loads(data, _password(password))
    entries = list(store.private_keys.values())
    if not entries:
        raise MaterialError("JKS keystore has no private key entry")
    entry = entries[0]
    if not entry.is_decrypted():
        entry.decrypt(password)
    der_key = serialization.load_der_private_key(entry.pkey_pkcs8, None)
    key = load_private_key(der_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    chain = tuple(x509.load_der_x509_certificate(c[1]) for c in entry.cert_chain)
    return key, chain, len(entries)


def _jks_truststore(data: bytes, password: str | None) -> tuple[x509.Certificate, ...]:
    store = jks.KeyStore.loads(data, _password(password))
    return tuple(x509.load_der_x509_certificate(e.cert) for e in store.certs.values())
