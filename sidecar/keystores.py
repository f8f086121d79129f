"""Keystores and truststores for Java (PKCS12, JKS), built in memory. Pure: no I/O.

FIELD-NOTES: a PKCS12 truststore must mark each certificate as trusted for Java
(``serialize_java_truststore``), otherwise Java sees zero entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import jks
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar.keys import PrivateKey, private_key_pkcs8_der

KEY_ALIAS = "kafka"


def trust_alias(mount: str, index: int) -> str:
    """Alias of the ``index``-th CA certificate of root ``mount`` in a truststore."""
    return mount if index == 0 else f"{mount}-{index}"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _encryption(password: str) -> serialization.KeySerializationEncryption:
    return serialization.BestAvailableEncryption(password.encode())


def pkcs12_keystore(key: PrivateKey, cert: x509.Certificate,
                    chain: Sequence[x509.Certificate], password: str) -> bytes:
    """PKCS12 keystore with one PrivateKeyEntry (alias ``kafka``) holding leaf + chain."""
    return pkcs12.serialize_key_and_certificates(
        KEY_ALIAS.encode(), key, cert, list(chain), _encryption(password))


def pkcs12_truststore(trusted: Sequence[tuple[str, x509.Certificate]], password: str) -> bytes:
    """PKCS12 truststore that Java reads as trustedCertEntry per (alias, certificate)."""
    certs = [pkcs12.PKCS12Certificate(cert, alias.encode()) for alias, cert in trusted]
    return pkcs12.serialize_java_truststore(certs, _encryption(password))


def jks_keystore(key: PrivateKey, cert: x509.Certificate,
                 chain: Sequence[x509.Certificate], password: str) -> bytes:
    """JKS keystore with one PrivateKeyEntry; the key password equals the store password."""
    entry = jks.PrivateKeyEntry.new(KEY_ALIAS, [_der(cert), *(_der(c) for c in chain)],
                                    private_key_pkcs8_der(key), "pkcs8")
    entry.encrypt(password)
    store = jks.KeyStore.new("jks", [entry])
    return bytes(store.saves(password))


def jks_truststore(trusted: Sequence[tuple[str, x509.Certificate]], password: str) -> bytes:
    """JKS truststore with one trustedCertEntry per (alias, certificate)."""
    entries = [jks.TrustedCertEntry.new(alias, _der(cert)) for alias, cert in trusted]
    store = jks.KeyStore.new("jks", entries)
    return bytes(store.saves(password))
