"""Render one generation: every file of the volume contract, in memory. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import PurePath

from sidecar import keystores, layout, properties
from sidecar.keys import key_type_of, private_key_pkcs8_pem
from sidecar.manifest import Manifest, sha256_hex
from sidecar.material import Material, certificate_pem, dns_sans, ip_sans, pem_bundle


@dataclasses.dataclass(frozen=True)
class FileContent:
    data: bytes
    mode: int


@dataclasses.dataclass(frozen=True)
class Bundle:
    """All files of one generation; the manifest is written after them."""

    files: dict[str, FileContent]
    manifest: Manifest


def render_bundle(material: Material, *, password: str, current: PurePath, generation: int,
                  created_at: dt.datetime, rotation_id: str | None = None,
                  phase: int | None = None) -> Bundle:
    """Every format the volume promises, for one key/certificate/trust set."""
    cert, chain, key = material.certificate, list(material.chain), material.key
    trusted = [(keystores.trust_alias(mount, i), ca)
               for mount in sorted(material.trust)
               for i, ca in enumerate(material.trust[mount])]
    key_pem = private_key_pkcs8_pem(key)
    fullchain = certificate_pem(cert) + pem_bundle(chain)
    private, public = layout.PRIVATE_MODE, layout.PUBLIC_MODE
    files = {
        layout.CERT_PEM: FileContent(certificate_pem(cert), public),
        layout.CHAIN_PEM: FileContent(pem_bundle(chain), public),
        layout.FULLCHAIN_PEM: FileContent(fullchain, public),
        layout.CA_BUNDLE_PEM: FileContent(pem_bundle(material.trust_certificates), public),
        layout.KEY_PEM: FileContent(key_pem, private),
        layout.KEYSTORE_PEM: FileContent(key_pem + fullchain, private),
        layout.KEYSTORE_P12: FileContent(
            keystores.pkcs12_keystore(key, cert, chain, password), private),
        layout.TRUSTSTORE_P12: FileContent(keystores.pkcs12_truststore(trusted, password), private),
        layout.KEYSTORE_JKS: FileContent(keystores.jks_keystore(key, cert, chain, password),
                                         private),
        layout.TRUSTSTORE_JKS: FileContent(keystores.jks_truststore(trusted, password), private),
        layout.BROKER_PROPERTIES: FileContent(
            properties.broker_properties(current, password).encode(), private),
        layout.CLIENT_PROPERTIES: FileContent(
            properties.client_properties(current, password).encode(), private),
        layout.CONNECT_PROPERTIES: FileContent(
            properties.connect_properties(current, password).encode(), private),
        layout.LIBRDKAFKA_PROPERTIES: FileContent(
            properties.librdkafka_properties(current).encode(), public),
    }
    manifest = Manifest(
        generation=generation,
        created_at=created_at.isoformat(),
        signer=material.signer,
        trust=tuple(sorted(material.trust)),
        serial=material.serial_hex,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=tuple(sorted(dns_sans(cert)) + sorted(ip_sans(cert))),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        key_type=key_type_of(key),
        files={name: sha256_hex(content.data) for name, content in files.items()},
        rotation_id=rotation_id,
        phase=phase,
    )
    return Bundle(files=files, manifest=manifest)
