"""Key stores as Java loads them: PKCS12, JKS and PEM (DefaultSslEngineFactory.FileBasedStore /
PemStore), with Java's view of their entries and the configuration checks of
``createKeystore`` / ``createTruststore``."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import jks
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.doubles.kafka.configs import (
    KEY_PASSWORD,
    KEYSTORE_CHAIN,
    KEYSTORE_KEY,
    KEYSTORE_LOCATION,
    KEYSTORE_PASSWORD,
    KEYSTORE_TYPE,
    TRUSTSTORE_CERTIFICATES,
    TRUSTSTORE_LOCATION,
    TRUSTSTORE_PASSWORD,
    TRUSTSTORE_TYPE,
)
from tests.doubles.kafka.errors import INVALID_CONFIGURATION, KAFKA_EXCEPTION, JavaError
from tests.doubles.kafka.pkcs12 import pkcs12_bags


@dataclass(frozen=True)
class StoreEntry:
    """One alias of a Java KeyStore: ``getCertificate(alias)`` and whether it is a key entry."""

    alias: str
    cert: x509.Certificate
    is_key: bool


@dataclass(frozen=True)
class LoadedStore:
    """A KeyStore as Java sees it, plus the first key entry's key and chain."""

    entries: list[StoreEntry]
    key: PrivateKeyTypes | None = None
    chain: list[x509.Certificate] = field(default_factory=list)

    def trusted(self) -> list[x509.Certificate]:
        """Certificates a TrustManagerFactory would trust (cert entries and key-entry leaves)."""
        return [e.cert for e in self.entries]


@dataclass(frozen=True)
class SecurityStore:
    """DefaultSslEngineFactory.FileBasedStore / PemStore: the store and its file's mtime."""

    path: str | None
    mtime_ms: int | None
    store: LoadedStore

    def modified(self) -> bool:
        """FileBasedStore.modified(): the file's mtime (ms) differs; a missing file is not."""
        if self.path is None:
            return False
        now = _mtime_ms(self.path)
        return now is not None and now != self.mtime_ms


