"""An in-process HTTP test double of HashiCorp Vault (PKI, token, AppRole, Kubernetes auth).

It speaks the HTTP API that hvac 2.4 uses, with Vault's status codes, response envelope and
error texts (checked against Vault's source and API docs), so code under test talks to it
through a real socket exactly as it would talk to Vault:

    with VaultDouble() as vault:
        client = hvac.Client(url=vault.url, token=vault.root_token)
        client.secrets.pki.sign_certificate("kafka", csr_pem, "broker-1.kafka.test",
                                            mount_point="pki_root_a")

It comes up prepared like ``tests.vault_setup.prepare`` leaves a real Vault: PKI mounts
``pki_root_a``/``pki_root_b`` (max_lease_ttl 87600h), each with its own EC P-256 root CA
("Kafka Root A"/"Kafka Root B") and a role ``kafka``.

Behaviour follows current Vault (1.17) unless ``version="1.7"``: what differs between the
two (error texts, status codes, warnings, the root in the chain) is one ``VaultProfile`` each,
in ``tests.doubles.vault.profiles``; ``sys/health`` reports the profile's version.

Fault injection (down, sealed, failing, corrupt, mismatched
or expired certificates, revoked/expired tokens) is driven from Python, thread-safely.

Run standalone (for multi-process drills)::

    python -m tests.doubles.vault --port 8200 [--root-token T] [--print-token]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import re
import secrets
import signal
import socketserver
import string
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.doubles.vault.identity import (
    Entity,
    IdentityStore,
    TemplateError,
    TemplateNotModelled,
    check_modelled,
    has_template,
    populate,
)
from tests.doubles.vault.profiles import CURRENT, PROFILES, VaultProfile, profile_for

__all__ = [
    "DEFAULT_MOUNTS",
    "DEFAULT_ROLE",
    "KAFKA_ROLE_PARAMS",
    "PROFILES",
    "ROOT_CA_TTL",
    "VaultDouble",
    "VaultProfile",
    "root_common_name",
]

DEFAULT_MOUNTS: tuple[str, ...] = ("pki_root_a", "pki_root_b")
DEFAULT_ROLE = "kafka"
ROOT_CA_TTL = "87600h"
#: The role every prepared PKI mount carries (also what ``vault_setup.prepare`` writes).
KAFKA_ROLE_PARAMS: dict[str, Any] = {
    "allowed_domains": ["kafka.test", "localhost"],
    "allow_subdomains": True,
    "allow_localhost": True,
    "allow_ip_sans": True,
    "allow_bare_domains": True,
    "key_type": "any",
    "max_ttl": "72h",
    "ttl": "24h",
    "ou": ["kafka"],
    "organization": ["Example"],
}

VAULT_VERSION = CURRENT.version
SYSTEM_DEFAULT_TTL = 768 * 3600  # Vault's built-in default_lease_ttl and max_lease_ttl (32 days)
SYSTEM_MAX_TTL = 768 * 3600
NOT_BEFORE_SKEW = 30  # seconds; Vault backdates notBefore by the role's not_before_duration

SEALED = "Vault is sealed"

# Vault's hostnameRegex (builtin/logical/pki/cert_util.go).
_HOSTNAME_RE = re.compile(
    r"^(\*\.)?(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*"
    r"([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9])$"
)
# Characters Go's asn1 marshals as PrintableString (anything else becomes UTF8String).
_PRINTABLE_RE = re.compile(r"^[A-Za-z0-9 '()+,\-./:=?*]*$")
_GO_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}

# Paths Vault's built-in "default" policy grants (a subset: the token self-service ones).
_DEFAULT_POLICY_PATHS = (
    "auth/token/lookup-self",
    "auth/token/renew-self",
    "auth/token/revoke-self",
    "sys/capabilities-self",
    "sys/leases/renew",
    "sys/leases/lookup",
    "sys/renew",
    "sys/renew/*",
    "sys/wrapping/*",
    "cubbyhole/*",
)
_UNAUTHENTICATED = ("sys/health", "sys/seal-status", "auth/approle/login", "auth/kubernetes/login")

_ROLE_LIST_FIELDS = (
    "allowed_domains", "allowed_uri_sans", "allowed_other_sans", "allowed_serial_numbers",
    "key_usage", "ext_key_usage", "ou", "organization", "country", "locality", "province",
    "street_address", "postal_code", "cn_validations",
)  # fmt: skip
_ROLE_BOOL_FIELDS = (
    "allow_bare_domains", "allow_subdomains", "allow_glob_domains", "allowed_domains_template",
    "allow_wildcard_certificates", "allow_localhost", "allow_any_name", "enforce_hostnames",
    "allow_ip_sans", "server_flag", "client_flag", "code_signing_flag", "email_protection_flag",
    "use_csr_common_name", "use_csr_sans", "generate_lease", "no_store", "require_cn",
    "basic_constraints_valid_for_non_ca",
)  # fmt: skip
_ROLE_DURATION_FIELDS = ("ttl", "max_ttl", "not_before_duration")
_ROLE_DEFAULTS: dict[str, Any] = {
    "allowed_domains": [],
    "allowed_uri_sans": [],
    "allowed_other_sans": [],
    "allowed_serial_numbers": [],
    "allow_bare_domains": False,
    "allow_subdomains": False,
    "allow_glob_domains": False,
    "allowed_domains_template": False,
    "allow_wildcard_certificates": True,
    "allow_localhost": True,
    "allow_any_name": False,
    "enforce_hostnames": True,
    "allow_ip_sans": True,
    "server_flag": True,
    "client_flag": True,
    "code_signing_flag": False,
    "email_protection_flag": False,
    "key_type": "rsa",
    "key_bits": 0,
    "signature_bits": 0,
    "key_usage": ["DigitalSignature", "KeyAgreement", "KeyEncipherment"],
    "ext_key_usage": [],
    "use_csr_common_name": True,
    "use_csr_sans": True,
    "ou": [],
    "organization": [],
    "country": [],
    "locality": [],
    "province": [],
    "street_address": [],
    "postal_code": [],
    "generate_lease": False,
    "no_store": False,
    "require_cn": True,
    "basic_constraints_valid_for_non_ca": False,
    "not_before_duration": NOT_BEFORE_SKEW,
    "ttl": 0,
    "max_ttl": 0,
    "issuer_ref": "default",
    "cn_validations": ["email", "hostname"],
}


class _Reply(Exception):
    """Raised inside request handling to answer with a status and a Vault error body."""

    def __init__(self, status: int, errors: Sequence[str]) -> None:
        super().__init__(status, list(errors))
        self.status = status
        self.errors = list(errors)


def _bad(message: str) -> _Reply:
    """A 400 like Vault's ``logical.ErrorResponse``."""
    return _Reply(400, [message])


# --------------------------------------------------------------------------- value parsing


def parse_duration(value: Any, field_name: str = "ttl") -> int:
    """Parse a Vault duration (int seconds, "90", "72h", "1h30m", "7d") into whole seconds."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise _bad(f'error converting input {value} for field "{field_name}"')
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    pos, total = 0, 0.0
    for match in _GO_DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise _bad(
            f'error converting input {text} for field "{field_name}": '
            f'time: invalid duration "{text}"'
        )
    return int(total)


def go_duration(seconds: int) -> str:
    """Format seconds like Go's ``time.Duration.String`` ("72h0m0s", "1m30s", "45s")."""
    if seconds < 60:
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours == 0:
        return f"{minutes}m{secs}s"
    return f"{hours}h{minutes}m{secs}s"


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "t", "true"):
        return True
    if text in ("", "0", "f", "false"):
        return False
    raise _bad(f"cannot parse '{value}' as bool")


def _parse_list(value: Any) -> list[str]:
    """Vault's TypeCommaStringSlice: a JSON list or a comma separated string."""
    if value is None or value == "":
        return []
    items = [str(v) for v in value] if isinstance(value, list | tuple) else str(value).split(",")
    return [item.strip() for item in items if item.strip()]


def _rfc3339(ts: float) -> str:
    stamp = dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


def _serial_hex(serial: int) -> str:
    """Vault's colon separated lowercase hex serial ("39:dd:2e:...")."""
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode().strip()


