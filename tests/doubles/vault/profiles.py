"""What differs between the Vault versions the double imitates: one ``VaultProfile`` each.

The server (``tests.doubles.vault``) decides what Vault decides; a profile only says how a
given version words, codes and dresses that decision. Every field is a difference checked
against a real Vault 1.7.10 (/work/shared/FIELD-NOTES.md, "second round") or read in Vault's
source, cited on the field.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CURRENT", "PROFILES", "VAULT_1_7", "VaultProfile", "profile_for"]


@dataclass(frozen=True)
class VaultProfile:
    """How one Vault version words and codes its answers."""

    #: What ``sys/health`` and the mount's ``running_plugin_version`` report.
    version: str
    #: Token prefixes this version strips before it reads a namespace suffix from a token
    #: (vault/token_store.go ``lookupInternal``: the part after a further "." is taken as a
    #: namespace id). ``hvs.``/``hvb.``/``hvr.`` arrived with Vault 1.10's new token format.
    token_prefixes: tuple[str, ...]
    #: Vault < 1.11 leaves a self-signed root out of ``ca_chain`` (sign/issue answers) and
    #: answers ``/ca_chain`` with an empty 204; multi-issuer mounts (1.11) include it.
    root_in_chain: bool
    #: An invalid or expired token: 1.7 says "permission denied" only; current Vault adds
    #: "invalid token" (vault/request_handling.go ``CheckToken``).
    adds_invalid_token: bool
    #: 1.7 wraps ACL refusals in a go-multierror ("1 error occurred:\n\t* ...\n\n", as
    #: hashicorp/terraform-provider-vault#2402 shows from a 1.11 server); current Vault sends
    #: ``logical.ErrPermissionDenied`` bare.
    wraps_permission_denied: bool
    #: A token with an unknown namespace suffix: 1.7 fails the token check itself with 400
    #: (hashicorp/vault#6287, #10420); current Vault refuses it like any unknown token, 403
    #: (hashicorp/vault#23216 fixed the 500 that 1.14 gave).
    malformed_token_is_400: bool
    #: Current Vault warns when the role's (or mount's) max_ttl caps the requested TTL
    #: (builtin/logical/pki/cert_util.go: ``TTL %q is longer than permitted maxTTL %q, so
    #: maxTTL is being used``); 1.7 caps silently.
    warns_ttl_cap: bool
    #: Go's %q (``"x"``) in current Vault's messages; 1.7 formats them as '%s' (1.7
    #: cert_util.go: ``the value '%s' is not a valid IP address``; vault/router.go:
    #: ``no handler for route '%s'``).
    single_quotes: bool
    #: Multi-issuer PKI mounts (Vault 1.11, builtin/logical/pki/path_fetch_issuers.go,
    #: path_manage_issuers.go, path_issue_sign.go ``issuer/<ref>/sign/<role>``): 1.7 has one
    #: CA per mount and answers ``<mount>/issuers`` with 404 (FIELD-NOTES).
    multi_issuer: bool = True

    def quote(self, value: str) -> str:
        """A value inside an error message, quoted the way this version quotes it."""
        return f"'{value}'" if self.single_quotes else f'"{value}"'

    def no_handler(self, path: str) -> str:
        """vault/router.go's answer for a path under no mount (404)."""
        if self.single_quotes:
            return f"no handler for route '{path}'"
        return f'no handler for route "{path}". route entry not found.'

    def permission_denied(self) -> str:
        return "1 error occurred:\n\t* permission denied\n\n" if self.wraps_permission_denied \
            else "permission denied"

    def invalid_token_errors(self) -> list[str]:
        denied = self.permission_denied()
        return [denied, "invalid token"] if self.adds_invalid_token else [denied]

    def is_malformed_token(self, token: str) -> bool:
        """Whether this version reads a namespace suffix from ``token`` (one it cannot find)."""
        rest = token
        for prefix in self.token_prefixes:
            if token.startswith(prefix):
                rest = token[len(prefix):]
                break
        return "." in rest

    def malformed_token_reply(self) -> tuple[int, list[str]]:
        if self.malformed_token_is_400:
            return 400, ["error performing token check: failed to look up namespace from "
                         "the token: no namespace"]
        return 403, self.invalid_token_errors()


VAULT_1_7 = VaultProfile(
    version="1.7.10",
    token_prefixes=("s.", "b.", "r."),
    root_in_chain=False,
    adds_invalid_token=False,
    wraps_permission_denied=True,
    malformed_token_is_400=True,
    warns_ttl_cap=False,
    single_quotes=True,
    multi_issuer=False,
)

CURRENT = VaultProfile(
    version="1.17.3",
    token_prefixes=("hvs.", "hvb.", "hvr.", "s.", "b.", "r."),
    root_in_chain=True,
    adds_invalid_token=True,
    wraps_permission_denied=False,
    malformed_token_is_400=False,
    warns_ttl_cap=True,
    single_quotes=False,
)

#: The profiles by the version a caller names ("1.7", "1.17"); tests parametrize over these.
PROFILES: dict[str, VaultProfile] = {"1.7": VAULT_1_7, "1.17": CURRENT}


def profile_for(version: str) -> VaultProfile:
    """The profile for ``version`` ("1.7", "1.7.10", "1.17.3" ...): by major.minor; any
    version from 1.11 on gets the current profile, anything older the 1.7 one."""
    try:
        major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    except ValueError:
        raise ValueError(f"not a Vault version: {version!r}") from None
    return VAULT_1_7 if (major, minor) < (1, 11) else CURRENT