def _mtime_ms(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns // 1_000_000
    except OSError:
        return None


_PEM_BLOCK = re.compile(
    r"-+BEGIN\s*([^-]*?)\s*-+\s+(?:\s*[^\r\n]*:[^\r\n]*[\r\n]+)*([a-zA-Z0-9/+=\s]*)-+END\s*[^-]*-+"
)


def _pem_blocks(text: str) -> list[tuple[str, bytes]]:
    return [
        (m.group(1).strip().upper(), base64.b64decode(re.sub(r"\s", "", m.group(2))))
        for m in _PEM_BLOCK.finditer(text + "\n")
    ]


def _pem_keystore(text: str, key_password: str | None) -> LoadedStore:
    """DefaultSslEngineFactory.PemStore: one PKCS#8 key (encrypted iff a key password) + chain."""
    blocks = _pem_blocks(text)
    keys = [(label, der) for label, der in blocks if re.fullmatch(r".*PRIVATE\s+KEY", label)]
    certs = [der for label, der in blocks if label == "CERTIFICATE"]
    if not keys:
        raise JavaError(INVALID_CONFIGURATION, "No matching PRIVATE KEY entries in PEM file")
    if len(keys) != 1:
        raise JavaError(INVALID_CONFIGURATION, f"Expected one private key, but found {len(keys)}")
    if not certs:
        raise JavaError(INVALID_CONFIGURATION, "No matching CERTIFICATE entries in PEM file")
    label, der = keys[0]
    # Java builds a PKCS8EncodedKeySpec (or decrypts an EncryptedPrivateKeyInfo): PKCS#1 and
    # SEC1 keys ("RSA/EC PRIVATE KEY") do not load.
    wanted = "ENCRYPTED PRIVATE KEY" if key_password is not None else "PRIVATE KEY"
    if label != wanted:
        raise JavaError(INVALID_CONFIGURATION, "Invalid PEM keystore configs")
    try:
        pw = key_password.encode() if key_password is not None else None
        key = serialization.load_der_private_key(der, pw)
        chain = [x509.load_der_x509_certificate(c) for c in certs]
    except (ValueError, TypeError) as e:
        raise JavaError(INVALID_CONFIGURATION, "Invalid PEM keystore configs") from e
    return LoadedStore([StoreEntry("kafka", chain[0], True)], key, chain)


def _pem_truststore(text: str) -> LoadedStore:
    certs = [der for label, der in _pem_blocks(text) if label == "CERTIFICATE"]
    if not certs:
        raise JavaError(INVALID_CONFIGURATION, "No matching CERTIFICATE entries in PEM file")
    try:
        loaded = [x509.load_der_x509_certificate(c) for c in certs]
    except ValueError as e:
        raise JavaError(INVALID_CONFIGURATION, "Invalid PEM truststore configs") from e
    return LoadedStore([StoreEntry(f"kafka{i}", c, False) for i, c in enumerate(loaded)])


def _load_pkcs12(
    data: bytes, password: str | None, key_password: str | None, fail: JavaError
) -> LoadedStore:
    """Java's PKCS12 KeyStore: key entries, plus cert entries only with Java's trusted attribute."""
    pw = password.encode() if password is not None else None
    try:
        loaded = pkcs12.load_pkcs12(data, pw)
    except ValueError as e:
        raise fail from e
    bags = pkcs12_bags(data, pw or b"")
    entries: list[StoreEntry] = []
    if loaded.key is not None and loaded.cert is not None:
        name = loaded.cert.friendly_name
        entries.append(StoreEntry(name.decode() if name else "1", loaded.cert.certificate, True))
    if bags is not None:
        entries += [
            StoreEntry(b.friendly_name or "", x509.load_der_x509_certificate(b.cert_der), False)
            for b in bags
            if b.cert_der is not None and b.java_trusted and b.local_key_id is None
        ]
    else:  # layout not understood: take named extra certificates as trusted entries
        entries += [
            StoreEntry(c.friendly_name.decode(), c.certificate, False)
            for c in loaded.additional_certs
            if c.friendly_name
        ]
    if loaded.key is not None and key_password is not None and key_password != password:
        raise JavaError(
            KAFKA_EXCEPTION,
            "java.security.UnrecoverableKeyException: Get Key failed:"
            " Given final block not properly padded. Such issues can arise if a bad"
            " key is used during decryption.",
        )
    chain = [loaded.cert.certificate] if loaded.cert else []
    chain += [c.certificate for c in loaded.additional_certs]
    return LoadedStore(entries, loaded.key, chain)


def _load_jks(
    data: bytes, password: str | None, key_password: str | None, fail: JavaError
) -> LoadedStore:
    try:
        ks = jks.KeyStore.loads(data, password or "", try_decrypt_keys=False)
    except Exception as e:  # pyjks raises several unrelated exception types
        raise fail from e
    entries: list[StoreEntry] = []
    key = None
    chain: list[x509.Certificate] = []
    for alias in sorted(ks.entries):
        entry = ks.entries[alias]
        if isinstance(entry, jks.PrivateKeyEntry):
            try:
                entry.decrypt(key_password if key_password is not None else password or "")
            except Exception as e:
                raise JavaError(
                    KAFKA_EXCEPTION, "java.security.UnrecoverableKeyException: Cannot recover key"
                ) from e
            certs = [x509.load_der_x509_certificate(c[1]) for c in entry.cert_chain]
            entries.append(StoreEntry(alias, certs[0], True))
            if key is None:
                key = serialization.load_der_private_key(entry.pkey_pkcs8, None)
                chain = certs
        elif isinstance(entry, jks.TrustedCertEntry):
            entries.append(StoreEntry(alias, x509.load_der_x509_certificate(entry.cert), False))
    return LoadedStore(entries, key, chain)


def _load_file_store(
    type_: str,
    path: str,
    password: str | None,
    key_password: str | None,
) -> LoadedStore:
    """FileBasedStore.load(): Java 17 reads JKS and PKCS12 whichever of the two is named."""
    fail = JavaError(KAFKA_EXCEPTION, f"Failed to load SSL keystore {path} of type {type_}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise fail from e
    if type_.upper() not in ("JKS", "PKCS12", "JCEKS"):
        raise fail
    if data[:4] in (b"\xfe\xed\xfe\xed", b"\xce\xce\xce\xce"):
        return _load_jks(data, password, key_password, fail)
    if type_.upper() == "JCEKS":
        raise fail
    return _load_pkcs12(data, password, key_password, fail)


def create_keystore(cfg: Mapping[str, str]) -> SecurityStore | None:
    """DefaultSslEngineFactory.createKeystore, with its configuration checks."""
    type_ = cfg.get(KEYSTORE_TYPE, "JKS")
    path, password = cfg.get(KEYSTORE_LOCATION), cfg.get(KEYSTORE_PASSWORD)
    key_password = cfg.get(KEY_PASSWORD)
    key, chain = cfg.get(KEYSTORE_KEY), cfg.get(KEYSTORE_CHAIN)

    def bad(msg: str) -> JavaError:
        return JavaError(INVALID_CONFIGURATION, msg)

    if key is not None:
        if type_ != "PEM":
            raise bad(
                f"SSL private key can be specified only for PEM, but key store type is {type_}."
            )
        if chain is None:
            raise bad("SSL private key is specified, but certificate chain is not specified.")
        if path is not None:
            raise bad("Both SSL key store location and separate private key are specified.")
        if password is not None:
            raise bad(
                "SSL key store password cannot be specified with PEM format, only key "
                "password may be specified."
            )
        return SecurityStore(None, None, _pem_keystore(key + "\n" + chain, key_password))
    if chain is not None:
        raise bad("SSL certificate chain is specified, but private key is not specified")
    if type_ == "PEM" and path is not None:
        if password is not None:
            raise bad(
                "SSL key store password cannot be specified with PEM format, only key "
                "password may be specified"
            )
        mtime = _mtime_ms(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            store = _pem_keystore(text, key_password)
        except (OSError, UnicodeDecodeError, JavaError) as e:
            raise bad(f"Failed to load PEM SSL keystore {path}") from e
        return SecurityStore(path, mtime, store)
    if path is None and password is not None:
        raise bad("SSL key store is not specified, but key store password is specified.")
    if path is not None and password is None:
        raise bad("SSL key store is specified, but key store password is not specified.")
    if path is None:
        return None
    mtime = _mtime_ms(path)
    return SecurityStore(path, mtime, _load_file_store(type_, path, password, key_password))


def create_truststore(cfg: Mapping[str, str]) -> SecurityStore | None:
    """DefaultSslEngineFactory.createTruststore, with its configuration checks."""
    type_ = cfg.get(TRUSTSTORE_TYPE, "JKS")
    path, password = cfg.get(TRUSTSTORE_LOCATION), cfg.get(TRUSTSTORE_PASSWORD)
    certs = cfg.get(TRUSTSTORE_CERTIFICATES)

    def bad(msg: str) -> JavaError:
        return JavaError(INVALID_CONFIGURATION, msg)

    if certs is not None:
        if type_ != "PEM":
            raise bad(
                f"SSL trust store certs can be specified only for PEM, but trust store type"
                f" is {type_}."
            )
        if path is not None:
            raise bad(
                "Both SSL trust store location and separate trust certificates are specified."
            )
        if password is not None:
            raise bad("SSL trust store password cannot be specified for PEM format.")
        return SecurityStore(None, None, _pem_truststore(certs))
    if type_ == "PEM" and path is not None:
        if password is not None:
            raise bad("SSL trust store password cannot be specified for PEM format.")
        mtime = _mtime_ms(path)
        try:
            with open(path, encoding="utf-8") as f:
                store = _pem_truststore(f.read())
        except (OSError, UnicodeDecodeError, JavaError) as e:
            raise bad(f"Failed to load PEM SSL keystore {path}") from e
        return SecurityStore(path, mtime, store)
    if path is None and password is not None:
        raise bad("SSL trust store is not specified, but trust store password is specified.")
    if path is None:
        return None
    mtime = _mtime_ms(path)
    return SecurityStore(path, mtime, _load_file_store(type_, path, password, None))
