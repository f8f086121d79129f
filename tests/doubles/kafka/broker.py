"""A Kafka broker double: TLS listeners, the admin wire protocol, KIP-226 keystore reloads.

One instance is one broker id. Every listener is a TLS server socket that requires a client
certificate and serves the listener's *current* SSL material to each new connection; a reload
never drops established connections. The wire protocol covers what confluent-kafka's
AdminClient (librdkafka) needs for ``describe_configs`` and ``incremental_alter_configs``:
ApiVersions, Metadata, DescribeConfigs and IncrementalAlterConfigs, flexible versions included.

Dynamic keystore/truststore updates follow Kafka's own code, read from apache/kafka:

* ``DynamicBrokerConfig.scala`` -- only ``listener.name.<listener>.ssl.*`` reconfigurable SSL
  configs may change; base security configs and non-dynamic configs are refused with Kafka's
  messages; a change is validated before it is applied, and a same-value update re-reads the
  store files only if their modification time changed (``reloadUpdatedFilesWithoutConfigChange``).
* ``SslFactory.java`` -- ``createNewSslEngineFactory``: no rebuild if the configs are equal and
  no store file's mtime (ms) changed (``DefaultSslEngineFactory.shouldBeRebuilt``,
  ``FileBasedStore.modified``); otherwise load the stores, refuse a keystore whose certificate
  DN changed (unless ``ssl.allow.dn.changes``) or whose SANs drop an old one (unless
  ``ssl.allow.san.changes``) or whose entry count changed (``CertificateEntries``); on the
  inter-broker listener run the ``SslEngineValidator`` handshakes old-server/new-client and
  new-server/old-client. Failures become ``Validation of dynamic config update of SSLFactory
  failed: <exception>``.
* ``ConfigAdminManager.scala`` (KRaft) -- the refusal is answered with INVALID_REQUEST (42) and
  the ConfigException message; ``ZkAdminManager.scala`` (ZooKeeper mode) prefixes
  ``Invalid config value for resource ConfigResource(type=BROKER, name='<id>'): ``.
* What differs between Kafka versions (the refusal texts, what a new keystore is compared
  with, the mode) is a ``kafka_profiles.KafkaProfile`` (``profile=``; default the newest).
* KRaft applies an accepted change asynchronously in ``DynamicConfigPublisher``: a same-path
  reload that fails there is only logged, the client has already been told "success".
* What that costs and when it is applied is ``kafka_timing.BrokerTiming`` (``timing=``): every
  listener validation and reload takes the time of Kafka's factory builds and validator
  handshakes, and a changed config is applied 100-300 ms *after* the answer (in ZooKeeper mode
  too: the config-change notification). A test must wait for the served certificate, never
  take the answer for the reload; ``timing=INSTANT`` applies before answering, at no cost.

Limits: Java exception texts other than Kafka's own messages are approximations (for instance
the PKIX message for an untrusted certificate); only one private key per keystore; the broker
serves no topics. Standalone: ``python -m tests.doubles.kafka.broker --broker-id 1 --config
server.properties`` (from the project root) prints one JSON line with the listener ports and
serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jks
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.doubles.kafka.profiles import PROFILES, KafkaProfile, Mode, profile_for
from tests.doubles.kafka.timing import INSTANT, BrokerTiming

# --------------------------------------------------------------------------------------------
# Java exceptions as Kafka renders them (Throwable.toString: "<class>: <message>")
# --------------------------------------------------------------------------------------------

CONFIG_EXCEPTION = "org.apache.kafka.common.config.ConfigException"
KAFKA_EXCEPTION = "org.apache.kafka.common.KafkaException"
INVALID_CONFIGURATION = "org.apache.kafka.common.errors.InvalidConfigurationException"
SSL_HANDSHAKE_EXCEPTION = "javax.net.ssl.SSLHandshakeException"
PKIX_FAILURE = (
    "PKIX path building failed: sun.security.provider.certpath.SunCertPathBuilderException: "
    "unable to find valid certification path to requested target"
)

NONE = 0
UNSUPPORTED_VERSION = 35
INVALID_CONFIG = 40
INVALID_REQUEST = 42

RESOURCE_BROKER = 4
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3
SOURCE_DYNAMIC_BROKER, SOURCE_STATIC_BROKER, SOURCE_DEFAULT = 2, 4, 5
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_PASSWORD = 1, 2, 3, 9


class JavaError(Exception):
    """An exception as Kafka would print it: ``<java class>: <message>``."""

    def __init__(self, java_class: str, message: str) -> None:
        super().__init__(f"{java_class}: {message}")
        self.java_class = java_class
        self.message = message


# --------------------------------------------------------------------------------------------
# Config names (SslConfigs, BrokerSecurityConfigs)
# --------------------------------------------------------------------------------------------

KEYSTORE_TYPE = "ssl.keystore.type"
KEYSTORE_LOCATION = "ssl.keystore.location"
KEYSTORE_PASSWORD = "ssl.keystore.password"
KEY_PASSWORD = "ssl.key.password"
KEYSTORE_KEY = "ssl.keystore.key"
KEYSTORE_CHAIN = "ssl.keystore.certificate.chain"
TRUSTSTORE_TYPE = "ssl.truststore.type"
TRUSTSTORE_LOCATION = "ssl.truststore.location"
TRUSTSTORE_PASSWORD = "ssl.truststore.password"
TRUSTSTORE_CERTIFICATES = "ssl.truststore.certificates"
ALLOW_DN_CHANGES = "ssl.allow.dn.changes"
ALLOW_SAN_CHANGES = "ssl.allow.san.changes"

#: SslConfigs.RECONFIGURABLE_CONFIGS (Kafka 3.x/4.x, KIP-651 PEM configs included).
RECONFIGURABLE = frozenset(
    {
        KEYSTORE_TYPE,
        KEYSTORE_LOCATION,
        KEYSTORE_PASSWORD,
        KEY_PASSWORD,
        KEYSTORE_KEY,
        KEYSTORE_CHAIN,
        TRUSTSTORE_TYPE,
        TRUSTSTORE_LOCATION,
        TRUSTSTORE_PASSWORD,
        TRUSTSTORE_CERTIFICATES,
    }
)
#: Listener SSL settings the factory reads; a change to one outside RECONFIGURABLE is refused.
LISTENER_SSL = RECONFIGURABLE | {
    ALLOW_DN_CHANGES,
    ALLOW_SAN_CHANGES,
    "ssl.client.auth",
    "ssl.protocol",
    "ssl.enabled.protocols",
    "ssl.cipher.suites",
    "ssl.endpoint.identification.algorithm",
}
PASSWORDS = frozenset(
    {
        KEYSTORE_PASSWORD,
        KEY_PASSWORD,
        TRUSTSTORE_PASSWORD,
        KEYSTORE_KEY,
        KEYSTORE_CHAIN,
        TRUSTSTORE_CERTIFICATES,
        "password.encoder.secret",
        "password.encoder.old.secret",
    }
)
_LISTENER_KEY = re.compile(r"listener\.name\.([^.]*)\.(.*)")
#: DynamicBrokerConfig.AllDynamicConfigs, narrowed to the names this double reports: the
#: SSL ones (DynamicSecurityConfigs) and DynamicListenerConfig.ReconfigurableConfigs.
ALL_DYNAMIC = RECONFIGURABLE | {"listeners", "advertised.listeners",
                                "listener.security.protocol.map"}


def read_only(name: str) -> bool:
    """DescribeConfigs' read-only flag of a broker config: ``!AllDynamicConfigs.contains(name)``
    (``AdminManager.createBrokerConfigEntry`` in 2.4, ``ConfigHelper`` later), the full name
    looked up. A listener-prefixed SSL setting is therefore reported read-only although it is
    the only form that may be altered (seen on 2.4.1 and trunk alike)."""
    return name not in ALL_DYNAMIC


def _base_name(name: str) -> str:
    m = _LISTENER_KEY.fullmatch(name)
    return m.group(2) if m else name


def _scala_set(names: list[str]) -> str:
    return ("Set(" if len(names) <= 4 else "HashSet(") + ", ".join(sorted(names)) + ")"


# --------------------------------------------------------------------------------------------
# Stores: PKCS12 / JKS / PEM, with Java's view of their entries
# --------------------------------------------------------------------------------------------


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
    import base64

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


# --- a small DER reader, enough to see the PKCS#12 bag attributes Java looks at ------------

_OID_DATA = "1.2.840.113549.1.7.1"
_OID_ENCRYPTED_DATA = "1.2.840.113549.1.7.6"
_OID_CERT_BAG = "1.2.840.113549.1.12.10.1.3"
_OID_KEY_BAGS = ("1.2.840.113549.1.12.10.1.1", "1.2.840.113549.1.12.10.1.2")
_OID_FRIENDLY_NAME = "1.2.840.113549.1.9.20"
_OID_LOCAL_KEY_ID = "1.2.840.113549.1.9.21"
_OID_JAVA_TRUSTED = "2.16.840.1.113894.746875.1.1"
_OID_PBES2 = "1.2.840.113549.1.5.13"
_PRF: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1.2.840.113549.2.7": hashes.SHA1,
    "1.2.840.113549.2.9": hashes.SHA256,
    "1.2.840.113549.2.10": hashes.SHA384,
    "1.2.840.113549.2.11": hashes.SHA512,
}
_AES_KEY_LEN = {
    "2.16.840.1.101.3.4.1.2": 16,
    "2.16.840.1.101.3.4.1.22": 24,
    "2.16.840.1.101.3.4.1.42": 32,
}


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length == 0x80 or tag & 0x1F == 0x1F:
        raise ValueError("BER indefinite length or long tag")
    if length & 0x80:
        n = length & 0x7F
        length, pos = int.from_bytes(data[pos : pos + n], "big"), pos + n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos : pos + length], pos + length


def _children(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        tag, value, pos = _tlv(data, pos)
        out.append((tag, value))
    return out


def _oid(value: bytes) -> str:
    parts, n = [value[0] // 40, value[0] % 40], 0
    for b in value[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


@dataclass(frozen=True)
class _Bag:
    is_key: bool
    cert_der: bytes | None
    friendly_name: str | None
    local_key_id: bytes | None
    java_trusted: bool


def _pbes2_decrypt(alg: bytes, ciphertext: bytes, password: bytes) -> bytes:
    (_, oid), (_, params) = _children(alg)
    if _oid(oid) != _OID_PBES2:
        raise ValueError("not PBES2")
    (_, kdf), (_, enc) = _children(params)
    (_, _kdf_oid), (_, kdf_params) = _children(kdf)
    kp = _children(kdf_params)
    salt, iterations = kp[0][1], int.from_bytes(kp[1][1], "big")
    prf: Callable[[], hashes.HashAlgorithm] = hashes.SHA1
    for tag, value in kp[2:]:
        if tag == 0x30:
            prf = _PRF[_oid(_children(value)[0][1])]
    (_, enc_oid), (_, iv) = _children(enc)
    key = PBKDF2HMAC(prf(), _AES_KEY_LEN[_oid(enc_oid)], salt, iterations).derive(password)
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    return unpad.update(dec.update(ciphertext) + dec.finalize()) + unpad.finalize()


def _pkcs12_bags(data: bytes, password: bytes) -> list[_Bag] | None:
    """The safe bags of a PFX with their attributes, or None if beyond this small parser."""
    try:
        ((_, pfx),) = _children(data)
        content_info = _children(pfx)[1][1]
        wrapped = _children(content_info)[1][1]
        auth_safe = _children(_children(wrapped)[0][1])[0][1]
        bags: list[_Bag] = []
        for _, ci in _children(auth_safe):
            (_, oid), (_, content) = _children(ci)
            inner = _children(content)[0][1]
            if _oid(oid) == _OID_DATA:
                safe_contents = inner
            elif _oid(oid) == _OID_ENCRYPTED_DATA:
                eci = _children(inner)[1][1]
                _, alg, enc = (v for _, v in _children(eci))
                safe_contents = _pbes2_decrypt(alg, enc, password)
            else:
                return None
            ((_, seq),) = _children(safe_contents)
            for _, bag in _children(seq):
                bags.append(_parse_bag(bag))
        return bags
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _parse_bag(bag: bytes) -> _Bag:
    parts = _children(bag)
    bag_oid = _oid(parts[0][1])
    attrs: dict[str, list[tuple[int, bytes]]] = {}
    for tag, value in parts[2:]:
        if tag == 0x31:
            for _, attr in _children(value):
                (_, a_oid), (_, values) = _children(attr)
                attrs[_oid(a_oid)] = _children(values)
    name = attrs.get(_OID_FRIENDLY_NAME)
    key_id = attrs.get(_OID_LOCAL_KEY_ID)
    cert_der = None
    if bag_oid == _OID_CERT_BAG:
        cert_bag = _children(parts[1][1])[0][1]
        cert_der = _children(_children(cert_bag)[1][1])[0][1]
    return _Bag(
        is_key=bag_oid in _OID_KEY_BAGS,
        cert_der=cert_der,
        friendly_name=name[0][1].decode("utf-16-be") if name else None,
        local_key_id=key_id[0][1] if key_id else None,
        java_trusted=_OID_JAVA_TRUSTED in attrs,
    )


def _load_pkcs12(
    data: bytes, password: str | None, key_password: str | None, fail: JavaError
) -> LoadedStore:
    """Java's PKCS12 KeyStore: key entries, plus cert entries only with Java's trusted attribute."""
    pw = password.encode() if password is not None else None
    try:
        loaded = pkcs12.load_pkcs12(data, pw)
    except ValueError as e:
        raise fail from e
    bags = _pkcs12_bags(data, pw or b"")
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


# --------------------------------------------------------------------------------------------
# The SSL engine factory and SslFactory's acceptance rules
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Wire protocol primitives (classic and flexible/compact encodings)
# --------------------------------------------------------------------------------------------


class Reader:
    """Reads Kafka protocol primitives from a request body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("request truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int8(self) -> int:
        return int(struct.unpack(">b", self._take(1))[0])

    def int16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def boolean(self) -> bool:
        return self._take(1) != b"\x00"

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self._take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def string(self, flexible: bool) -> str | None:
        n = self.uvarint() - 1 if flexible else self.int16()
        return None if n < 0 else self._take(n).decode()

    def array(self, flexible: bool, item: Callable[[], Any]) -> list[Any] | None:
        n = self.uvarint() - 1 if flexible else self.int32()
        return None if n < 0 else [item() for _ in range(n)]

    def uuid(self) -> bytes:
        return self._take(16)

    def tags(self, flexible: bool) -> None:
        if flexible:
            for _ in range(self.uvarint()):
                self.uvarint()
                self._take(self.uvarint())


class Writer:
    """Writes Kafka protocol primitives into a response body."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def bytes(self) -> bytes:
        return b"".join(self.parts)

    def int8(self, v: int) -> None:
        self.parts.append(struct.pack(">b", v))

    def int16(self, v: int) -> None:
        self.parts.append(struct.pack(">h", v))

    def int32(self, v: int) -> None:
        self.parts.append(struct.pack(">i", v))

    def boolean(self, v: bool) -> None:
        self.parts.append(b"\x01" if v else b"\x00")

    def uvarint(self, v: int) -> None:
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        self.parts.append(bytes(out))

    def string(self, v: str | None, flexible: bool) -> None:
        raw = v.encode() if v is not None else b""
        if flexible:
            self.uvarint(0 if v is None else len(raw) + 1)
        else:
            self.int16(-1 if v is None else len(raw))
        self.parts.append(raw)

    def array_len(self, n: int | None, flexible: bool) -> None:
        if flexible:
            self.uvarint(0 if n is None else n + 1)
        else:
            self.int32(-1 if n is None else n)

    def tags(self, flexible: bool) -> None:
        if flexible:
            self.uvarint(0)


API_VERSIONS, METADATA, DESCRIBE_CONFIGS, INCREMENTAL_ALTER_CONFIGS = 18, 3, 32, 44
#: api key -> (min, max, first flexible version). Only what is implemented is advertised.
SUPPORTED: dict[int, tuple[int, int, int]] = {
    API_VERSIONS: (0, 4, 3),
    METADATA: (0, 12, 9),
    DESCRIBE_CONFIGS: (0, 4, 4),
    INCREMENTAL_ALTER_CONFIGS: (0, 1, 1),
}


@dataclass
class AlterOp:
    """One AlterableConfig of an IncrementalAlterConfigs request."""

    name: str
    op: int
    value: str | None


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


@dataclass
class _Listener:
    name: str
    port: int
    sock: socket.socket
    factory: SslEngineFactory
    reloads: int = 0


class KafkaBrokerDouble:
    """One Kafka broker: TLS listeners, admin protocol, KIP-226 listener SSL reloads.

    ``listeners`` maps listener names to ports (0 = any free port). ``config`` holds the static
    broker properties as in server.properties: ``ssl.*`` and ``listener.name.<lower-case
    listener>.ssl.*`` (store type/location/passwords, ``ssl.allow.dn.changes`` ...).
    ``profile`` is the Kafka version and metadata mode played (``kafka_profiles``; default the
    newest). ``mode`` ("kraft" or "zk") and ``kafka_version`` instead pick the profile with
    ``kafka_profiles.profile_for``.
    """

    def __init__(
        self,
        broker_id: int = 1,
        listeners: Mapping[str, int] | None = None,
        config: Mapping[str, str] | None = None,
        inter_broker_listener: str | None = None,
        *,
        host: str = "127.0.0.1",
        cluster_id: str = "kafka-pki-double",
        mode: Mode | None = None,
        kafka_version: tuple[int, int] | None = None,
        profile: KafkaProfile | None = None,
        on_request: Callable[[int, int], None] | None = None,
        timing: BrokerTiming | None = None,
        seed: int | None = None,
    ) -> None:
        self.broker_id = broker_id
        self.host = host
        self.cluster_id = cluster_id
        self.profile = profile or profile_for(kafka_version, mode)
        self.on_request = on_request
        self._static = dict(config or {})
        self._listener_ports = dict(listeners or {"SSL": 0})
        self.inter_broker_listener = inter_broker_listener or self._static.get(
            "inter.broker.listener.name"
        )
        self.timing = timing or self.profile.timing
        self._rng = random.Random(seed)
        self._dynamic: dict[str, str] = {}  # stored (ZooKeeper / the metadata log)
        self._applied: dict[str, str] = {}  # what the listeners were last reconfigured with
        self._lock = threading.RLock()  # listener state, read by every new connection
        self._alter_lock = threading.RLock()  # one config change at a time (DynamicBrokerConfig)
        self._pending: list[threading.Timer] = []
        self._listeners: dict[str, _Listener] = {}
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._refuse: tuple[int, str] | None = None
        self._keep_old = False
        self._tmpdir = ""
        self.requests: list[tuple[int, int]] = []
        self.log: list[str] = []
        self.reload_count = 0
        self.swaps: list[tuple[float, str, int]] = []  # (unix time, listener, serial) per reload

    @property
    def mode(self) -> Mode:
        """"zk" or "kraft", the profile's."""
        return self.profile.mode

    @property
    def kafka_version(self) -> tuple[int, int]:
        return self.profile.version

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> KafkaBrokerDouble:
        """Build every listener's SSL context from its static config and start serving."""
        self._tmpdir = tempfile.mkdtemp(prefix="kafka-double-")
        os.chmod(self._tmpdir, 0o700)
        try:
            for name, port in self._listener_ports.items():
                factory = SslEngineFactory(self._effective_ssl(name, self._dynamic), self._tmpdir)
                if name == self.inter_broker_listener:
                    try:
                        validate_handshakes(factory, factory)
                    except JavaError as e:
                        raise JavaError(
                            CONFIG_EXCEPTION,
                            "A client SSLEngine created with the "
                            "provided settings can't connect to a server SSLEngine "
                            "created with those settings.",
                        ) from e
                sock = socket.create_server((self.host, port))
                self._listeners[name] = _Listener(name, sock.getsockname()[1], sock, factory)
        except BaseException:
            self.stop()
            raise
        for lst in self._listeners.values():
            t = threading.Thread(
                target=self._accept_loop,
                args=(lst,),
                daemon=True,
                name=f"kafka-double-{self.broker_id}-{lst.name}",
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Close the listeners and every open connection."""
        self._stopping.set()
        with self._lock:
            pending, self._pending = self._pending, []
        for timer in pending:
            timer.cancel()
        for lst in self._listeners.values():
            with contextlib.suppress(OSError):
                lst.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
            with contextlib.suppress(OSError):
                lst.sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(c, socket.SHUT_RDWR)  # the TCP socket, not the TLS layer
            with contextlib.suppress(OSError):
                c.close()
        for t in self._threads:
            t.join(timeout=2)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> KafkaBrokerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls ---------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        """Listener name -> bound port."""
        return {n: lst.port for n, lst in self._listeners.items()}

    def bootstrap(self, listener: str) -> str:
        """``host:port`` of a listener, for ``bootstrap.servers``."""
        return f"{self.host}:{self._listeners[listener].port}"

    @property
    def dynamic_config(self) -> dict[str, str]:
        """The per-broker dynamic configs currently stored (as DescribeConfigs would see them)."""
        with self._lock:
            return dict(self._dynamic)

    def served_certificate(self, listener: str) -> x509.Certificate:
        """The leaf certificate a new connection to ``listener`` is served."""
        with self._lock:
            return self._listeners[listener].factory.certificate

    def listener_reload_count(self, listener: str) -> int:
        """How many times this listener's SSL material was replaced."""
        with self._lock:
            return self._listeners[listener].reloads

    def wait_applied(self, timeout: float = 10.0) -> bool:
        """Wait until every accepted change has been applied (no config notification pending)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not any(t.is_alive() for t in self._pending):
                    return True
            time.sleep(0.01)
        return False

    def refuse_next_reload(self, message: str, error_code: int = INVALID_REQUEST) -> None:
        """Answer the next (non validate-only) IncrementalAlterConfigs with this error."""
        with self._lock:
            self._refuse = (error_code, message)

    def accept_but_keep_old(self, enabled: bool = True) -> None:
        """Fault: answer alters with success and store them, but keep serving the old material."""
        with self._lock:
            self._keep_old = enabled

    # --- config model ----------------------------------------------------------------------

    def _effective_ssl(self, listener: str, dynamic: Mapping[str, str]) -> dict[str, str]:
        """KafkaConfig.valuesWithPrefixOverride for the listener's SSL settings."""
        prefix = f"listener.name.{listener.lower()}."
        out: dict[str, str] = {}
        for key in LISTENER_SSL:
            for source in (
                dynamic.get(prefix + key),
                self._static.get(prefix + key),
                self._static.get(key),
            ):
                if source is not None:
                    out[key] = source
                    break
        return out

    def _static_view(self) -> dict[str, str]:
        listeners = ",".join(f"{n}://{self.host}:{lst.port}" for n, lst in self._listeners.items())
        view = {
            "broker.id": str(self.broker_id),
            "node.id": str(self.broker_id),
            "listeners": listeners,
            "advertised.listeners": listeners,
            "listener.security.protocol.map": ",".join(f"{n}:SSL" for n in self._listeners),
            "ssl.client.auth": "required",
        }
        if self.inter_broker_listener:
            view["inter.broker.listener.name"] = self.inter_broker_listener
        if self.mode == "kraft":
            view["process.roles"] = "broker,controller"
        else:
            view["zookeeper.connect"] = "127.0.0.1:2181"
        view.update(self._static)
        return view

    def _defaults(self) -> dict[str, str | None]:
        """The defaults DescribeConfigs lists that tell a version apart (a real broker lists
        every config it knows): ``ssl.engine.factory.class`` from 2.6 (KIP-519), the allow
        flags from 3.7 (KIP-978), ``process.roles`` (empty in ZooKeeper mode) from 2.8."""
        out: dict[str, str | None] = {}
        if self.kafka_version >= (2, 6):
            out["ssl.engine.factory.class"] = None
        if self.kafka_version >= (2, 8):
            out["process.roles"] = ""
        if self.kafka_version >= (3, 7):
            out[ALLOW_DN_CHANGES] = out[ALLOW_SAN_CHANGES] = "false"
        return out

    # --- IncrementalAlterConfigs -----------------------------------------------------------

    def _wrap(self, resource: str, message: str) -> str:
        return self.profile.wrap(resource, message)

    def alter_broker_configs(
        self, resource: str, ops: list[AlterOp], validate_only: bool
    ) -> tuple[int, str | None]:
        """The broker side of IncrementalAlterConfigs for resource BROKER: (error, message).

        Takes the time Kafka's validation takes; a success is answered before it is applied
        (see ``kafka_timing``), unless ``timing`` has no apply delay."""
        with self._alter_lock:
            started = time.monotonic()
            try:
                broker = int(resource)
            except ValueError:
                return INVALID_REQUEST, f"Node id must be an integer, but it is: {resource}"
            if broker != self.broker_id:
                return INVALID_REQUEST, (
                    f"Unexpected broker id, expected {self.broker_id}, but received {resource}"
                )
            names = [o.name for o in ops]
            if len(set(names)) != len(names):
                return INVALID_REQUEST, "Error due to duplicate config keys"
            nulls = [o.name for o in ops if o.op != OP_DELETE and o.value is None]
            if nulls:
                return INVALID_REQUEST, "Null value not supported for : " + ", ".join(nulls)
            new_dynamic = dict(self._dynamic)
            for o in ops:
                if o.op == OP_SET:
                    new_dynamic[o.name] = o.value or ""
                elif o.op == OP_DELETE:
                    new_dynamic.pop(o.name, None)
                elif o.op in (OP_APPEND, OP_SUBTRACT):
                    verb = "append" if o.op == OP_APPEND else "subtract"
                    return (
                        INVALID_CONFIG,
                        f"Config value {verb} is not allowed for config key: {o.name}",
                    )
                else:
                    return INVALID_REQUEST, f"Unknown operations type {o.op}"
            try:
                self._validate_configs(new_dynamic)
                changed = self._process_reconfiguration(new_dynamic, started)
            except JavaError as e:
                return INVALID_REQUEST, self._wrap(resource, e.message)
            if validate_only:
                return NONE, None
            if self._refuse is not None:
                (code, message), self._refuse = self._refuse, None
                self.log.append(f"refused by test control: {message}")
                return code, message
            if (
                self.mode == "zk"
                and any(_base_name(k) in PASSWORDS for k in new_dynamic)
                and "password.encoder.secret" not in self._static
            ):
                return INVALID_REQUEST, self._wrap(
                    resource, "Password encoder secret not configured"
                )
            if self._keep_old:
                with self._lock:
                    self._dynamic = new_dynamic
                self.log.append("accept_but_keep_old: stored the configs, kept the old material")
                return NONE, None
            if self.mode == "zk":  # ZkAdminManager.alterBrokerConfigs: in the request thread
                error = self._reload_modified_files(new_dynamic, exclude=changed)
                if error is not None:
                    return INVALID_REQUEST, self._wrap(resource, error.message)
            with self._lock:
                self._dynamic = new_dynamic
            if changed or self.mode == "kraft":
                self._schedule_apply()
            return NONE, None

    def _validate_configs(self, props: Mapping[str, str]) -> None:
        """DynamicBrokerConfig.validateConfigs, narrowed to what this double can reconfigure."""
        base_security = [k for k in props if k in LISTENER_SSL]
        non_dynamic = [
            k
            for k in props
            if k not in base_security
            and not (_LISTENER_KEY.fullmatch(k) and _base_name(k) in LISTENER_SSL)
        ]
        if non_dynamic:
            raise JavaError(
                CONFIG_EXCEPTION,
                f"Cannot update these configs dynamically: {_scala_set(non_dynamic)}",
            )
        if base_security:
            raise JavaError(
                CONFIG_EXCEPTION,
                "These security configs can be dynamically updated "
                f"only per-listener using the listener prefix: {_scala_set(base_security)}",
            )

    def _process_reconfiguration(
        self, new_dynamic: Mapping[str, str], started: float
    ) -> set[str]:
        """processReconfiguration(validateOnly=true): the listeners whose configs changed
        (against what is applied), each validated once per network processor."""
        out: set[str] = set()
        cost = 0.0
        try:
            for name, lst in self._listeners.items():
                old_cfg = self._effective_ssl(name, self._applied)
                new_cfg = self._effective_ssl(name, new_dynamic)
                if old_cfg == new_cfg:
                    continue
                changed = {
                    k for k in old_cfg.keys() | new_cfg.keys() if old_cfg.get(k) != new_cfg.get(k)
                }
                if changed - RECONFIGURABLE:
                    raise JavaError(
                        CONFIG_EXCEPTION,
                        "Configs cannot be updated dynamically for "
                        f"existing listener ListenerName({name}), restart broker or "
                        "create a new listener for update",
                    )
                cost += self.timing.validate(name == self.inter_broker_listener)
                self._new_factory(name, lst.factory, new_cfg)
                out.add(name)
        except JavaError as e:
            raise JavaError(
                CONFIG_EXCEPTION,
                f"Invalid value {e} for configuration Invalid dynamic configuration",
            ) from e
        finally:
            self._spend(started, cost)
        return out

    def _new_factory(
        self, name: str, old: SslEngineFactory, configs: Mapping[str, str]
    ) -> SslEngineFactory:
        return create_new_factory(
            old,
            configs,
            self._tmpdir,
            name == self.inter_broker_listener,
            self.profile,
        )

    def _spend(self, started: float, seconds: float) -> None:
        """Take ``seconds`` since ``started`` in all (the double's own work counts)."""
        left = seconds - (time.monotonic() - started)
        if left > 0:
            self._stopping.wait(left)

    def _schedule_apply(self) -> None:
        """The config notification (ZooKeeper) or the replayed record (KRaft), later."""
        delay = self.timing.delay(self._rng)
        if delay <= 0:
            self._apply_stored()
            return
        timer = threading.Timer(delay, self._apply_stored)
        timer.daemon = True
        with self._lock:
            self._pending = [t for t in self._pending if t.is_alive()] + [timer]
        timer.start()

    def _apply_stored(self) -> None:
        """DynamicBrokerConfig.updateBrokerConfig with the stored configs: rebuild (validate,
        then reconfigure) every listener whose configs changed, reading the store files as
        they are now. A failure is only logged: the client was told "success" long ago.
        KRaft's DynamicConfigPublisher then reloads unchanged listeners' modified files."""
        with self._alter_lock:
            if self._stopping.is_set():
                return
            started = time.monotonic()
            target = dict(self._dynamic)
            built: dict[str, SslEngineFactory] = {}
            cost = 0.0
            try:
                for name, lst in self._listeners.items():
                    new_cfg = self._effective_ssl(name, target)
                    if self._effective_ssl(name, self._applied) == new_cfg:
                        continue
                    cost += self.timing.apply(name == self.inter_broker_listener)
                    built[name] = self._new_factory(name, lst.factory, new_cfg)
            except JavaError as e:
                self._spend(started, cost)
                self.log.append(f"Per-broker configs of {self.broker_id} could not be applied: {e}")
                return
            self._spend(started, cost)
            self._applied = target
            for name, factory in built.items():
                self._swap(name, factory)
            if self.mode == "kraft":
                self._reload_modified_files(target, exclude=built)

    def _reload_modified_files(
        self, dynamic: Mapping[str, str], exclude: Collection[str]
    ) -> JavaError | None:
        """reloadUpdatedFilesWithoutConfigChange: rebuild listeners whose store files changed."""
        for name, lst in self._listeners.items():
            if name in exclude:
                continue
            configs = self._effective_ssl(name, dynamic)
            if not lst.factory.should_be_rebuilt(configs):
                continue
            started = time.monotonic()
            try:
                factory = self._new_factory(name, lst.factory, configs)
            except JavaError as e:
                self.log.append(f"listener {name}: {e}")
                return e
            finally:
                self._spend(started, self.timing.apply(name == self.inter_broker_listener))
            self._swap(name, factory)
        return None

    def _swap(self, name: str, factory: SslEngineFactory) -> None:
        with self._lock:
            lst = self._listeners[name]
            if factory is lst.factory:
                return
            lst.factory = factory
            lst.reloads += 1
            self.reload_count += 1
            self.swaps.append((time.time(), name, factory.certificate.serial_number))
        self.log.append(
            f"listener {name}: new SSL material, serial {factory.certificate.serial_number:x}"
        )

    # --- network ---------------------------------------------------------------------------

    def _accept_loop(self, lst: _Listener) -> None:
        lst.sock.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                conn, _ = lst.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            t = threading.Thread(target=self._serve, args=(lst, conn), daemon=True)
            t.start()

    def _serve(self, lst: _Listener, conn: socket.socket) -> None:
        with self._lock:
            ctx = lst.factory.server_context  # the current material, captured per connection
            self._conns.add(conn)
        tls: ssl.SSLSocket | None = None
        try:
            conn.settimeout(15)
            tls = ctx.wrap_socket(conn, server_side=True)
            with self._lock:
                self._conns.discard(conn)
                self._conns.add(tls)
            tls.settimeout(None)
            while not self._stopping.is_set():
                head = _recv_exact(tls, 4)
                if head is None:
                    return
                frame = _recv_exact(tls, struct.unpack(">i", head)[0])
                if frame is None:
                    return
                response = self._handle(lst, frame)
                if response is None:
                    return
                tls.sendall(struct.pack(">i", len(response)) + response)
        except ssl.SSLError as e:
            if tls is None:
                self.log.append(f"listener {lst.name}: TLS handshake failed: {e.reason or e}")
        except (OSError, ValueError):
            return
        except Exception as e:  # a bug in the double: keep it visible to the test
            self.log.append(f"listener {lst.name}: connection error {e!r}")
        finally:
            with self._lock:
                self._conns.discard(conn)
                if tls is not None:
                    self._conns.discard(tls)
            with contextlib.suppress(OSError):
                (tls or conn).close()

    def _handle(self, lst: _Listener, frame: bytes) -> bytes | None:
        r = Reader(frame)
        api_key, version, correlation_id = r.int16(), r.int16(), r.int32()
        r.string(False)  # client id (never compact)
        self.requests.append((api_key, version))
        if self.on_request is not None:
            self.on_request(api_key, version)
        if api_key not in SUPPORTED:
            self.log.append(f"unsupported api key {api_key} v{version}: closing the connection")
            return None
        low, high, flex_from = SUPPORTED[api_key]
        if api_key == API_VERSIONS:
            if version > high:  # KIP-511: answer v0 with UNSUPPORTED_VERSION and our versions
                body = self._api_versions(0, UNSUPPORTED_VERSION)
            else:
                r.tags(version >= flex_from)
                body = self._api_versions(version, NONE)
            return struct.pack(">i", correlation_id) + body  # response header v0, always
        if not low <= version <= high:
            self.log.append(f"unsupported version {version} of api {api_key}: closing")
            return None
        flexible = version >= flex_from
        r.tags(flexible)
        if api_key == METADATA:
            body = self._metadata(r, version, flexible, lst)
        elif api_key == DESCRIBE_CONFIGS:
            body = self._describe_configs(r, version, flexible)
        else:
            body = self._incremental_alter_configs(r, flexible)
        header = struct.pack(">i", correlation_id) + (b"\x00" if flexible else b"")
        return header + body

    # --- API handlers ----------------------------------------------------------------------

    def _api_versions(self, version: int, error: int) -> bytes:
        flexible = version >= 3
        w = Writer()
        w.int16(error)
        w.array_len(len(SUPPORTED), flexible)
        for key, (low, high, _) in sorted(SUPPORTED.items()):
            w.int16(key)
            w.int16(low)
            w.int16(high)
            w.tags(flexible)
        if version >= 1:
            w.int32(0)
        w.tags(flexible)
        return w.bytes()

    def _metadata(self, r: Reader, version: int, flexible: bool, lst: _Listener) -> bytes:
        def topic() -> str | None:
            if version >= 10:
                r.uuid()
            name = r.string(flexible)
            r.tags(flexible)
            return name

        topics = r.array(flexible, topic)
        w = Writer()
        if version >= 3:
            w.int32(0)
        w.array_len(1, flexible)
        w.int32(self.broker_id)
        w.string(self.host, flexible)
        w.int32(lst.port)  # the listener this request came in on
        if version >= 1:
            w.string(None, flexible)
        w.tags(flexible)
        if version >= 2:
            w.string(self.cluster_id, flexible)
        if version >= 1:
            w.int32(self.broker_id)
        named = [t for t in topics or [] if t]
        w.array_len(len(named), flexible)
        for name in named:
            w.int16(3)  # UNKNOWN_TOPIC_OR_PARTITION: the double holds no topics
            w.string(name, flexible)
            if version >= 10:
                w.parts.append(b"\x00" * 16)
            if version >= 1:
                w.boolean(False)
            w.array_len(0, flexible)
            if version >= 8:
                w.int32(-(2**31))
            w.tags(flexible)
        if 8 <= version <= 10:
            w.int32(-(2**31))
        w.tags(flexible)
        return w.bytes()

    def _describe_configs(self, r: Reader, version: int, flexible: bool) -> bytes:
        def resource() -> tuple[int, str, list[str] | None]:
            rtype, name = r.int8(), r.string(flexible) or ""
            keys = r.array(flexible, lambda: r.string(flexible))
            r.tags(flexible)
            return rtype, name, keys

        resources = r.array(flexible, resource) or []
        synonyms = r.boolean() if version >= 1 else False
        w = Writer()
        w.int32(0)
        w.array_len(len(resources), flexible)
        for rtype, name, keys in resources:
            error, message, entries = self._describe(rtype, name, keys, synonyms)
            w.int16(error)
            w.string(message, flexible)
            w.int8(rtype)
            w.string(name, flexible)
            w.array_len(len(entries), flexible)
            for e in entries:
                w.string(e["name"], flexible)
                w.string(e["value"], flexible)
                w.boolean(e["read_only"])
                if version == 0:
                    w.boolean(False)
                else:
                    w.int8(e["source"])
                w.boolean(e["sensitive"])
                if version >= 1:
                    w.array_len(len(e["synonyms"]), flexible)
                    for s_name, s_value, s_source in e["synonyms"]:
                        w.string(s_name, flexible)
                        w.string(s_value, flexible)
                        w.int8(s_source)
                        w.tags(flexible)
                if version >= 3:
                    w.int8(e["type"])
                    w.string(None, flexible)
                w.tags(flexible)
            w.tags(flexible)
        w.tags(flexible)
        return w.bytes()

    def _describe(
        self, rtype: int, name: str, keys: list[str] | None, synonyms: bool
    ) -> tuple[int, str | None, list[dict[str, Any]]]:
        if rtype != RESOURCE_BROKER:
            return INVALID_REQUEST, f"Unsupported resource type {rtype} (broker double)", []
        if name == "":
            return NONE, None, []
        if name != str(self.broker_id):
            return (
                INVALID_REQUEST,
                (
                    f"Unexpected broker id, expected {self.broker_id} or empty "
                    f"string, but received {name}"
                ),
                [],
            )
        with self._lock:
            static, dynamic = self._static_view(), dict(self._dynamic)
        defaults = self._defaults()
        entries = []
        for key in sorted(static.keys() | dynamic.keys() | defaults.keys()):
            if keys is not None and key not in keys:
                continue
            base = _base_name(key)
            sensitive = base in PASSWORDS
            in_dynamic = key in dynamic
            source = (SOURCE_DYNAMIC_BROKER if in_dynamic
                      else SOURCE_STATIC_BROKER if key in static else SOURCE_DEFAULT)
            value = dynamic[key] if in_dynamic else static[key] if key in static else defaults[key]
            syn: list[tuple[str, str | None, int]] = []
            if synonyms:
                if in_dynamic:
                    syn.append((key, None if sensitive else dynamic[key], SOURCE_DYNAMIC_BROKER))
                if key in static:
                    syn.append((key, None if sensitive else static[key], SOURCE_STATIC_BROKER))
                if base != key and base in static:
                    syn.append((base, None if sensitive else static[base], SOURCE_STATIC_BROKER))
            entries.append(
                {
                    "name": key,
                    "value": None if sensitive else value,
                    "read_only": read_only(key),
                    "source": source,
                    "sensitive": sensitive,
                    "synonyms": syn,
                    "type": TYPE_PASSWORD
                    if sensitive
                    else TYPE_BOOLEAN
                    if base in (ALLOW_DN_CHANGES, ALLOW_SAN_CHANGES)
                    else TYPE_INT
                    if key in ("broker.id", "node.id")
                    else TYPE_STRING,
                }
            )
        return NONE, None, entries

    def _incremental_alter_configs(self, r: Reader, flexible: bool) -> bytes:
        def config() -> AlterOp:
            name, op, value = r.string(flexible) or "", r.int8(), r.string(flexible)
            r.tags(flexible)
            return AlterOp(name, op, value)

        def resource() -> tuple[int, str, list[AlterOp]]:
            rtype, name = r.int8(), r.string(flexible) or ""
            ops = r.array(flexible, config) or []
            r.tags(flexible)
            return rtype, name, ops

        resources = r.array(flexible, resource) or []
        validate_only = r.boolean()
        w = Writer()
        w.int32(0)
        w.array_len(len(resources), flexible)
        seen = [(t, n) for t, n, _ in resources]
        for rtype, name, ops in resources:
            error: int = INVALID_REQUEST
            message: str | None
            if seen.count((rtype, name)) > 1:
                message = "Each resource must appear at most once."
            elif rtype != RESOURCE_BROKER:
                message = f"Unsupported resource type {rtype} (broker double)"
            elif name == "":
                message = "Cluster-wide defaults are not supported by the double"
            else:
                error, message = self.alter_broker_configs(name, ops, validate_only)
            w.int16(error)
            w.string(message, flexible)
            w.int8(rtype)
            w.string(name, flexible)
            w.tags(flexible)
        w.tags(flexible)
        return w.bytes()


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# Standalone
# --------------------------------------------------------------------------------------------


def read_properties(path: str) -> dict[str, str]:
    """A server.properties file (``key=value`` / ``key: value``, ``#`` comments), or JSON."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"([^=:\s]+)\s*[=:\s]?\s*(.*)", line)
        if m:
            props[m.group(1)] = m.group(2)
    return props


def broker_from_properties(
    broker_id: int, props: Mapping[str, str], profile: KafkaProfile | None = None
) -> KafkaBrokerDouble:
    """A double configured like a broker: ``listeners=SSL://127.0.0.1:0,INTERNAL://...``."""
    props = dict(props)
    listeners: dict[str, int] = {}
    host = "127.0.0.1"
    for item in props.pop("listeners", "SSL://127.0.0.1:0").split(","):
        m = re.fullmatch(r"\s*([A-Za-z0-9_]+)://([^:]*):(\d+)\s*", item)
        if not m:
            raise SystemExit(f"bad listener {item!r}")
        listeners[m.group(1)] = int(m.group(3))
        host = m.group(2) or host
    inter = props.pop("inter.broker.listener.name", None)
    return KafkaBrokerDouble(broker_id, listeners, props, inter, host=host, profile=profile)


@contextlib.contextmanager
def _signals_stop() -> Iterator[threading.Event]:
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    yield done


def main(argv: list[str] | None = None) -> int:
    """CLI: start one broker, print ``{"broker_id":..,"ports":{..}}`` and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-id", type=int, default=1)
    parser.add_argument("--config", required=True, help="server.properties (or .json)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="a supported Kafka version and mode (default: the newest)")
    parser.add_argument("--mode", choices=("kraft", "zk"), help="instead of --profile")
    parser.add_argument("--kafka-version", help="major.minor, e.g. 3.6 (instead of --profile)")
    parser.add_argument("--instant", action="store_true",
                        help="no validation cost, apply before answering (kafka_timing.INSTANT)")
    args = parser.parse_args(argv)
    if args.profile:
        profile = PROFILES[args.profile]
    else:
        version = None
        if args.kafka_version:
            major, minor = args.kafka_version.split(".")[:2]
            version = (int(major), int(minor))
        profile = profile_for(version, args.mode)
    broker = broker_from_properties(args.broker_id, read_properties(args.config), profile)
    if args.instant:
        broker.timing = INSTANT
    with _signals_stop() as done, broker:
        print(
            json.dumps(
                {
                    "broker_id": broker.broker_id,
                    "ports": broker.ports,
                    "bootstrap": {n: broker.bootstrap(n) for n in broker.ports},
                }
            ),
            flush=True,
        )
        while not done.wait(0.5):
            pass
        for line in broker.log:
            print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
