"""What ``kafka-pki init`` asks Vault before it writes a cluster's first root.

Without ``--name`` nothing is signed: the root's CA is read (``<mount>/ca_chain``, or
``<mount>/issuer/<ref>/json``) and each role the participants sign with is read
(``<mount>/roles/<role>``) and its key type compared with the sidecars'. That is what the
operator's token from ``docker/vault-init.sh`` may do: reading a role is harmless, while a
token that may sign could obtain a certificate every participant trusts (with a templated role
an operator token still gets ``localhost`` and IP SANs), so the operator's policy never signs.

With ``--name`` the role's name rules are checked by Vault itself: a throwaway CSR goes to
``<root>/sign/<role>``, the request the sidecars make. That needs a participant's token (its
policy signs, and a templated role signs only for the caller's own identity).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from sidecar.keys import build_csr, csr_pem, generate_private_key
from sidecar.rotation import split_root
from sidecar.vault import VaultError, VaultPKI

#: ``kafka-pki init`` exit codes (README, kafka-pki).
INIT_SET, INIT_DIFFERENT, INIT_REFUSED, INIT_UNAVAILABLE = 0, 1, 2, 3
#: The roles docker/vault-init.sh writes: PKI_ROLES=templated, else PKI_ROLES=shared.
TEMPLATED_ROLES, SHARED_ROLES = ("kafka-broker", "kafka-client"), ("kafka",)
#: Vault's answer to a sign request with a role the mount lacks (path_issue_sign.go).
UNKNOWN_ROLE = "unknown role"


class InitRefused(Exception):
    """Vault refuses what ``init`` was asked to check (exit 2), or cannot answer (exit 3)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def kind(root: str) -> str:
    """What a root identifier names: a mount (``pki_root_b``) or an issuer (``pki:root-b``)."""
    return "issuer" if split_root(root)[1] is not None else "mount"


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IP address (an IP SAN, never a common name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def key_refusal(role: Mapping[str, Any], key_type: str) -> str | None:
    """Why a role would refuse a CSR whose key is ``key_type`` (ec-p256 ...), or None.

    Vault's signCert (builtin/logical/pki/cert_util.go): a role's key_type other than ``any``
    must equal the CSR key's, whose size must be at least the role's key_bits.
    """
    wanted, bits = str(role.get("key_type") or "rsa"), int(role.get("key_bits") or 0)
    kind_, _, size = key_type.partition("-")
    ours = int(size.removeprefix("p"))
    if wanted == "any":
        return None
    if wanted != kind_:
        return f"role requires keys of type {wanted}"
    if ours < bits:
        return f"role requires a minimum of a {bits}-bit key, but the sidecars' is {ours} bits"
    return None


def _code(exc: VaultError) -> int:
    """Refused for good (fix Vault or the arguments) or not answered (try again)."""
    return INIT_REFUSED if exc.permanent or exc.reason == "malformed_response" \
        else INIT_UNAVAILABLE


def check_ca(vault: VaultPKI, root: str) -> None:
    """Log in and read ``root``'s CA; raises :class:`InitRefused`."""
    try:
        vault.login()
        vault.ca_certificates(root)
    except VaultError as exc:
        raise InitRefused(f"{root} is not a usable Vault PKI {kind(root)}: {exc}",
                          _code(exc)) from None


def check_roles(vault: VaultPKI, root: str, roles: Sequence[str], key_type: str) -> str:
    """Read each role on ``root``'s mount; without ``roles``, vault-init.sh's templated pair,
    else its shared ``kafka``. Returns what was checked; raises :class:`InitRefused`."""
    mount = split_root(root)[0]
    candidates = [tuple(roles)] if roles else [TEMPLATED_ROLES, SHARED_ROLES]
    for names in candidates:
        found: dict[str, Mapping[str, Any]] = {}
        for name in names:
            try:
                role = vault.read_role(root, name)
            except VaultError as exc:
                hint = (f"; the token needs read on {mount}/roles/{name} (docker/vault-init.sh's "
                        "kafka-pki-operator policy has it)") if exc.reason == "forbidden" else ""
                raise InitRefused(f"{exc}{hint}", _code(exc)) from None
            if role is not None:
                found[name] = role
        if found and (not roles or len(found) == len(names)):
            for name, settings in found.items():
                refusal = key_refusal(settings, key_type)
                if refusal:
                    raise InitRefused(f"{mount}/roles/{name} refuses the sidecars' key "
                                      f"({key_type}): {refusal}", INIT_REFUSED)
            listed = ", ".join(f"{mount}/roles/{n}" for n in found)
            return f"{root} has a CA; {listed} exist{'s' if len(found) == 1 else ''} " \
                   f"({key_type}; no --name, so no names checked)"
        if roles:
            missing = ", ".join(n for n in names if n not in found)
            raise InitRefused(f"{root} has no role {missing}", INIT_REFUSED)
    tried = ", ".join(n for names in candidates for n in names)
    raise InitRefused(f"{mount} has none of the roles {tried} (docker/vault-init.sh's); "
                      "name the sidecars' pki_role with --pki-role", INIT_REFUSED)


def check_names(vault: VaultPKI, root: str, role: str, names: Sequence[str],
                key_type: str) -> str:
    """Ask Vault whether ``root``'s ``role`` signs for ``names``, by signing a throwaway CSR.

    Vault decides: a fresh key of ``key_type``, the first DNS name as common name and every
    name as a SAN go to ``<root>/sign/<role>``, the request the sidecars make. Re-implementing
    the role's name rules here (allowed_domains, globs, templates, cn_validations ...) would be
    a second copy that drifts from the Vault version in use. The certificate is dropped with
    its key (5 minutes' TTL; listed under the mount's certs unless the role has no_store).
    Returns what was checked; raises :class:`InitRefused`.
    """
    dns = [n for n in names if not is_ip(n)]
    ips = [n for n in names if is_ip(n)]
    key = generate_private_key(key_type)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, dns[0])])
    try:
        vault.sign(root, role, csr_pem(build_csr(key, subject, dns, ips)), dns[0], dns, ips,
                   "5m")
    except VaultError as exc:
        if exc.reason == "invalid_request" and UNKNOWN_ROLE in str(exc):
            raise InitRefused(f"{root} has no role {role}: {exc}", INIT_REFUSED) from None
        hint = ("; --name signs a test CSR, which needs a participant's token (the operator's "
                "policy never signs)") if exc.reason == "forbidden" else ""
        raise InitRefused(f"{root}/sign/{role} refuses {', '.join(names)} ({key_type}): "
                          f"{exc}{hint}", _code(exc)) from None
    return f"{root}/sign/{role} signs for {', '.join(names)} ({key_type})"
