"""Obtain checked material for a desired signer and trust set: key, CSR, Vault, checks."""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509

from sidecar.keys import build_csr, csr_pem, generate_private_key, load_private_key, parse_subject
from sidecar.material import Material, check_material, ttl_cap
from sidecar.renewal import Desired, Identity
from sidecar.vault import VaultError, VaultPKI


@dataclasses.dataclass
class Issuer:
    """Turns a :class:`Desired` into :class:`Material` that passed every check."""

    vault: VaultPKI
    identity: Identity
    pki_role: str
    ttl: str
    mode: str = "sign"

    @property
    def common_name(self) -> str:
        name = parse_subject(self.identity.subject)
        return str(name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)

    def obtain(self, desired: Desired, now: dt.datetime) -> Material:
        """Sign (or issue) a certificate with ``desired.signer`` and fetch the trust set.

        Raises VaultError (Vault failed) or MaterialError (Vault's answer is unusable).
        """
        ident = self.identity
        requested_at = dt.datetime.now(dt.UTC)
        if self.mode == "issue":
            signed = self.vault.issue(desired.signer, self.pki_role, self.common_name,
                                      ident.dns_sans, ident.ip_sans, self.ttl, ident.key_type)
            assert signed.private_key_pem is not None
            try:
                key = load_private_key(signed.private_key_pem)
            except ValueError as exc:
                raise VaultError(f"Vault issue with {desired.signer}: unusable private key "
                                 f"({exc})", "malformed_response") from exc
        else:
            key = generate_private_key(ident.key_type)
            csr = build_csr(key, parse_subject(ident.subject), ident.dns_sans, ident.ip_sans)
            signed = self.vault.sign(desired.signer, self.pki_role, csr_pem(csr),
                                     self.common_name, ident.dns_sans, ident.ip_sans, self.ttl)
        trust = {mount: self.vault.ca_certificates(mount) for mount in desired.trust}
        material = Material(key=key, certificate=signed.certificate, chain=signed.chain,
                            trust=trust, signer=desired.signer, vault_warnings=signed.warnings,
                            ttl_capped=ttl_cap(signed.certificate, self.ttl, requested_at))
        check_material(material, subject=ident.subject, dns_names=ident.dns_sans,
                       ip_addresses=ident.ip_sans, now=now)
        return material

