"""Vault access through hvac: login, token renewal, CSR signing, CA chains.

The only module that talks to Vault. Every failure surfaces as :class:`VaultError` with a
``reason`` label (for metrics) and a message an operator can act on.

A root is ``mount`` (the mount's CA: ``<mount>/sign/<role>``, ``<mount>/ca_chain``) or
``mount:issuer`` (one issuer of a multi-issuer mount, Vault 1.11+ and OpenBao:
``<mount>/issuer/<ref>/sign/<role>``, ``<mount>/issuer/<ref>/json``;
builtin/logical/pki/path_issue_sign.go, path_fetch_issuers.go).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import hvac
import hvac.exceptions
import requests
from cryptography import x509

from sidecar.material import MaterialError, parse_certificates
from sidecar.rotation import split_root

T = TypeVar("T")
LatencyObserver = Callable[[str, float, str], None]


#: Vault's 4xx answers that retrying cannot fix: the request (400: "common name ... not
#: allowed by this role", "unknown role"), the token's policy (403, after one fresh login),
#: the mount (404 "no handler for route"). Vault's 412 and 429 (eventually-consistent reads,
#: rate limits) are transient, like 5xx and transport errors.
PERMANENT_REASONS = frozenset({"invalid_request", "forbidden", "not_found"})

#: An issuer reference no issuer of the mount has: issuing.ResolveIssuerReference's UserError
#: (builtin/logical/pki/issuing/issuers.go), which the sign and read handlers return as an
#: error, so Vault answers 500 (sdk/logical/response_util.go) although retrying cannot help.
UNKNOWN_ISSUER = "unable to find PKI issuer for reference"
#: Multi-issuer PKI mounts arrived with Vault 1.11 (OpenBao forked from 1.14, reports 2.x).
MULTI_ISSUER_SINCE = (1, 11)


class VaultError(Exception):
    """A Vault operation failed. ``reason`` is a short label: unavailable, sealed, forbidden,
    invalid_request, not_found, malformed_response, auth, error."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def permanent(self) -> bool:
        """Vault refused the request itself: retrying the same request cannot succeed."""
        return self.reason in PERMANENT_REASONS


