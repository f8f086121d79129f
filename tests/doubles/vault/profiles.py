"""How each supported Vault API server words its refusals: one ``VaultProfile`` each.

The product classifies Vault's answers by HTTP status code only; these texts are what the
suite expects to read (tests/test_vault_profiles.py checks them against the server under
test, whose ``sys/health`` version picks the profile). Vault's texts were checked against
Vault 1.17 (its source and the old double's fidelity tests); OpenBao's against OpenBao 2.7.2
(/work/shared/FIELD-NOTES.md, "Third round").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OPENBAO_2", "PROFILES", "VAULT_1", "VaultProfile", "profile_for"]

_DENIED = "permission denied"
_WRAPPED_DENIED = f"1 error occurred:\n\t* {_DENIED}\n\n"


@dataclass(frozen=True)
class VaultProfile:
    """The texts one server family answers with, for the same status codes."""

    name: str
    #: The prefix of the service tokens it hands out.
    token_prefix: str
    #: 400 from ``issue`` on a role with ``key_type=any``.
    key_type_any_issue: str
    #: 400 from ``sign`` of a CSR with IP SANs on a role with ``allow_ip_sans=false``.
    ip_sans_in_csr: str
    #: 403 errors for an unknown token's (and a token with a bogus namespace suffix's)
    #: ``lookup-self``.
    unknown_token: tuple[str, ...]
    #: 403 errors for a valid token that its policy does not allow on a PKI path.
    not_allowed: tuple[str, ...]
    #: 500 errors for ``issuer/<ref>/json`` of an issuer the mount lacks; ``{ref}`` in it.
    unknown_issuer: str

    def unknown_issuer_errors(self, ref: str) -> list[str]:
        return [self.unknown_issuer.format(ref=ref)]


VAULT_1 = VaultProfile(
    name="Vault 1.11+",
    token_prefix="hvs.",
    key_type_any_issue='role key type "any" not allowed for issuing certificates, only signing',
    ip_sans_in_csr="IP Subject Alternative Names are not allowed in this role, but was provided "
                   "some via CSR",
    unknown_token=(_DENIED, "invalid token"),
    not_allowed=(_DENIED,),
    unknown_issuer="1 error occurred:\n\t* unable to find PKI issuer for reference: {ref}\n\n",
)

OPENBAO_2 = VaultProfile(
    name="OpenBao 2.x",
    token_prefix="s.",
    key_type_any_issue='role key type "any" not allowed for issuing certificates without '
                       "providing key_type and/or key_bits request parameters",
    ip_sans_in_csr="IP Subject Alternative Names are not allowed in this role, but was provided "
                   "via CSR",
    unknown_token=(_DENIED,),
    not_allowed=(_WRAPPED_DENIED,),
    unknown_issuer="unable to find PKI issuer for reference: {ref}",
)

#: The profiles by server family.
PROFILES: dict[str, VaultProfile] = {"vault": VAULT_1, "openbao": OPENBAO_2}


def profile_for(version: str) -> VaultProfile:
    """The profile for the version ``sys/health`` reports: OpenBao's versions are 2.x, the
    supported Vault versions 1.11 and later."""
    try:
        major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    except ValueError:
        raise ValueError(f"not a Vault version: {version!r}") from None
    if major == 2:
        return OPENBAO_2
    if (major, minor) < (1, 11):
        raise ValueError(f"Vault {version} is older than the supported 1.11")
    return VAULT_1