def _random_id(prefix: str = "", length: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def root_common_name(mount: str) -> str:
    """The CN of a mount's root CA: ``pki_root_a`` -> "Kafka Root A"."""
    if mount.startswith("pki_root_") and len(mount) > len("pki_root_"):
        return "Kafka Root " + mount[len("pki_root_") :].upper()
    return f"Kafka Root {mount}"


# --------------------------------------------------------------------------- crypto helpers


def _name_attr(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute:
    if oid != NameOID.COUNTRY_NAME and _PRINTABLE_RE.match(value):
        return x509.NameAttribute(oid, value, _type=_ASN1Type.PrintableString)
    return x509.NameAttribute(oid, value)


def _go_subject(
    cn: str,
    *,
    country: Sequence[str] = (),
    province: Sequence[str] = (),
    locality: Sequence[str] = (),
    street_address: Sequence[str] = (),
    postal_code: Sequence[str] = (),
    organization: Sequence[str] = (),
    ou: Sequence[str] = (),
    serial_number: str = "",
) -> x509.Name:
    """Build a Name in the RDN order of Go's ``pkix.Name.ToRDNSequence``.

    C, ST, L, STREET, postalCode, O, OU, CN, serialNumber; several values of one attribute
    share one multi-valued RDN, as Go does.
    """
    rdns: list[x509.RelativeDistinguishedName] = []
    for oid, values in (
        (NameOID.COUNTRY_NAME, country),
        (NameOID.STATE_OR_PROVINCE_NAME, province),
        (NameOID.LOCALITY_NAME, locality),
        (NameOID.STREET_ADDRESS, street_address),
        (NameOID.POSTAL_CODE, postal_code),
        (NameOID.ORGANIZATION_NAME, organization),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
        (NameOID.COMMON_NAME, [cn] if cn else []),
        (NameOID.SERIAL_NUMBER, [serial_number] if serial_number else []),
    ):
        if values:
            rdns.append(x509.RelativeDistinguishedName([_name_attr(oid, v) for v in values]))
    return x509.Name(rdns)


def _dedupe_stable(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        if value:
            seen.setdefault(value, None)
    return list(seen)


def _hash_for(key: Any) -> hashes.HashAlgorithm | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = key.curve.key_size
        if size > 384:
            return hashes.SHA512()
        if size > 256:
            return hashes.SHA384()
        return hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return hashes.SHA256()


def _generate_key(key_type: str, key_bits: int) -> Any:
    if key_type == "ec":
        curves = {
            224: ec.SECP224R1(),
            256: ec.SECP256R1(),
            384: ec.SECP384R1(),
            521: ec.SECP521R1(),
        }
        return ec.generate_private_key(curves.get(key_bits or 256, ec.SECP256R1()))
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=key_bits or 2048)


def _private_key_pem(key: Any, pkcs8: bool) -> tuple[str, str]:
    """(PEM, private_key_type) as Vault returns them: SEC1/PKCS1 unless pkcs8 is asked for."""
    key_type = {
        ec.EllipticCurvePrivateKey: "ec",
        rsa.RSAPrivateKey: "rsa",
        ed25519.Ed25519PrivateKey: "ed25519",
    }
    kind = next(name for cls, name in key_type.items() if isinstance(key, cls))
    fmt = (
        serialization.PrivateFormat.PKCS8
        if pkcs8 or kind == "ed25519"
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return pem.decode().strip(), kind


def _key_usage(names: Sequence[str]) -> x509.KeyUsage | None:
    wanted = {n.lower().removeprefix("keyusage") for n in names}
    if not wanted:
        return None
    return x509.KeyUsage(
        digital_signature="digitalsignature" in wanted,
        content_commitment="contentcommitment" in wanted,
        key_encipherment="keyencipherment" in wanted,
        data_encipherment="dataencipherment" in wanted,
        key_agreement="keyagreement" in wanted,
        key_cert_sign="certsign" in wanted,
        crl_sign="crlsign" in wanted,
        encipher_only=False,
        decipher_only=False,
    )


# --------------------------------------------------------------------------- state records


@dataclass
class _Token:
    id: str
    accessor: str
    policies: list[str]
    path: str
    display_name: str
    creation_time: float
    ttl: int  # creation TTL in seconds; 0 = never expires
    renewable: bool
    explicit_max_ttl: int = 0
    max_ttl: int = SYSTEM_MAX_TTL  # bound for renewals, counted from creation
    meta: dict[str, str] | None = None
    orphan: bool = False
    num_uses: int = 0
    expire_at: float | None = None
    revoked: bool = False
    last_renewal: float | None = None
    entity_id: str = ""

    def valid(self, now: float) -> bool:
        return not self.revoked and (self.expire_at is None or now < self.expire_at)

    def auth_block(self, lease_duration: int | None = None) -> dict[str, Any]:
        """The ``auth`` object of login / create / renew responses."""
        ttl = self.ttl if lease_duration is None else lease_duration
        return {
            "client_token": self.id,
            "accessor": self.accessor,
            "policies": list(self.policies),
            "token_policies": list(self.policies),
            "metadata": self.meta,
            "lease_duration": ttl,
            "renewable": self.renewable and ttl > 0,
            "entity_id": self.entity_id,
            "token_type": "service",
            "orphan": self.orphan,
            "mfa_requirement": None,
            "num_uses": self.num_uses,
        }


@dataclass
class _Issuer:
    """One issuer of a multi-issuer PKI mount (Vault 1.11+, builtin/logical/pki/issuing)."""

    id: str
    name: str
    key: Any
    cert: x509.Certificate
    key_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def _multierror(message: str) -> str:
    """How vault/request_handling.go wraps an error a handler returns (go-multierror)."""
    return f"1 error occurred:\n\t* {message}\n\n"


def _unknown_issuer(ref: str) -> str:
    """issuing.ResolveIssuerReference's error (builtin/logical/pki/issuing/issuers.go)."""
    return f"unable to find PKI issuer for reference: {ref}"


#: framework.GenericNameRegex, which issuer names must match (path_fetch_issuers.go nameMatcher).
_ISSUER_NAME_RE = re.compile(r"\w(([\w.\-]+)?\w)?", re.ASCII)


@dataclass
class _Mount:
    path: str  # without trailing slash
    type: str
    description: str = ""
    default_lease_ttl: int = 0
    max_lease_ttl: int = 0
    options: dict[str, str] | None = None
    local: bool = False
    accessor: str = ""
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    ca_key: Any = None
    ca_cert: x509.Certificate | None = None
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    issued: dict[str, str] = field(default_factory=dict)  # colon serial -> PEM
    #: Vault 1.11+: the mount's issuers by id, in creation order, and config/issuers' default.
    #: ``ca_key``/``ca_cert`` always mirror the default issuer (what the legacy paths use).
    issuers: dict[str, _Issuer] = field(default_factory=dict)
    default_issuer: str = ""

    def add_issuer(self, key: Any, cert: x509.Certificate, name: str = "") -> _Issuer:
        """Register a new issuer; the first one (no default yet) becomes the default, as
        with config/issuers' default_follows_latest_issuer=false."""
        issuer = _Issuer(id=str(uuid.uuid4()), name=name, key=key, cert=cert)
        self.issuers[issuer.id] = issuer
        if not self.default_issuer:
            self.set_default(issuer.id)
        return issuer

    def set_default(self, issuer_id: str) -> None:
        self.default_issuer = issuer_id
        issuer = self.issuers[issuer_id]
        self.ca_key, self.ca_cert = issuer.key, issuer.cert

    def find_issuer(self, ref: str) -> _Issuer | None:
        """Resolve a reference like issuing.ResolveIssuerReference: ``default``, an id, a
        name."""
        if ref == "default":
            return self.issuers.get(self.default_issuer)
        if ref in self.issuers:
            return self.issuers[ref]
        return next((i for i in self.issuers.values() if i.name == ref), None)

    def clear_issuers(self) -> None:
        self.issuers.clear()
        self.default_issuer = ""
        self.ca_key = self.ca_cert = None

    def info(self, version: str = VAULT_VERSION) -> dict[str, Any]:
        plugin = f"v{version}+builtin.vault"
        return {
            "accessor": self.accessor,
            "config": {
                "default_lease_ttl": self.default_lease_ttl,
                "force_no_cache": False,
                "max_lease_ttl": self.max_lease_ttl,
            },
            "description": self.description,
            "external_entropy_access": False,
            "local": self.local,
            "options": self.options,
            "plugin_version": "",
            "running_plugin_version": plugin,
            "running_sha256": "",
            "seal_wrap": False,
            "type": self.type,
            "uuid": self.uuid,
        }

    def effective_max_ttl(self) -> int:
        return self.max_lease_ttl or SYSTEM_MAX_TTL

    def effective_default_ttl(self) -> int:
        return self.default_lease_ttl or SYSTEM_DEFAULT_TTL


@dataclass
class _AppRole:
    name: str
    role_id: str
    secret_id: str
    policies: list[str]
    token_ttl: int
    token_max_ttl: int


@dataclass
class _KubeRole:
    name: str
    accepted_jwts: set[str]
    policies: list[str]
    token_ttl: int
    token_max_ttl: int
    service_account_name: str
    namespace: str
    #: vault-plugin-auth-kubernetes: the alias is the service account's UID
    #: ("serviceaccount_uid", the default) or "<namespace>/<name>" ("serviceaccount_name").
    alias_name_source: str = "serviceaccount_uid"


@dataclass
class _Faults:
    fail: list[tuple[int, list[str], str | None]] = field(default_factory=list)
    corrupt: int = 0
    mismatched: int = 0
    expired: int = 0
    delay: float = 0.0


def _sanitize_policies(policies: Iterable[str], add_default: bool = True) -> list[str]:
    """Vault's policyutil.SanitizePolicies: dedupe, sort, add "default" (not with root)."""
    result = {p.strip().lower() for p in policies if p and p.strip()}
    if "root" in result:
        return ["root"]
    if add_default:
        result.add("default")
    return sorted(result)


def _policy_regex(pattern: str) -> re.Pattern[str]:
    """Compile an ACL path the way Vault reads it: ``+`` is a wildcard only as a whole path
    segment, ``*`` only at the very end (a prefix match); anywhere else both are literal."""
    pattern = pattern.strip().removeprefix("/").removeprefix("v1/")
    glob = pattern.endswith("*")
    if glob:
        pattern = pattern[:-1]
    segments = ["[^/]+" if segment == "+" else re.escape(segment)
                for segment in pattern.split("/")]
    return re.compile("/".join(segments) + (".*" if glob else ""))


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    double: VaultDouble

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up (e.g. while the double goes down)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn() (a reverse DNS lookup that can stall).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def version_string(self) -> str:
        """The ``Server`` header value."""
        return "VaultDouble"

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (the double keeps its own request log)."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.double._handle(
            self.command, self.path, dict(self.headers.items()), body
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_HEAD = do_PATCH = _serve


# --------------------------------------------------------------------------- the double


class VaultDouble:
    """A Vault server double on 127.0.0.1 (real HTTP, one daemon thread per request).

    Construction options:

    * ``mounts``: PKI mounts created at start, each with its own EC P-256 root CA
      (CN from ``root_common_name``) and the ``role`` (``KAFKA_ROLE_PARAMS``). Pass ``()`` for
      an empty Vault, e.g. to exercise ``vault_setup.prepare``.
    * ``port``: 0 picks a free port; ``root_token``: fixed root token (random by default).
    * ``version``: the Vault version to behave like, "1.17" (current, the default) or "1.7"
      (any version is mapped to one of the two, ``profiles.profile_for``). 1.7: no
      ``ca_chain`` in sign/issue answers of a root-signed mount and an empty 204 from
      ``/ca_chain``; single-quoted values and ``no handler for route 'x'``; permission denied
      wrapped as ``1 error occurred:\n\t* permission denied\n\n`` and without
      ``"invalid token"``; 400 ``error performing token check: ...`` for a token with an
      unknown namespace suffix (current Vault: 403); no warning when max_ttl caps the TTL.
      ``legacy=True`` is the old spelling of ``version="1.7"``.

    Multi-issuer mounts (current profile only; 1.7 answers 404): every root is an issuer
    (``issuers/generate/root/internal|exported`` with ``issuer_name``, ``issuers`` LIST,
    ``issuer/<ref>`` and ``issuer/<ref>/json``, ``issuer/<ref>/sign|issue/<role>``,
    ``config/issuers``); the first one is the default, which the legacy paths and a role's
    ``issuer_ref`` (default ``default``) use. An unknown reference answers 500
    ``unable to find PKI issuer for reference: <ref>`` as Vault does. Not modelled: key
    management (``keys/``), imports, intermediates, ``default_follows_latest_issuer=true``,
    checking a role's ``issuer_ref`` when the role is written.

    Python-side configuration: ``add_mount``, ``add_issuer``, ``set_default_issuer``,
    ``add_policy``, ``add_approle``,
    ``add_kubernetes_role``, ``create_token``. Faults: ``set_down``, ``set_sealed``,
    ``fail_next``, ``set_delay``, ``corrupt_next_certificate``, ``mismatched_key_next``,
    ``expired_next``, ``revoke_token``, ``expire_token``, ``reset_faults``. Observations:
    ``sign_count``/``issue_count`` (per mount) and ``request_log`` ((method, path, status)).
    """

    def __init__(
        self,
        *,
        mounts: Sequence[str] = DEFAULT_MOUNTS,
        role: str = DEFAULT_ROLE,
        host: str = "127.0.0.1",
        port: int = 0,
        root_token: str | None = None,
        version: str = "1.17",
        legacy: bool = False,
    ) -> None:
        self._lock = threading.RLock()
        self._host = host
        self._port = port
        self._role_name = role
        self.profile: VaultProfile = profile_for("1.7" if legacy else version)
        #: True for the Vault 1.7 profile (kept for callers of the old flag).
        self.legacy = not self.profile.root_in_chain
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._down = False
        self._sealed = False
        self._faults = _Faults()
        self._tokens: dict[str, _Token] = {}
        self._policies: dict[str, list[re.Pattern[str]]] = {
            "default": [_policy_regex(p) for p in _DEFAULT_POLICY_PATHS]
        }
        self._approles: dict[str, _AppRole] = {}
        self._kube_roles: dict[str, _KubeRole] = {}
        self._mounts: dict[str, _Mount] = {}
        #: Auth methods by path (``sys/auth``), each with the accessor that identity templates
        #: name (``{{identity.entity.aliases.<accessor>.name}}``).
        self._auth_mounts: dict[str, _Mount] = {
            path: _Mount(path=path, type=path, description=desc,
                         accessor=f"auth_{path}_{secrets.token_hex(4)}")
            for path, desc in (("token", "token based credentials"), ("approle", ""),
                               ("kubernetes", ""))
        }
        self.identity = IdentityStore()
        self.sign_count: dict[str, int] = {}
        self.issue_count: dict[str, int] = {}
        self.request_log: list[tuple[str, str, int]] = []
        #: Requests received so far, counted on arrival (request_log has them once answered).
        self.received = 0
        self.cluster_id = str(uuid.uuid4())
        for path, kind, desc, opts in (
            ("cubbyhole", "cubbyhole", "per-token private secret storage", None),
            ("identity", "identity", "identity store", None),
            ("secret", "kv", "key/value secret storage", {"version": "2"}),
            ("sys", "system", "system endpoints used for control, policy and debugging", None),
        ):
            self._mounts[path] = _Mount(
                path=path,
                type=kind,
                description=desc,
                options=opts,
                local=kind == "cubbyhole",
                accessor=f"{kind}_{secrets.token_hex(4)}",
            )
        token = root_token or _random_id(self._token_prefix)
        now = time.time()
        self._tokens[token] = _Token(
            id=token,
            accessor=_random_id(),
            policies=["root"],
            path="auth/token/root",
            display_name="root",
            creation_time=now,
            ttl=0,
            renewable=False,
            max_ttl=0,
            orphan=True,
        )
        self._root_token = token
        for mount in mounts:
            self.add_mount(mount)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> VaultDouble:
        """Bind the socket and serve in a daemon thread (idempotent)."""
        with self._lock:
            if not self._started:
                if not self._down:
                    self._start_server()
                self._started = True
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        with self._lock:
            self._stop_server()
            self._started = False

    def __enter__(self) -> VaultDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_server(self) -> None:
        server = _Server((self._host, self._port), _Handler)
        server.double = self
        self._port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"vault-double:{self._port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def _stop_server(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (stable across ``set_down``)."""
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._port

    @property
    def root_token(self) -> str:
        """The root token created at construction."""
        return self._root_token

    @property
    def role(self) -> str:
        """Name of the PKI role created on each prepared mount."""
        return self._role_name

    @property
    def mounts(self) -> list[str]:
        """Names of the PKI mounts, in creation order."""
        with self._lock:
            return [m.path for m in self._mounts.values() if m.type == "pki"]

    def ca_cert(self, mount: str) -> x509.Certificate:
        """The root CA certificate of a PKI mount (its default issuer), or of one issuer:
        ``"pki:root-a"`` (the sidecar's root identifier)."""
        path, _, ref = mount.partition(":")
        with self._lock:
            found = self._mounts[path].find_issuer(ref) if ref else None
            cert = found.cert if found is not None else (None if ref else
                                                         self._mounts[path].ca_cert)
        if cert is None:
            raise KeyError(f"mount {mount!r} has no CA")
        return cert

    def ca_pem(self, mount: str) -> str:
        """The root CA of a PKI mount as PEM (what ``/<mount>/ca/pem`` returns)."""
        return _pem(self.ca_cert(mount))

    # ------------------------------------------------------------------ configuration

    def add_mount(
        self,
        name: str,
        *,
        common_name: str | None = None,
        with_root: bool = True,
        with_role: bool = True,
    ) -> None:
        """Mount a PKI engine (max_lease_ttl 87600h), by default with a root CA and the role."""
        with self._lock:
            if name in self._mounts:
                raise ValueError(f"path is already in use at {name}/")
            mount = _Mount(
                path=name,
                type="pki",
                max_lease_ttl=parse_duration(ROOT_CA_TTL),
                accessor=f"pki_{secrets.token_hex(4)}",
            )
            self._mounts[name] = mount
            self.sign_count.setdefault(name, 0)
            self.issue_count.setdefault(name, 0)
            if with_root:
                key = ec.generate_private_key(ec.SECP256R1())
                cert = self._make_root(
                    key, common_name or root_common_name(name), parse_duration(ROOT_CA_TTL)
                )
                self._install_root(mount, key, cert, "")
            if with_role:
                mount.roles[self._role_name] = self._role_from_params(dict(KAFKA_ROLE_PARAMS))

    def add_issuer(self, mount: str, name: str, *, common_name: str | None = None) -> str:
        """Generate a root as a new named issuer of ``mount`` (what ``issuers/generate/root/
        internal`` with ``issuer_name`` does; Vault 1.11+ only); returns its issuer id. CN:
        "Kafka Root A" for ``root-a``."""
        if not self.profile.multi_issuer:
            raise ValueError(f"Vault {self.profile.version} has no multi-issuer mounts")
        key = ec.generate_private_key(ec.SECP256R1())
        cn = common_name or root_common_name("pki_" + name.replace("-", "_"))
        cert = self._make_root(key, cn, parse_duration(ROOT_CA_TTL))
        with self._lock:
            self._check_issuer_name(self._mounts[mount], name)
            return self._install_root(self._mounts[mount], key, cert, name).id

    def set_default_issuer(self, mount: str, ref: str) -> None:
        """What ``POST <mount>/config/issuers default=<ref>`` does."""
        with self._lock:
            found = self._mounts[mount].find_issuer(ref)
            if found is None:
                raise KeyError(_unknown_issuer(ref))
            self._mounts[mount].set_default(found.id)

    def _install_root(self, mount: _Mount, key: Any, cert: x509.Certificate,
                      name: str) -> _Issuer | None:
        """A new root on ``mount``: an issuer from 1.11 on (the default if none is), the
        mount's only CA before."""
        if self.profile.multi_issuer:
            return mount.add_issuer(key, cert, name)
        mount.ca_key, mount.ca_cert = key, cert
        return None

    @staticmethod
    def _check_issuer_name(mount: _Mount, name: str) -> None:
        """getIssuerName (builtin/logical/pki/path_manage_issuers.go and storage.go)."""
        if not name:
            return
        if name.lower() == "default":
            raise _bad("reserved keyword 'default' can not be used as issuer name")
        if not _ISSUER_NAME_RE.fullmatch(name):
            raise _bad("issuer name contained invalid characters")
        if any(i.name == name for i in mount.issuers.values()):
            raise _bad("issuer name already in use")

    def add_policy(self, name: str, allowed_paths: Sequence[str]) -> None:
        """Define a simplified ACL policy: paths with ``*`` (anything) and ``+`` (one segment).

        Vault proper only allows ``*`` at the end of a path; this double accepts it anywhere
        (e.g. ``pki_root_*/sign/kafka``). Capabilities are not modelled.
        """
        with self._lock:
            self._policies[name.lower()] = [_policy_regex(p) for p in allowed_paths]

    def add_approle(
        self,
        role_id: str,
        secret_id: str,
        policies: Sequence[str] = (),
        token_ttl: int | str = 3600,
        *,
        token_max_ttl: int | str = 0,
        role_name: str | None = None,
    ) -> None:
        """Let ``auth/approle/login`` accept this role_id/secret_id pair."""
        with self._lock:
            self._approles[role_id] = _AppRole(
                name=role_name or f"role-{role_id[:8]}",
                role_id=role_id,
                secret_id=secret_id,
                policies=list(policies),
                token_ttl=parse_duration(token_ttl),
                token_max_ttl=parse_duration(token_max_ttl),
            )

    def add_kubernetes_role(
        self,
        role: str,
        accepted_jwts: Iterable[str],
        policies: Sequence[str] = (),
        token_ttl: int | str = 3600,
        *,
        token_max_ttl: int | str = 0,
        service_account_name: str = "kafka-pki-sidecar",
        namespace: str = "kafka",
        alias_name_source: str = "serviceaccount_uid",
    ) -> None:
        """Let ``auth/kubernetes/login`` accept these JWTs for ``role``.

        Any other JWT is refused like a failed TokenReview: 403 permission denied. The service
        account's UID is derived from the JWT; the entity alias is that UID or, with
        ``alias_name_source="serviceaccount_name"``, ``<namespace>/<name>``.
        """
        if alias_name_source not in ("serviceaccount_uid", "serviceaccount_name"):
            raise ValueError("invalid alias_name_source, must be one of: "
                             "serviceaccount_uid, serviceaccount_name")
        with self._lock:
            self._kube_roles[role] = _KubeRole(
                name=role,
                accepted_jwts=set(accepted_jwts),
                policies=list(policies),
                token_ttl=parse_duration(token_ttl),
                token_max_ttl=parse_duration(token_max_ttl),
                service_account_name=service_account_name,
                namespace=namespace,
                alias_name_source=alias_name_source,
            )

    def auth_accessor(self, path: str) -> str:
        """The mount accessor of the auth method at ``path`` ("approle", "kubernetes", "token"),
        as ``sys/auth`` lists it."""
        with self._lock:
            return self._auth_mounts[path.strip("/")].accessor

    def entity_for(self, token: str) -> Entity | None:
        """The identity entity a token belongs to (None for root and token-store tokens)."""
        with self._lock:
            found = self._tokens.get(token)
            return self.identity.entities.get(found.entity_id) if found else None

    def create_token(
        self,
        policies: Sequence[str] = ("default",),
        ttl: int | str = 3600,
        *,
        renewable: bool = True,
        explicit_max_ttl: int | str = 0,
        num_uses: int = 0,
    ) -> str:
        """Mint a token directly (same result as ``auth/token/create`` from root)."""
        with self._lock:
            token = self._new_token(
                policies=_sanitize_policies(policies),
                path="auth/token/create",
                display_name="token",
                ttl=parse_duration(ttl),
                renewable=renewable,
                explicit_max_ttl=parse_duration(explicit_max_ttl),
                num_uses=num_uses,
            )
            return token.id

    # ------------------------------------------------------------------ fault injection

    def set_down(self, down: bool) -> None:
        """Close the listening socket (clients get connection refused) or reopen it."""
        with self._lock:
            if down and not self._down:
                self._stop_server()
                self._down = True
            elif not down and self._down:
                self._down = False
                if self._started:
                    self._start_server()

    def set_sealed(self, sealed: bool) -> None:
        """While sealed every API call but sys/health and sys/seal-status answers 503."""
        with self._lock:
            self._sealed = sealed

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        errors: Sequence[str] | None = None,
        *,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (whose path contains ``path``, if given) with an error."""
        with self._lock:
            errs = list(errors) if errors is not None else ["internal error"]
            self._faults.fail.extend([(status, errs, path)] * n)

    def set_delay(self, seconds: float) -> None:
        """Delay every API answer by ``seconds`` (0 to stop), to exercise client timeouts."""
        with self._lock:
            self._faults.delay = max(0.0, seconds)

    def corrupt_next_certificate(self, n: int = 1) -> None:
        """The next ``n`` sign/issue answers carry a garbage "BEGIN CERTIFICATE" blob."""
        with self._lock:
            self._faults.corrupt += n

    def mismatched_key_next(self, n: int = 1) -> None:
        """The next ``n`` certificates are validly signed but for a different public key."""
        with self._lock:
            self._faults.mismatched += n

    def expired_next(self, n: int = 1) -> None:
        """The next ``n`` certificates are validly signed but already expired."""
        with self._lock:
            self._faults.expired += n

    def revoke_token(self, token: str) -> None:
        """Revoke a token: its next use gets 403."""
        with self._lock:
            if token in self._tokens:
                self._tokens[token].revoked = True

    def expire_token(self, token: str) -> None:
        """Make a token's TTL run out now: its next use gets 403."""
        with self._lock:
            if token in self._tokens:
                self._tokens[token].expire_at = time.time() - 1

    def reset_faults(self) -> None:
        """Clear every pending fault (not down/sealed state, nor token revocations)."""
        with self._lock:
            self._faults = _Faults()

    # ------------------------------------------------------------------ request entry point

    def _handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(raw_path)
        path = split.path
        status, out_headers, payload = self._dispatch(
            method.upper(), path, split.query, headers, body
        )
        with self._lock:
            self.request_log.append((method.upper(), path, status))
        return status, out_headers, payload

    def _dispatch(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            delay = self._faults.delay
            self.received += 1
        if delay:
            time.sleep(delay)
        if not path.startswith("/v1/"):
            return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found\n"
        rel = path[len("/v1/") :].strip("/")
        try:
            with self._lock:
                injected = self._take_injected_failure(rel)
            if injected is not None:
                raise injected
            result = self._route(method, rel, query, headers, body)
        except _Reply as reply:
            return self._json(reply.status, {"errors": reply.errors})
        except TemplateNotModelled as exc:
            return self._json(500, {"errors": [f"the Vault double does not model {exc}"]})
        except Exception as exc:  # pragma: no cover - a bug in the double shows as a 500
            return self._json(500, {"errors": [f"1 error occurred:\n\t* {exc}\n\n"]})
        return result

    def _take_injected_failure(self, rel: str) -> _Reply | None:
        for index, (status, errors, needle) in enumerate(self._faults.fail):
            if needle is None or needle in rel:
                del self._faults.fail[index]
                return _Reply(status, errors)
        return None

    @staticmethod
    def _json(status: int, obj: Any) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()

    @staticmethod
    def _raw(status: int, content_type: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": content_type}, payload

    @staticmethod
    def _no_content() -> tuple[int, dict[str, str], bytes]:
        return 204, {}, b""

    @staticmethod
    def _envelope(
        data: Any = None,
        *,
        auth: Any = None,
        warnings: Sequence[str] | None = None,
        lease_id: str = "",
        lease_duration: int = 0,
        renewable: bool = False,
        mount_type: str = "",
    ) -> dict[str, Any]:
        return {
            "request_id": str(uuid.uuid4()),
            "lease_id": lease_id,
            "renewable": renewable,
            "lease_duration": lease_duration,
            "data": data,
            "wrap_info": None,
            "warnings": list(warnings) if warnings else None,
            "auth": auth,
            "mount_type": mount_type,
        }

    def _ok(self, data: Any = None, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return self._json(200, self._envelope(data, **kwargs))

    def _route(
        self, method: str, rel: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if method == "GET" and "list=true" in query.lower():
            method = "LIST"
        if method == "PUT":
            method = "POST"
        if rel == "sys/health":
            return self._sys_health()
        if rel == "sys/seal-status":
            return self._ok_raw(self._seal_status())
        with self._lock:
            if self._sealed:
                raise _Reply(503, [SEALED])
        params = self._parse_params(method, query, body)
        if rel in _UNAUTHENTICATED and method == "POST":
            if rel == "auth/approle/login":
                return self._approle_login(params)
            return self._kubernetes_login(params)
        token = self._authenticate(headers)
        self._authorize(token, rel)
        try:
            return self._route_authenticated(method, rel, params, token)
        finally:
            self._consume_use(token)

    @staticmethod
    def _parse_params(method: str, query: str, body: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if method in ("GET", "LIST", "HEAD"):
            for key, values in parse_qs(query).items():
                params[key] = values[-1]
        if body.strip():
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                raise _bad(f"failed to parse JSON input: {exc}") from None
            if not isinstance(parsed, dict):
                raise _bad("failed to parse JSON input: body must be a JSON object")
            params.update(parsed)
        return params

    def _ok_raw(self, obj: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        return self._json(200, obj)

    # ------------------------------------------------------------------ auth and ACL

    def _authenticate(self, headers: dict[str, str]) -> _Token:
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get("x-vault-token", "")
        if not value and lowered.get("authorization", "").lower().startswith("bearer "):
            value = lowered["authorization"][len("bearer ") :]
        value = value.strip()
        if not value:
            raise _Reply(403, [self.profile.permission_denied()])
        with self._lock:
            token = self._tokens.get(value)
            if token is None and self.profile.is_malformed_token(value):
                raise _Reply(*self.profile.malformed_token_reply())
            if token is None or not token.valid(time.time()):
                raise _Reply(403, self.profile.invalid_token_errors())
            return token

    @property
    def _token_prefix(self) -> str:
        """Service tokens are ``hvs.`` from Vault 1.10, ``s.`` before."""
        return self.profile.token_prefixes[0]

    def _authorize(self, token: _Token, rel: str) -> None:
        if "root" in token.policies:
            return
        with self._lock:
            for policy in token.policies:
                for pattern in self._policies.get(policy, []):
                    if pattern.fullmatch(rel):
                        return
        raise _Reply(403, [self.profile.permission_denied()])

    def _consume_use(self, token: _Token) -> None:
        with self._lock:
            if token.num_uses > 0:
                token.num_uses -= 1
                if token.num_uses == 0:
                    token.revoked = True

    def _new_token(
        self,
        *,
        policies: list[str],
        path: str,
        display_name: str,
        ttl: int,
        renewable: bool,
        explicit_max_ttl: int = 0,
        max_ttl: int = 0,
        meta: dict[str, str] | None = None,
        orphan: bool = False,
        num_uses: int = 0,
        entity_id: str = "",
    ) -> _Token:
        now = time.time()
        is_root = "root" in policies
        bound = explicit_max_ttl or max_ttl or (0 if is_root else SYSTEM_MAX_TTL)
        if ttl == 0 and not is_root:
            ttl = SYSTEM_DEFAULT_TTL
        if bound and ttl > bound:
            ttl = bound
        token = _Token(
            id=_random_id(self._token_prefix),
            accessor=_random_id(),
            policies=policies,
            path=path,
            display_name=display_name,
            creation_time=now,
            ttl=ttl,
            renewable=renewable and ttl > 0,
            explicit_max_ttl=explicit_max_ttl,
            max_ttl=bound,
            meta=meta,
            orphan=orphan,
            num_uses=num_uses,
            expire_at=now + ttl if ttl else None,
            entity_id=entity_id,
        )
        self._tokens[token.id] = token
        return token

    def _approle_login(self, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        role_id = str(params.get("role_id") or "")
        if not role_id:
            raise _bad("missing role_id")
        with self._lock:
            role = self._approles.get(role_id)
            if role is None:
                raise _bad("invalid role or secret ID")
            secret_id = str(params.get("secret_id") or "")
            if not secret_id:
                raise _bad("missing secret_id")
            if not secrets.compare_digest(secret_id, role.secret_id):
                raise _bad("invalid role or secret ID")
            # approle/path_login.go: the alias is the role_id; metadata always has role_name.
            meta = {"role_name": role.name}
            entity = self.identity.login(
                self._auth_mounts["approle"].accessor, "approle", role.role_id, meta
            )
            token = self._new_token(
                policies=_sanitize_policies(role.policies),
                path="auth/approle/login",
                display_name="approle",
                ttl=role.token_ttl,
                renewable=True,
                max_ttl=role.token_max_ttl,
                meta=meta,
                orphan=True,
                entity_id=entity.id,
            )
        return self._ok(None, auth=token.auth_block())

    def _kubernetes_login(self, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        role_name = str(params.get("role") or "")
        if not role_name:
            raise _bad("missing role")
        jwt = str(params.get("jwt") or "")
        if not jwt:
            raise _bad("missing jwt")
        with self._lock:
            role = self._kube_roles.get(role_name)
            if role is None:
                raise _bad(f'invalid role name "{role_name}"')
            if jwt not in role.accepted_jwts:
                raise _Reply(403, [self.profile.permission_denied()])
            uid = str(uuid.uuid5(uuid.NAMESPACE_DNS, jwt))
            meta = {
                "role": role.name,
                "service_account_name": role.service_account_name,
                "service_account_namespace": role.namespace,
                "service_account_secret_name": "",
                "service_account_uid": uid,
            }
            alias_name = uid if role.alias_name_source == "serviceaccount_uid" \
                else f"{role.namespace}/{role.service_account_name}"
            alias_meta = {k: v for k, v in meta.items() if k != "role"}
            entity = self.identity.login(
                self._auth_mounts["kubernetes"].accessor, "kubernetes", alias_name, alias_meta
            )
            token = self._new_token(
                policies=_sanitize_policies(role.policies),
                path="auth/kubernetes/login",
                display_name=f"kubernetes-{role.namespace}-{role.service_account_name}",
                ttl=role.token_ttl,
                renewable=True,
                max_ttl=role.token_max_ttl,
                meta=meta,
                orphan=True,
                entity_id=entity.id,
            )
        return self._ok(None, auth=token.auth_block())

    # ------------------------------------------------------------------ routing

    def _route_authenticated(
        self, method: str, rel: str, params: dict[str, Any], token: _Token
    ) -> tuple[int, dict[str, str], bytes]:
        if rel.startswith("auth/token/"):
            return self._token_api(method, rel[len("auth/token/") :], params, token)
        if rel == "sys/mounts" and method == "GET":
            return self._list_mounts()
        if rel == "sys/auth" and method == "GET":
            return self._list_auth()
        if rel.startswith("sys/mounts/"):
            return self._sys_mount(method, rel[len("sys/mounts/") :], params)
        with self._lock:
            mount = self._find_mount(rel)
        if mount is None:
            raise _Reply(404, [self.profile.no_handler(rel)])
        sub = rel[len(mount.path) :].strip("/")
        if mount.type == "pki":
            return self._pki(method, mount, sub, params, token)
        raise _Reply(404, ["unsupported path"])

    def _find_mount(self, rel: str) -> _Mount | None:
        best: _Mount | None = None
        for mount in self._mounts.values():
            if (rel == mount.path or rel.startswith(mount.path + "/")) and (
                best is None or len(mount.path) > len(best.path)
            ):
                best = mount
        return best

    # ------------------------------------------------------------------ sys

    def _sys_health(self) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            sealed = self._sealed
        body = {
            "initialized": True,
            "sealed": sealed,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(time.time()),
            "version": self.profile.version,
            "cluster_name": "vault-double",
            "cluster_id": self.cluster_id,
        }
        return self._json(503 if sealed else 200, body)

    def _seal_status(self) -> dict[str, Any]:
        with self._lock:
            sealed = self._sealed
        return {
            "type": "shamir",
            "initialized": True,
            "sealed": sealed,
            "t": 1,
            "n": 1,
            "progress": 0,
            "nonce": "",
            "version": self.profile.version,
            "build_date": "",
            "migration": False,
            "cluster_name": "vault-double",
            "cluster_id": self.cluster_id,
            "recovery_seal": False,
            "storage_type": "inmem",
        }

    def _list_mounts(self) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            data = {f"{m.path}/": m.info(self.profile.version) for m in self._mounts.values()}
        body = self._envelope(data)
        body.update(data)  # Vault also repeats the mounts at the top level (legacy shape)
        return self._json(200, body)

    def _list_auth(self) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            data = {f"{m.path}/": m.info(self.profile.version) for m in self._auth_mounts.values()}
        body = self._envelope(data)
        body.update(data)
        return self._json(200, body)

    def _sys_mount(
        self, method: str, rest: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        tune = rest.endswith("/tune")
        path = (rest[: -len("/tune")] if tune else rest).strip("/")
        with self._lock:
            mount = self._mounts.get(path)
            if tune:
                if mount is None:
                    raise _bad(f"cannot fetch sysview for path {path!r}")
                if method == "GET":
                    data = {
                        "default_lease_ttl": mount.effective_default_ttl(),
                        "max_lease_ttl": mount.effective_max_ttl(),
                        "force_no_cache": False,
                        "description": mount.description,
                    }
                    body = self._envelope(data)
                    body.update(data)
                    return self._json(200, body)
                if method == "POST":
                    self._apply_mount_config(mount, params)
                    if "description" in params:
                        mount.description = str(params["description"] or "")
                    return self._no_content()
                raise _Reply(405, ["unsupported operation"])
            if method == "GET":
                if mount is None:
                    raise _bad(f"No secret engine mount at {path}/")
                info = mount.info(self.profile.version)
                body = self._envelope(info)
                body.update(info)
                return self._json(200, body)
            if method == "POST":
                return self._enable_mount(path, params)
            if method == "DELETE":
                if mount is not None and mount.type not in ("system", "identity", "cubbyhole"):
                    del self._mounts[path]
                return self._no_content()
        raise _Reply(405, ["unsupported operation"])

    def _apply_mount_config(self, mount: _Mount, config: dict[str, Any]) -> None:
        if "default_lease_ttl" in config:
            mount.default_lease_ttl = parse_duration(
                config["default_lease_ttl"], "default_lease_ttl"
            )
        if "max_lease_ttl" in config:
            mount.max_lease_ttl = parse_duration(config["max_lease_ttl"], "max_lease_ttl")

    def _enable_mount(self, path: str, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        kind = str(params.get("type") or "")
        if not kind:
            raise _bad("backend type must be specified as a string")
        if any(
            path == m.path or path.startswith(m.path + "/") or m.path.startswith(path + "/")
            for m in self._mounts.values()
        ):
            raise _bad(f"path is already in use at {path}/")
        mount = _Mount(
            path=path,
            type=kind,
            description=str(params.get("description") or ""),
            options=params.get("options") or None,
            local=_parse_bool(params.get("local", False)),
            accessor=f"{kind}_{secrets.token_hex(4)}",
        )
        self._apply_mount_config(mount, params.get("config") or {})
        self._mounts[path] = mount
        if kind == "pki":
            self.sign_count.setdefault(path, 0)
            self.issue_count.setdefault(path, 0)
        return self._no_content()

    # ------------------------------------------------------------------ auth/token

    def _token_api(
        self, method: str, op: str, params: dict[str, Any], token: _Token
    ) -> tuple[int, dict[str, str], bytes]:
        if op == "lookup-self" and method in ("GET", "POST"):
            return self._ok(self._lookup_data(token))
        if op == "lookup" and method in ("GET", "POST"):
            with self._lock:
                other = self._tokens.get(str(params.get("token") or ""))
                if other is None or not other.valid(time.time()):
                    raise _bad("bad token")
                return self._ok(self._lookup_data(other))
        if op == "renew-self" and method == "POST":
            return self._renew(token, params)
        if op in ("create", "create-orphan") and method == "POST":
            return self._create_token(token, params, orphan=op == "create-orphan")
        if op == "revoke-self" and method == "POST":
            with self._lock:
                token.revoked = True
            return self._no_content()
        if op == "revoke" and method == "POST":
            with self._lock:
                other = self._tokens.get(str(params.get("token") or ""))
                if other is not None:
                    other.revoked = True
            return self._no_content()
        raise _Reply(405 if op in ("lookup-self", "renew-self") else 404, ["unsupported path"])

    def _lookup_data(self, token: _Token) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            remaining = max(0, int(token.expire_at - now)) if token.expire_at else 0
            data: dict[str, Any] = {
                "accessor": token.accessor,
                "creation_time": int(token.creation_time),
                "creation_ttl": token.ttl,
                "display_name": token.display_name,
                "entity_id": token.entity_id,
                "expire_time": _rfc3339(token.expire_at) if token.expire_at else None,
                "explicit_max_ttl": token.explicit_max_ttl,
                "id": token.id,
                "issue_time": _rfc3339(token.creation_time),
                "meta": token.meta,
                "num_uses": token.num_uses,
                "orphan": token.orphan,
                "path": token.path,
                "policies": list(token.policies),
                "renewable": token.renewable,
                "ttl": remaining,
                "type": "service",
            }
            if token.last_renewal is not None:
                data["last_renewal"] = _rfc3339(token.last_renewal)
                data["last_renewal_time"] = int(token.last_renewal)
            return data

    def _renew(self, token: _Token, params: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        increment = parse_duration(params.get("increment"), "increment")
        now = time.time()
        with self._lock:
            if not token.renewable or token.expire_at is None:
                raise _bad("lease is not renewable")
            ttl = increment or token.ttl
            warnings: list[str] = []
            if token.max_ttl:
                left = int(token.creation_time + token.max_ttl - now)
                if ttl > left:
                    warnings.append(
                        f'TTL of "{go_duration(ttl)}" exceeded the effective max_ttl of '
                        f'"{go_duration(max(left, 0))}"; TTL value is capped accordingly'
                    )
                    ttl = max(left, 0)
            token.expire_at = now + ttl
            token.last_renewal = now
            auth = token.auth_block(lease_duration=ttl)
        return self._ok(None, auth=auth, warnings=warnings)

    def _create_token(
        self, parent: _Token, params: dict[str, Any], *, orphan: bool
    ) -> tuple[int, dict[str, str], bytes]:
        requested = _parse_list(params.get("policies"))
        no_default = _parse_bool(params.get("no_default_policy", False))
        if not requested:
            requested = [p for p in parent.policies if p != "default"]
        policies = _sanitize_policies(requested, add_default=not no_default)
        if "root" not in parent.policies:
            extra = set(policies) - set(parent.policies) - {"default"}
            if extra:
                raise _bad("child policies must be subset of parent")
        meta = params.get("meta")
        display = str(params.get("display_name") or "token")
        with self._lock:
            token = self._new_token(
                policies=policies,
                path="auth/token/create",
                display_name=display if display.startswith("token") else f"token-{display}",
                ttl=parse_duration(params.get("ttl"), "ttl"),
                renewable=_parse_bool(params.get("renewable", True)),
                explicit_max_ttl=parse_duration(params.get("explicit_max_ttl"), "explicit_max_ttl"),
                meta={str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else None,
                orphan=orphan or _parse_bool(params.get("no_parent", False)),
                num_uses=int(params.get("num_uses") or 0),
            )
        return self._ok(None, auth=token.auth_block())

    # ------------------------------------------------------------------ PKI

    def _pki(
        self, method: str, mount: _Mount, sub: str, params: dict[str, Any], token: _Token
    ) -> tuple[int, dict[str, str], bytes]:
        head, _, rest = sub.partition("/")
        if head in ("sign", "issue") and rest and method == "POST":
            with self._lock:
                entity = self.identity.entities.get(token.entity_id)
            return self._sign_or_issue(mount, rest, params, sign=head == "sign", entity=entity)
        if self.profile.multi_issuer and (
            head in ("issuers", "issuer") or sub == "config/issuers"
        ):
            return self._issuers_api(method, mount, sub, params, token)
        if sub in ("ca", "ca/pem") and method == "GET":
            with self._lock:
                cert = mount.ca_cert
            if cert is None:
                return self._no_content()
            if sub == "ca":
                return self._raw(
                    200, "application/pkix-cert", cert.public_bytes(serialization.Encoding.DER)
                )
            return self._raw(200, "application/pem-certificate-chain", _pem(cert).encode())
        if sub in ("ca_chain", "cert/ca_chain") and method == "GET":
            chain = self._chain_pems(mount)
            text = "\n".join(chain)
            if sub == "cert/ca_chain":
                return self._ok({"certificate": text, "ca_chain": text, "revocation_time": 0})
            if not text:
                return self._no_content()
            return self._raw(200, "application/pkix-cert", text.encode())
        if head == "cert" and rest and method == "GET":
            return self._read_cert(mount, rest)
        if sub == "roles" and method == "LIST":
            with self._lock:
                keys = sorted(mount.roles)
            if not keys:
                raise _Reply(404, [])
            return self._ok({"keys": keys})
        if head == "roles" and rest:
            return self._role_api(method, mount, rest, params)
        if (
            head == "root"
            and rest in ("generate/internal", "generate/exported")
            and method == "POST"
        ):
            return self._generate_root(mount, params, exported=rest.endswith("exported"))
        if sub == "root" and method == "DELETE":
            with self._lock:
                mount.clear_issuers()  # 1.11+: every issuer and key of the mount
            return self._no_content()
        raise _Reply(404, ["unsupported path"])

    def _issuers_api(
        self, method: str, mount: _Mount, sub: str, params: dict[str, Any], token: _Token
    ) -> tuple[int, dict[str, str], bytes]:
        """Vault 1.11+'s multi-issuer paths (builtin/logical/pki/path_fetch_issuers.go,
        path_manage_issuers.go, path_config_ca.go ``config/issuers``, path_issue_sign.go)."""
        parts = sub.split("/")
        if sub == "issuers" and method == "LIST":
            with self._lock:
                issuers = list(mount.issuers.values())
                default = mount.default_issuer
            if not issuers:
                raise _Reply(404, [])
            info = {i.id: {"issuer_name": i.name, "is_default": i.id == default,
                           "serial_number": _serial_hex(i.cert.serial_number),
                           "key_id": i.key_id} for i in issuers}
            return self._ok({"keys": [i.id for i in issuers], "key_info": info})
        if parts[:3] == ["issuers", "generate", "root"] and len(parts) == 4 \
                and parts[3] in ("internal", "exported") and method == "POST":
            return self._generate_root(mount, params, exported=parts[3] == "exported")
        if sub == "config/issuers":
            if method == "POST":
                # path_config_ca.go pathCAIssuersWrite (current: handleStorageContextErr).
                ref = str(params.get("default") or "").strip()
                if not ref or ref == "default":
                    raise _bad("invalid issuer specification; must be non-empty and can't be "
                               "'default'.")
                with self._lock:
                    found = mount.find_issuer(ref)
                    if found is None:
                        raise _bad(f"error resolving issuer reference: {_unknown_issuer(ref)}")
                    mount.set_default(found.id)
            elif method != "GET":
                raise _Reply(405, ["unsupported operation"])
            with self._lock:
                default = mount.default_issuer
            return self._ok({"default": default, "default_follows_latest_issuer": False})
        if parts[0] == "issuer" and len(parts) >= 2:
            ref = parts[1]
            if len(parts) == 4 and parts[2] in ("sign", "issue") and method == "POST":
                with self._lock:
                    entity = self.identity.entities.get(token.entity_id)
                return self._sign_or_issue(mount, parts[3], params, sign=parts[2] == "sign",
                                           entity=entity, issuer_ref=ref)
            if method == "GET" and (len(parts) == 2 or (len(parts) == 3 and parts[2] == "json")):
                with self._lock:
                    issuer = mount.find_issuer(ref)
                if issuer is None:
                    raise _Reply(500, [_multierror(_unknown_issuer(ref))])
                data: dict[str, Any] = {"issuer_id": issuer.id, "issuer_name": issuer.name,
                                        "certificate": _pem(issuer.cert) + "\n",
                                        "ca_chain": [_pem(issuer.cert) + "\n"]}
                if len(parts) == 2:
                    data.update({"key_id": issuer.key_id, "manual_chain": None,
                                 "leaf_not_after_behavior": "err",
                                 "usage": "crl-signing,issuing-certificates,ocsp-signing,"
                                          "read-only",
                                 "revocation_signature_algorithm": "", "revoked": False})
                return self._ok(data)
        raise _Reply(404, ["unsupported path"])

    def _signing_ca(self, mount: _Mount, ref: str) -> tuple[Any, x509.Certificate | None]:
        """The key and certificate a sign request uses: sc.fetchCAInfo(ref) in
        path_issue_sign.go. A reference no issuer answers to is a 500 there (the UserError is
        returned as an error, not as a response: sdk/logical/response_util.go)."""
        with self._lock:
            if not self.profile.multi_issuer or (ref == "default" and not mount.issuers):
                return mount.ca_key, mount.ca_cert
            issuer = mount.find_issuer(ref)
        if issuer is None:
            raise _Reply(500, [_multierror("could not fetch the CA certificate (was one set?): "
                                           + _unknown_issuer(ref))])
        return issuer.key, issuer.cert

    def _chain_pems(self, mount: _Mount) -> list[str]:
        with self._lock:
            cert = mount.ca_cert
        if cert is None or not self.profile.root_in_chain:
            return []  # Vault < 1.11 leaves a self-signed root out of the chain
        return [_pem(cert)]

    def _read_cert(self, mount: _Mount, serial: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            if serial == "ca":
                cert = mount.ca_cert
                pem = _pem(cert) if cert is not None else None
            else:
                pem = mount.issued.get(serial.lower().replace("-", ":"))
        if pem is None:
            raise _Reply(404, [])
        return self._ok({"certificate": pem, "revocation_time": 0, "revocation_time_rfc3339": ""})

    def _role_api(
        self, method: str, mount: _Mount, name: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            if method == "GET":
                role = mount.roles.get(name)
                if role is None:
                    raise _Reply(404, [])
                return self._ok(self._role_view(role))
            if method == "POST":
                role = self._role_from_params(params)
                mount.roles[name] = role
                return self._ok(self._role_view(role))
            if method == "DELETE":
                mount.roles.pop(name, None)
                return self._no_content()
        raise _Reply(405, ["unsupported operation"])

    @staticmethod
    def _role_view(role: dict[str, Any]) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in role.items()}

    @staticmethod
    def _role_from_params(params: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise a role write; omitted fields take Vault's defaults."""
        role = {k: (list(v) if isinstance(v, list) else v) for k, v in _ROLE_DEFAULTS.items()}
        for key, value in params.items():
            if key in _ROLE_LIST_FIELDS:
                role[key] = _parse_list(value)
            elif key in _ROLE_BOOL_FIELDS:
                role[key] = _parse_bool(value)
            elif key in _ROLE_DURATION_FIELDS:
                role[key] = parse_duration(value, key)
            elif key in ("key_bits", "signature_bits"):
                role[key] = int(value or 0)
            elif key in ("key_type", "issuer_ref"):
                role[key] = str(value)
        key_type, bits = role["key_type"], role["key_bits"]
        if key_type == "rsa":
            role["key_bits"] = bits = bits or 2048
            if bits < 2048:
                raise _bad("RSA keys < 2048 bits are unsafe and not supported")
        elif key_type == "ec":
            role["key_bits"] = bits = bits or 256
            if bits not in (224, 256, 384, 521):
                raise _bad(f"unsupported bit length for EC key: {bits}")
        elif key_type in ("ed25519", "any"):
            role["key_bits"] = 0
        else:
            raise _bad(f"unknown key type {key_type}")
        if role["max_ttl"] and role["ttl"] > role["max_ttl"]:
            raise _bad('"ttl" value must be less than "max_ttl" value')
        if role["allowed_domains_template"]:
            for domain in role["allowed_domains"]:
                check_modelled(domain)  # a form the double lacks fails the set-up loudly
        return role

    def _generate_root(
        self, mount: _Mount, params: dict[str, Any], *, exported: bool
    ) -> tuple[int, dict[str, str], bytes]:
        name = str(params.get("issuer_name") or "").strip() if self.profile.multi_issuer else ""
        with self._lock:
            self._check_issuer_name(mount, name)
        cn = str(params.get("common_name") or "")
        if not cn:
            raise _bad(
                "the common_name field is required, or must be provided in a CSR with "
                '"use_csr_common_name" set to true, unless "require_cn" is set to false'
            )
        key_type = str(params.get("key_type") or "rsa")
        key_bits = int(params.get("key_bits") or 0)
        if key_type not in ("rsa", "ec", "ed25519"):
            raise _bad(f"unknown key type {key_type}")
        ttl = parse_duration(params.get("ttl"), "ttl") or mount.effective_default_ttl()
        warnings: list[str] = []
        if ttl > mount.effective_max_ttl():
            warnings.append(
                f'TTL "{go_duration(ttl)}" is longer than permitted maxTTL '
                f'"{go_duration(mount.effective_max_ttl())}", so maxTTL is being used'
            )
            ttl = mount.effective_max_ttl()
        key = _generate_key(key_type, key_bits)
        cert = self._make_root(key, cn, ttl)
        with self._lock:
            issuer = self._install_root(mount, key, cert, name)
        data: dict[str, Any] = {
            "certificate": _pem(cert),
            "expiration": int(cert.not_valid_after_utc.timestamp()),
            "issuing_ca": _pem(cert),
            "serial_number": _serial_hex(cert.serial_number),
            "issuer_id": issuer.id if issuer is not None else str(uuid.uuid4()),
            "issuer_name": name,
            "key_id": issuer.key_id if issuer is not None else str(uuid.uuid4()),
            "key_name": "",
        }
        if exported:
            data["private_key"], data["private_key_type"] = _private_key_pem(key, False)
        return self._ok(data, warnings=warnings, mount_type="pki")

    @staticmethod
    def _make_root(key: Any, cn: str, ttl: int) -> x509.Certificate:
        """A self-signed root like Vault's root/generate: CA:true, certSign+cRLSign, SKI=AKI."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        name = _go_subject(cn)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = (
            x509.CertificateBuilder()
            .serial_number(secrets.randbits(159) | 1)
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .not_valid_before(now - dt.timedelta(seconds=NOT_BEFORE_SKEW))
            .not_valid_after(now + dt.timedelta(seconds=ttl))
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        )
        return builder.sign(key, _hash_for(key))

    # ------------------------------------------------------------------ sign / issue

    def _sign_or_issue(
        self,
        mount: _Mount,
        role_name: str,
        params: dict[str, Any],
        *,
        sign: bool,
        entity: Entity | None = None,
        issuer_ref: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            role = mount.roles.get(role_name)
        if role is None:
            raise _bad(f"unknown role: {role_name}")
        # path_issue_sign.go: the legacy sign/<role> uses the role's issuer_ref (default
        # "default"); issuer/<ref>/sign/<role> the reference in the path.
        ca_key, ca_cert = self._signing_ca(
            mount, issuer_ref if issuer_ref is not None else (role["issuer_ref"] or "default"))
        if not sign and role["key_type"] == "any":
            raise _bad('role key type "any" not allowed for issuing certificates, only signing')
        fmt = str(params.get("format") or "pem")
        if fmt not in ("pem", "der", "pem_bundle"):
            raise _bad('the "format" path parameter must be "pem", "der", or "pem_bundle"')
        if ca_cert is None or ca_key is None:
            raise _bad(
                "could not fetch the CA certificate (was one set?): "
                "backend must be configured with a CA certificate/key"
            )
        csr = self._parse_csr(role, params) if sign else None
        plan = self._plan_certificate(mount, role, params, csr, ca_cert, entity)
        private_key = None
        if csr is not None:
            if not csr.is_signature_valid:
                raise _bad("request signature invalid")
            public_key = csr.public_key()
        else:
            private_key = _generate_key(role["key_type"], role["key_bits"])
            public_key = private_key.public_key()
        with self._lock:
            corrupt = self._faults.corrupt > 0
            mismatched = self._faults.mismatched > 0
            expired = self._faults.expired > 0
            self._faults.corrupt -= int(corrupt)
            self._faults.mismatched -= int(mismatched)
            self._faults.expired -= int(expired)
        if mismatched:
            public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = self._build_leaf(plan, role, public_key, ca_key, ca_cert, expired=expired)
        serial = _serial_hex(cert.serial_number)
        cert_text = _pem(cert)
        if not role["no_store"]:
            with self._lock:
                mount.issued[serial] = cert_text
        if corrupt:
            junk = base64.encodebytes(secrets.token_bytes(300)).decode().strip()
            cert_text = f"-----BEGIN CERTIFICATE-----\n{junk}\n-----END CERTIFICATE-----"
        data = self._cert_data(fmt, cert, cert_text, ca_cert, serial)
        if private_key is not None:
            pkcs8 = str(params.get("private_key_format") or "") == "pkcs8"
            key_pem, key_type = _private_key_pem(private_key, pkcs8)
            if fmt == "der":
                der = private_key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                data["private_key"] = base64.b64encode(der).decode()
            else:
                data["private_key"] = key_pem
                if fmt == "pem_bundle":
                    data["certificate"] = f"{key_pem}\n{data['certificate']}"
            data["private_key_type"] = key_type
        warnings = list(plan["warnings"])
        if sign and role["use_csr_common_name"] and params.get("common_name"):
            warnings.append(
                "the common_name field was provided but the role is set with "
                '"use_csr_common_name" set to true'
            )
        if sign and role["use_csr_sans"] and params.get("alt_names"):
            warnings.append(
                "the alt_names field was provided but the role is set with "
                '"use_csr_sans" set to true'
            )
        with self._lock:
            counter = self.sign_count if sign else self.issue_count
            counter[mount.path] = counter.get(mount.path, 0) + 1
            if issuer_ref is not None:  # also by the sidecar's root identifier
                key = f"{mount.path}:{issuer_ref}"
                counter[key] = counter.get(key, 0) + 1
        lease: dict[str, Any] = {}
        if role["generate_lease"]:
            op = "sign" if sign else "issue"
            lease = {
                "lease_id": f"{mount.path}/{op}/{role_name}/{uuid.uuid4()}",
                "lease_duration": plan["ttl"],
            }
        return self._ok(data, warnings=warnings, mount_type="pki", **lease)

    def _cert_data(
        self,
        fmt: str,
        cert: x509.Certificate,
        cert_text: str,
        ca_cert: x509.Certificate,
        serial: str,
    ) -> dict[str, Any]:
        # Every CA here is a self-signed root: Vault < 1.11 leaves it out of the chain.
        chain = [_pem(ca_cert)] if self.profile.root_in_chain else []
        if fmt == "der":
            der_chain = (
                [base64.b64encode(ca_cert.public_bytes(serialization.Encoding.DER)).decode()]
                if chain
                else []
            )
            data: dict[str, Any] = {
                "certificate": base64.b64encode(
                    cert.public_bytes(serialization.Encoding.DER)
                ).decode(),
                "issuing_ca": der_chain[0]
                if der_chain
                else base64.b64encode(ca_cert.public_bytes(serialization.Encoding.DER)).decode(),
            }
            if der_chain:
                data["ca_chain"] = der_chain
        else:
            data = {"certificate": cert_text, "issuing_ca": _pem(ca_cert)}
            if chain:
                data["ca_chain"] = chain
        data["serial_number"] = serial
        data["expiration"] = int(cert.not_valid_after_utc.timestamp())
        return data

    def _parse_csr(
        self, role: dict[str, Any], params: dict[str, Any]
    ) -> x509.CertificateSigningRequest:
        text = str(params.get("csr") or "")
        if not text:
            raise _bad('"csr" is empty')
        match = re.search(
            r"-----BEGIN (NEW )?CERTIFICATE REQUEST-----.*?"
            r"-----END (NEW )?CERTIFICATE REQUEST-----",
            text,
            re.S,
        )
        if match is None:
            raise _bad("csr contains no data")
        try:
            csr = x509.load_pem_x509_csr(match.group(0).encode())
            public_key = csr.public_key()
        except ValueError as exc:
            raise _bad(f"certificate request could not be parsed: {exc}") from None
        key_type, bits = role["key_type"], role["key_bits"]
        if key_type == "rsa":
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise _bad(f"role requires keys of type {key_type}")
            if public_key.key_size < 2048:
                raise _bad("RSA keys < 2048 bits are unsafe and not supported")
            if public_key.key_size < bits:
                raise _bad(
                    f"role requires a minimum of a {bits}-bit key, but CSR's key is "
                    f"{public_key.key_size} bits"
                )
        elif key_type == "ec":
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise _bad(f"role requires keys of type {key_type}")
            if public_key.curve.key_size < bits:
                raise _bad(
                    f"role requires a minimum of a {bits}-bit key, but CSR's key is "
                    f"{public_key.curve.key_size} bits"
                )
        elif key_type == "ed25519":
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise _bad(f"role requires keys of type {key_type}")
        elif isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
            raise _bad("RSA keys < 2048 bits are unsafe and not supported")
        return csr

    @staticmethod
    def _allowed_domains(role: dict[str, Any], entity: Entity | None) -> list[str]:
        """The role's allowed_domains as validateNames reads them for this request
        (builtin/logical/pki/cert_util.go): with ``allowed_domains_template``, a templated
        domain is populated for the token's entity; one that cannot be populated is skipped
        (``continue``), and without an entity (a root or token-store token) it stays literal."""
        domains: list[str] = []
        for domain in role["allowed_domains"]:
            if role["allowed_domains_template"] and entity is not None and has_template(domain):
                try:
                    domain = populate(domain, entity)
                except TemplateError:
                    continue
            domains.append(domain)
        return domains

    # Vault's validateNames (builtin/logical/pki/cert_util.go), minus token display names.
    @classmethod
    def _bad_name(
        cls, role: dict[str, Any], names: Iterable[str], entity: Entity | None = None
    ) -> str:
        allowed = cls._allowed_domains(role, entity)
        for name in names:
            sanitized = email_domain = name
            is_email = is_wildcard = False
            if "@" in name:
                parts = name.split("@")
                if len(parts) != 2:
                    return name
                sanitized = email_domain = parts[1]
                is_email = True
            if sanitized.startswith("*."):
                sanitized = sanitized[2:]
                is_wildcard = True
            if is_email and is_wildcard:
                return name
            if role["enforce_hostnames"]:
                try:
                    converted = sanitized.encode("idna").decode("ascii")
                except UnicodeError:
                    return name
                if not _HOSTNAME_RE.match(converted):
                    return name
            if role["allow_any_name"]:
                continue
            if role["allow_localhost"]:
                if name in ("localhost", "localdomain") or (
                    is_email and email_domain in ("localhost", "localdomain")
                ):
                    continue
                if role["allow_subdomains"] and (
                    sanitized.endswith((".localhost", ".localdomain"))
                    or (is_wildcard and sanitized in ("localhost", "localdomain"))
                ):
                    continue
            valid = False
            for domain in allowed:
                if not domain:
                    continue
                if role["allow_bare_domains"] and (
                    name == domain or (is_email and email_domain == domain)
                ):
                    valid = True
                    break
                if role["allow_subdomains"] and (
                    sanitized.endswith("." + domain) or (is_wildcard and sanitized == domain)
                ):
                    valid = True
                    break
                if (
                    role["allow_glob_domains"]
                    and "*" in domain
                    and re.fullmatch(re.escape(domain).replace(r"\*", ".*"), name)
                ):
                    valid = True
                    break
            if valid:
                continue
            return name
        return ""

    @staticmethod
    def _to_dns(name: str) -> str | None:
        try:
            converted = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _bad(f"idna: invalid label {name!r}: {exc}") from None
        return converted if _HOSTNAME_RE.match(converted) else None

    def _plan_certificate(
        self,
        mount: _Mount,
        role: dict[str, Any],
        params: dict[str, Any],
        csr: x509.CertificateSigningRequest | None,
        ca_cert: x509.Certificate,
        entity: Entity | None = None,
    ) -> dict[str, Any]:
        """Vault's generateCreationBundle: names, role checks, subject and validity."""
        cn = ""
        if csr is not None and role["use_csr_common_name"]:
            attrs = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            cn = str(attrs[0].value) if attrs else ""
        if not cn:
            cn = str(params.get("common_name") or "")
            if not cn and role["require_cn"]:
                raise _bad(
                    "the common_name field is required, or must be provided in a CSR with "
                    '"use_csr_common_name" set to true, unless "require_cn" is set to false'
                )
        csr_sans: x509.SubjectAlternativeName | None = None
        if csr is not None:
            try:
                csr_sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                csr_sans = None
        use_csr_sans = csr is not None and role["use_csr_sans"]
        dns_names: list[str] = []
        emails: list[str] = []
        if use_csr_sans and csr_sans is not None:
            dns_names = list(csr_sans.get_values_for_type(x509.DNSName))
            emails = list(csr_sans.get_values_for_type(x509.RFC822Name))
        if cn and not _parse_bool(params.get("exclude_cn_from_sans", False)):
            if "@" in cn:
                emails.append(cn)
            else:
                converted = self._to_dns(cn)
                if converted:
                    dns_names.append(converted)
        if not use_csr_sans:
            for alt in sorted({a.lower() for a in _parse_list(params.get("alt_names"))}):
                if "@" in alt:
                    emails.append(alt)
                else:
                    converted = self._to_dns(alt)
                    if converted:
                        dns_names.append(converted)
        if cn and (bad := self._bad_name(role, [cn], entity)):
            raise _bad(f"common name {bad} not allowed by this role")
        if bad := self._bad_name(role, dns_names, entity):
            raise _bad(f"subject alternate name {bad} not allowed by this role")
        if bad := self._bad_name(role, emails, entity):
            raise _bad(f"email address {bad} not allowed by this role")

        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        uris: list[str] = []
        if use_csr_sans:
            csr_ips = list(csr_sans.get_values_for_type(x509.IPAddress)) if csr_sans else []
            if csr_ips and not role["allow_ip_sans"]:
                raise _bad(
                    "IP Subject Alternative Names are not allowed in this role, "
                    "but was provided some via CSR"
                )
            ips = csr_ips
            csr_uris = (
                list(csr_sans.get_values_for_type(x509.UniformResourceIdentifier))
                if (csr_sans)
                else []
            )
            if csr_uris:
                if not role["allowed_uri_sans"]:
                    raise _bad(
                        "URI Subject Alternative Names are not allowed in this role, "
                        "but were provided via CSR"
                    )
                for uri in csr_uris:
                    if not self._uri_allowed(role, uri):
                        raise _bad(
                            "URI Subject Alternative Names were provided via CSR which are "
                            "not valid for this role"
                        )
                uris = csr_uris
        else:
            ip_alt = _parse_list(params.get("ip_sans"))
            if ip_alt and not role["allow_ip_sans"]:
                raise _bad(
                    "IP Subject Alternative Names are not allowed in this role, "
                    f"but was provided [{' '.join(ip_alt)}]"
                )
            for value in ip_alt:
                try:
                    ips.append(ipaddress.ip_address(value))
                except ValueError:
                    raise _bad(
                        f"the value {self.profile.quote(value)} is not a valid IP address"
                    ) from None
            uri_alt = _parse_list(params.get("uri_sans"))
            if uri_alt and not role["allowed_uri_sans"]:
                raise _bad(
                    "URI Subject Alternative Names are not allowed in this role, "
                    "but were provided via the API"
                )
            for uri in uri_alt:
                if not self._uri_allowed(role, uri):
                    raise _bad(
                        "URI Subject Alternative Names were provided via the API which are "
                        "not valid for this role"
                    )
            uris = uri_alt

        subject = _go_subject(
            cn,
            country=_dedupe_stable(role["country"]),
            province=_dedupe_stable(role["province"]),
            locality=_dedupe_stable(role["locality"]),
            street_address=_dedupe_stable(role["street_address"]),
            postal_code=_dedupe_stable(role["postal_code"]),
            organization=_dedupe_stable(role["organization"]),
            ou=_dedupe_stable(role["ou"]),
        )

        warnings: list[str] = []
        ttl = parse_duration(params.get("ttl"), "ttl")
        if ttl == 0 and role["ttl"] > 0:
            ttl = role["ttl"]
        max_ttl = role["max_ttl"] or mount.effective_max_ttl()
        if ttl == 0:
            ttl = mount.effective_default_ttl()
        if ttl > max_ttl and self.profile.warns_ttl_cap:
            warnings.append(
                f'TTL "{go_duration(ttl)}" is longer than permitted maxTTL '
                f'"{go_duration(max_ttl)}", so maxTTL is being used'
            )
        ttl = min(ttl, max_ttl)
        now = dt.datetime.now(dt.UTC)
        not_after = now + dt.timedelta(seconds=ttl)
        ca_not_after = ca_cert.not_valid_after_utc
        if not_after > ca_not_after:
            raise _bad(
                f"cannot satisfy request, as TTL would result in notAfter of "
                f"{not_after.isoformat().replace('+00:00', 'Z')} that is beyond the expiration "
                f"of the CA certificate at {ca_not_after.isoformat().replace('+00:00', 'Z')}"
            )
        return {
            "subject": subject,
            "dns_names": sorted(set(dns_names)),
            "emails": sorted(set(emails)),
            "ips": ips,
            "uris": uris,
            "not_before": now - dt.timedelta(seconds=role["not_before_duration"]),
            "not_after": not_after,
            "ttl": ttl,
            "warnings": warnings,
        }

    @staticmethod
    def _uri_allowed(role: dict[str, Any], uri: str) -> bool:
        return any(
            re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), uri)
            for pattern in role["allowed_uri_sans"]
        )

    @staticmethod
    def _build_leaf(
        plan: dict[str, Any],
        role: dict[str, Any],
        public_key: Any,
        ca_key: Any,
        ca_cert: x509.Certificate,
        *,
        expired: bool,
    ) -> x509.Certificate:
        not_before: dt.datetime = plan["not_before"]
        not_after: dt.datetime = plan["not_after"]
        if expired:
            now = dt.datetime.now(dt.UTC)
            not_before, not_after = now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)
        builder = (
            x509.CertificateBuilder()
            .serial_number(secrets.randbits(159) | 1)
            .subject_name(plan["subject"])
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .not_valid_before(not_before.replace(microsecond=0))
            .not_valid_after(not_after.replace(microsecond=0))
        )
        usage = _key_usage(role["key_usage"])
        if usage is not None:
            builder = builder.add_extension(usage, critical=True)
        ext_usages = []
        if role["server_flag"]:
            ext_usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if role["client_flag"]:
            ext_usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if role["code_signing_flag"]:
            ext_usages.append(ExtendedKeyUsageOID.CODE_SIGNING)
        if role["email_protection_flag"]:
            ext_usages.append(ExtendedKeyUsageOID.EMAIL_PROTECTION)
        if ext_usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(ext_usages), critical=False)
        if role["basic_constraints_valid_for_non_ca"]:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in plan["dns_names"]]
        general_names += [x509.RFC822Name(e) for e in plan["emails"]]
        general_names += [x509.IPAddress(ip) for ip in plan["ips"]]
        general_names += [x509.UniformResourceIdentifier(u) for u in plan["uris"]]
        if general_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(general_names),
                critical=len(plan["subject"].rdns) == 0,
            )
        return builder.sign(ca_key, _hash_for(ca_key))


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a VaultDouble until SIGTERM/SIGINT, after printing its url and root token."""
    parser = argparse.ArgumentParser(prog="python -m tests.doubles.vault", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200, help="0 picks a free port")
    parser.add_argument("--root-token", default=None, help="fixed root token (default: random)")
    parser.add_argument(
        "--print-token",
        action="store_true",
        help="also print the bare root token on a second stdout line (for shell use)",
    )
    parser.add_argument(
        "--version", default="1.17", choices=sorted(PROFILES), help="Vault version to imitate"
    )
    parser.add_argument("--legacy", action="store_true", help="the same as --version 1.7")
    args = parser.parse_args(argv)
    double = VaultDouble(
        host=args.host, port=args.port, root_token=args.root_token,
        version=args.version, legacy=args.legacy
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with double:
        line = {
            "url": double.url,
            "root_token": double.root_token,
            "mounts": double.mounts,
            "role": double.role,
        }
        print(json.dumps(line), flush=True)
        if args.print_token:
            print(double.root_token, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