@dataclasses.dataclass(frozen=True)
class SignedCertificate:
    """Vault's answer to sign/issue: the leaf, its issuing chain, and (issue mode) the key."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key_pem: bytes | None = None
    warnings: tuple[str, ...] = ()


class Authenticator(Protocol):
    """Obtains a token for the client; called at start and whenever Vault answers 403."""

    method: str

    def login(self, client: hvac.Client) -> None: ...


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise VaultError(f"cannot read {what} file {path}: {exc.strerror}", "auth") from None
    if not value:
        raise VaultError(f"{what} file {path} is empty", "auth")
    return value


@dataclasses.dataclass
class TokenAuth:
    """A static token, or one re-read from a file (so a Vault agent sink can rotate it)."""

    token: str | None = None
    token_file: Path | None = None
    method: str = "token"

    def login(self, client: hvac.Client) -> None:
        client.token = (_read_secret_file(self.token_file, "Vault token") if self.token_file
                        else self.token)


@dataclasses.dataclass
class AppRoleAuth:
    """AppRole login; the secret_id (and optionally the role_id) re-read from files."""

    role_id: str | None
    secret_id_file: Path
    mount: str = "approle"
    method: str = "approle"
    role_id_file: Path | None = None

    def login(self, client: hvac.Client) -> None:
        role_id = (_read_secret_file(self.role_id_file, "AppRole role_id")
                   if self.role_id_file else self.role_id)
        secret_id = _read_secret_file(self.secret_id_file, "AppRole secret_id")
        client.auth.approle.login(role_id=role_id, secret_id=secret_id,
                                  mount_point=self.mount, use_token=True)


@dataclasses.dataclass
class KubernetesAuth:
    role: str
    jwt_file: Path
    mount: str = "kubernetes"
    method: str = "kubernetes"

    def login(self, client: hvac.Client) -> None:
        jwt = _read_secret_file(self.jwt_file, "service-account JWT")
        client.auth.kubernetes.login(role=self.role, jwt=jwt, mount_point=self.mount,
                                     use_token=True)


#: Vault < 1.11 wraps some errors in a go-multierror: "1 error occurred:\n\t* permission
#: denied\n\n". The items are what an operator needs.
_MULTIERROR = re.compile(r"^\d+ errors? occurred:")


def _unwrap(error: str) -> list[str]:
    if not _MULTIERROR.match(error):
        return [error.strip()]
    items = (line.strip().removeprefix("* ") for line in error.splitlines()[1:])
    return [item.strip() for item in items if item.strip()]


def _errors_text(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list | tuple) and errors:
        return "; ".join(item for e in errors for item in _unwrap(str(e)))
    return str(exc).split(", on ")[0] or type(exc).__name__


def _token_refused(exc: hvac.exceptions.VaultError) -> bool:
    """A 400 that refuses the token, not the request: Vault 1.7 answers a token it cannot
    parse (one with an unknown namespace suffix) with 400 "error performing token check:
    ..." where current Vault answers 403 (hashicorp/vault#6287, #23216). It is the token's
    fault, so it is handled like a 403: log in again once, then permanent."""
    return "token check" in _errors_text(exc)


def translate(exc: Exception, operation: str, addr: str) -> VaultError:
    """Map hvac/requests failures to a VaultError with an operator-facing message."""
    if isinstance(exc, VaultError):
        return exc
    if isinstance(exc, requests.exceptions.Timeout):
        return VaultError(f"Vault {operation}: timed out talking to {addr}", "unavailable")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return VaultError(f"Vault {operation}: cannot connect to {addr}", "unavailable")
    if isinstance(exc, hvac.exceptions.VaultDown):
        return VaultError(f"Vault {operation}: Vault is sealed or in maintenance "
                          f"({_errors_text(exc)})", "sealed")
    if isinstance(exc, hvac.exceptions.Forbidden) or (
            isinstance(exc, hvac.exceptions.InvalidRequest) and _token_refused(exc)):
        return VaultError(f"Vault {operation}: permission denied ({_errors_text(exc)}); check "
                          "the token's policy", "forbidden")
    if isinstance(exc, hvac.exceptions.VaultError) and UNKNOWN_ISSUER in _errors_text(exc):
        return VaultError(f"Vault {operation}: no such issuer ({_errors_text(exc)}); check the "
                          "issuer name or id after the ':'", "not_found")
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return VaultError(f"Vault {operation}: not found ({_errors_text(exc)}); check the "
                          "mount and role names", "not_found")
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        return VaultError(f"Vault {operation}: request refused ({_errors_text(exc)})",
                          "invalid_request")
    if isinstance(exc, hvac.exceptions.VaultError):
        return VaultError(f"Vault {operation}: {_errors_text(exc)}", "error")
    if isinstance(exc, MaterialError):
        return VaultError(f"Vault {operation}: {exc}", "malformed_response")
    return VaultError(f"Vault {operation}: {type(exc).__name__}: {exc}", "error")


class VaultPKI:
    """Signs CSRs and reads CA chains from Vault PKI mounts, keeping its token alive."""

    def __init__(self, addr: str, authenticator: Authenticator, *,
                 verify: str | bool = True, namespace: str | None = None,
                 timeout: float = 10.0, observe: LatencyObserver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.addr = addr
        self._auth = authenticator
        self._client = hvac.Client(url=addr, verify=verify, namespace=namespace, timeout=timeout)
        self._observe = observe
        self._clock = clock
        self._token_expires: float | None = None  # monotonic; None = never or unknown
        self._token_ttl: float = 0.0
        self._token_renewable = False
        self._logged_in = False
        self._version: tuple[str, tuple[int, int] | None] | None = None

    # -- auth -------------------------------------------------------------------------------

    def login(self) -> None:
        """Log in (or load the token) and learn its TTL. Raises VaultError."""
        self._timed("login", lambda: self._auth.login(self._client))
        self._logged_in = True
        self._learn_token()

    def _learn_token(self) -> None:
        data = self._timed("token lookup", self._client.auth.token.lookup_self)["data"]
        ttl = float(data.get("ttl") or 0)
        self._token_ttl = ttl
        self._token_renewable = bool(data.get("renewable"))
        self._token_expires = self._clock() + ttl if ttl > 0 else None

    def token_seconds_left(self) -> float | None:
        return None if self._token_expires is None else self._token_expires - self._clock()

    def keep_token_alive(self) -> None:
        """Renew the token once a third of its TTL is left; log in again if it cannot be."""
        if not self._logged_in:
            self.login()
            return
        left = self.token_seconds_left()
        if left is None or left > self._token_ttl / 3:
            return
        if self._token_renewable:
            try:
                self._timed("token renew", self._client.auth.token.renew_self)
                self._learn_token()
                return
            except VaultError as exc:
                if self._auth.method == "token" and not getattr(self._auth, "token_file", None):
                    raise
                if exc.reason not in ("forbidden", "invalid_request"):
                    raise
        self.login()

    def _with_relogin(self, operation: str, call: Callable[[], T]) -> T:
        """Run ``call``; on 403 log in again once and retry (token revoked or expired)."""
        self.keep_token_alive()
        try:
            return self._timed(operation, call)
        except VaultError as exc:
            if exc.reason != "forbidden":
                raise
        self.login()
        return self._timed(operation, call)

    def _timed(self, operation: str, call: Callable[[], T]) -> T:
        start = self._clock()
        outcome = "ok"
        try:
            return call()
        except Exception as exc:
            error = translate(exc, operation, self.addr)
            outcome = error.reason
            raise error from exc
        finally:
            if self._observe is not None:
                self._observe(operation, self._clock() - start, outcome)

    # -- version ----------------------------------------------------------------------------

    def server_version(self) -> tuple[str, tuple[int, int] | None]:
        """Vault's version from ``sys/health`` (read once): the text and (major, minor), or
        None where it cannot be parsed."""
        if self._version is None:
            health = self._timed("read health", lambda: (
                self._client.sys.read_health_status(method="GET")))
            text = str(health.get("version") or "") if isinstance(health, dict) else ""
            match = re.match(r"v?(\d+)\.(\d+)", text)
            self._version = (text or "unknown",
                             (int(match[1]), int(match[2])) if match else None)
        return self._version

    def _split(self, root: str) -> tuple[str, str | None]:
        """``mount`` and issuer reference of ``root``; an issuer on a Vault older than 1.11
        is refused before any request names it (that Vault would answer 404 and the operator
        would look for a missing mount)."""
        mount, issuer = split_root(root)
        if issuer is not None:
            text, version = self.server_version()
            if version is not None and version < MULTI_ISSUER_SINCE:
                raise VaultError(
                    f"root {root!r} names the issuer {issuer!r} of mount {mount!r}, but Vault "
                    f"{text} has no multi-issuer PKI mounts (Vault 1.11+ or OpenBao): use one "
                    "mount per root there", "invalid_request")
        return mount, issuer

    # -- PKI --------------------------------------------------------------------------------

    def sign(self, root: str, role: str, csr_pem: str, common_name: str,
             dns_sans: Sequence[str], ip_sans: Sequence[str], ttl: str) -> SignedCertificate:
        """POST /<mount>/sign/<role> (or /<mount>/issuer/<ref>/sign/<role>) with a locally
        made CSR."""
        mount, issuer = self._split(root)
        params = _request_params(dns_sans, ip_sans, ttl)
        operation = f"sign with {root}"
        if issuer is not None:
            body = {"csr": csr_pem, "common_name": common_name, **params}
            response = self._with_relogin(operation, lambda: self._client.adapter.post(
                f"/v1/{mount}/issuer/{issuer}/sign/{role}", json=body))
        else:
            response = self._with_relogin(operation, lambda: (
                self._client.secrets.pki.sign_certificate(
                    name=role, csr=csr_pem, common_name=common_name, extra_params=params,
                    mount_point=mount)))
        return _parse_signed(response, operation, with_key=False)

    def issue(self, root: str, role: str, common_name: str, dns_sans: Sequence[str],
              ip_sans: Sequence[str], ttl: str, key_type: str) -> SignedCertificate:
        """POST /<mount>/issue/<role> (or /<mount>/issuer/<ref>/issue/<role>): Vault makes
        the key (for setups that require it)."""
        mount, issuer = self._split(root)
        params = _request_params(dns_sans, ip_sans, ttl)
        params["private_key_format"] = "pkcs8"
        kind, _, bits = key_type.partition("-")
        params["key_type"] = kind
        params["key_bits"] = int(bits[1:]) if kind == "ec" else int(bits)
        operation = f"issue with {root}"
        if issuer is not None:
            body = {"common_name": common_name, **params}
            response = self._with_relogin(operation, lambda: self._client.adapter.post(
                f"/v1/{mount}/issuer/{issuer}/issue/{role}", json=body))
        else:
            response = self._with_relogin(operation, lambda: (
                self._client.secrets.pki.generate_certificate(
                    name=role, common_name=common_name, extra_params=params,
                    mount_point=mount)))
        return _parse_signed(response, operation, with_key=True)

    def ca_certificates(self, root: str) -> tuple[x509.Certificate, ...]:
        """The CA chain of a root: a mount's ``ca_chain`` (falling back to its CA certificate
        if the chain is empty, as it is for a self-signed root on older Vault), or an issuer's
        ``ca_chain`` from ``issuer/<ref>/json`` (its ``certificate`` if the chain is empty)."""
        mount, issuer = self._split(root)
        if issuer is not None:
            return self._issuer_certificates(root, mount, issuer)
        text = self._with_relogin(f"read CA chain of {mount}", lambda: (
            self._client.secrets.pki.read_ca_certificate_chain(mount_point=mount)))
        if not (isinstance(text, str) and text.strip()):
            text = self._with_relogin(f"read CA of {mount}", lambda: (
                self._client.secrets.pki.read_ca_certificate(mount_point=mount)))
        if not isinstance(text, str) or not text.strip():
            raise VaultError(f"Vault returned no CA certificate for {mount}",
                             "malformed_response")
        try:
            return tuple(parse_certificates(text, f"CA chain of {mount}"))
        except MaterialError as exc:
            raise VaultError(str(exc), "malformed_response") from exc

    def _issuer_certificates(self, root: str, mount: str,
                             issuer: str) -> tuple[x509.Certificate, ...]:
        operation = f"read issuer {root}"
        response = self._with_relogin(operation, lambda: self._client.adapter.get(
            f"/v1/{mount}/issuer/{issuer}/json"))
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise VaultError(f"Vault {operation}: response has no data", "malformed_response")
        chain = data.get("ca_chain")
        pems = [p for p in chain if isinstance(p, str)] if isinstance(chain, list) else []
        if not pems and isinstance(data.get("certificate"), str):
            pems = [data["certificate"]]
        if not any(p.strip() for p in pems):
            raise VaultError(f"Vault returned no CA certificate for {root}", "malformed_response")
        try:
            return tuple(c for pem in pems if pem.strip()
                         for c in parse_certificates(pem, f"CA chain of {root}"))
        except MaterialError as exc:
            raise VaultError(str(exc), "malformed_response") from exc

    def read_role(self, root: str, role: str) -> dict[str, Any] | None:
        """GET /<mount>/roles/<role> of ``root``'s mount: the role's settings, or None when
        the mount has no such role (Vault answers 404)."""
        mount, _ = self._split(root)
        operation = f"read role {mount}/roles/{role}"
        try:
            response = self._with_relogin(operation, lambda: self._client.adapter.get(
                f"/v1/{mount}/roles/{role}"))
        except VaultError as exc:
            if exc.reason == "not_found":
                return None
            raise
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise VaultError(f"Vault {operation}: response has no data", "malformed_response")
        return data

    def pki_mounts(self) -> set[str]:
        """Names of the PKI secrets engines (without trailing slash)."""
        response = self._with_relogin("list mounts",
                                      self._client.sys.list_mounted_secrets_engines)
        data = response.get("data", response) if isinstance(response, dict) else {}
        return {path.rstrip("/") for path, info in data.items()
                if isinstance(info, dict) and info.get("type") == "pki"}


def _request_params(dns_sans: Sequence[str], ip_sans: Sequence[str], ttl: str) -> dict[str, Any]:
    params: dict[str, Any] = {"ttl": ttl, "format": "pem"}
    if dns_sans:
        params["alt_names"] = ",".join(dns_sans)
    if ip_sans:
        params["ip_sans"] = ",".join(ip_sans)
    return params


def _parse_signed(response: Any, operation: str, with_key: bool) -> SignedCertificate:
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("certificate"), str):
        raise VaultError(f"Vault {operation}: response has no certificate", "malformed_response")
    try:
        leaf = parse_certificates(data["certificate"], "issued certificate")[0]
        chain_pems = data.get("ca_chain") or [data.get("issuing_ca") or ""]
        chain = tuple(c for pem in chain_pems if pem
                      for c in parse_certificates(pem, "issuing CA chain"))
    except MaterialError as exc:
        raise VaultError(f"Vault {operation}: {exc}", "malformed_response") from exc
    key_pem = None
    if with_key:
        key_text = data.get("private_key")
        if not isinstance(key_text, str) or "PRIVATE KEY" not in key_text:
            raise VaultError(f"Vault {operation}: response has no private key",
                             "malformed_response")
        key_pem = key_text.encode()
    warnings = response.get("warnings")
    return SignedCertificate(certificate=leaf, chain=chain, private_key_pem=key_pem,
                             warnings=tuple(str(w) for w in warnings if not _expected(str(w)))
                             if isinstance(warnings, list) else ())


def _expected(warning: str) -> bool:
    """Warnings that are not news. Vault warns on every sign that common_name/alt_names were
    sent although the role takes them from the CSR; they are sent on purpose, for roles that
    do not. Vault 1.11+ warns that max_ttl capped the TTL ("... so maxTTL is being used"), and
    1.7 does not: the issuer reads the cap from the certificate on every version instead."""
    return ("field was provided but the role is set with" in warning
            or "so maxTTL is being used" in warning)


def authenticator_from(method: str, *, token: str | None, token_file: Path | None,
                       approle_mount: str, role_id: str | None, secret_id_file: Path | None,
                       role_id_file: Path | None = None,
                       kubernetes_mount: str, kubernetes_role: str | None,
                       jwt_file: Path) -> Authenticator:
    """Build the configured authenticator (settings were validated by the config)."""
    if method == "approle":
        assert (role_id or role_id_file) and secret_id_file is not None
        return AppRoleAuth(role_id=role_id, secret_id_file=secret_id_file, mount=approle_mount,
                           role_id_file=role_id_file)
    if method == "kubernetes":
        assert kubernetes_role is not None
        return KubernetesAuth(role=kubernetes_role, jwt_file=jwt_file, mount=kubernetes_mount)
    return TokenAuth(token=token, token_file=token_file)
