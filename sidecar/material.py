"""TLS material (key, certificate, chain, trust roots) and the checks it must pass. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sidecar.keys import PrivateKey


class MaterialError(ValueError):
    """Material that must not be installed; the message says why."""


@dataclasses.dataclass(frozen=True)
class Material:
    """One generation's worth of TLS material.

    ``chain`` is the issuing CA chain without the leaf; ``trust`` maps each trusted root (a
    Vault PKI mount name) to its CA certificates; ``signer`` names the mount that signed.
    """

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    trust: Mapping[str, tuple[x509.Certificate, ...]]
    signer: str
    #: What Vault warned about while signing, the warnings every sign gets left out.
    vault_warnings: tuple[str, ...] = ()
    #: Set when Vault granted less than the requested TTL (see :func:`ttl_cap`).
    ttl_capped: TtlCap | None = None

    @property
    def serial_hex(self) -> str:
        return format_serial(self.certificate.serial_number)

    @property
    def trust_certificates(self) -> list[x509.Certificate]:
        return [cert for mount in sorted(self.trust) for cert in self.trust[mount]]


@dataclasses.dataclass(frozen=True)
class TtlCap:
    """Vault granted ``granted`` seconds of the ``requested`` (the role's or mount's max_ttl)."""

    requested: int
    granted: int


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600,
                   "d": 86400}


def duration_seconds(value: str) -> int:
    """Seconds of a Vault duration ("24h", "1h30m", "3600"); ValueError if it is not one."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Vault duration: {value!r}")
    return int(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def ttl_cap(cert: x509.Certificate, requested: str, requested_at: dt.datetime) -> TtlCap | None:
    """Whether Vault granted ``cert`` less than the ``requested`` TTL, read from the
    certificate itself: Vault < 1.11 caps a TTL above the role's max_ttl without a warning.

    Vault backdates notBefore (the role's not_before_duration, 30 s by default) and sets
    notAfter to issue time + granted TTL, so notAfter - notBefore is at least the granted TTL
    whatever the clocks: a lifetime shorter than the request is a cap. ``granted`` is
    notAfter - ``requested_at`` (when the request was sent, our clock), at most the lifetime.
    """
    wanted = duration_seconds(requested)
    lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    if lifetime >= wanted:
        return None
    granted = min(lifetime, (cert.not_valid_after_utc - requested_at).total_seconds())
    return TtlCap(requested=wanted, granted=max(0, round(granted)))


def format_serial(serial: int) -> str:
    """Vault's colon-separated lowercase hex form of a serial number."""
    raw = f"{serial:x}"
    raw = raw if len(raw) % 2 == 0 else "0" + raw
    return ":".join(raw[i:i + 2] for i in range(0, len(raw), 2))


def parse_certificates(pem: str | bytes, what: str) -> list[x509.Certificate]:
    """Parse one or more PEM certificates; raise MaterialError naming ``what`` if malformed."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise MaterialError(f"{what} is not a PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise MaterialError(f"{what} is a malformed certificate: {exc}") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_bundle(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(certificate_pem(c) for c in certs)


def dns_sans(cert: x509.Certificate) -> set[str]:
    return {str(v).lower() for v in _san(cert).get_values_for_type(x509.DNSName)}


def ip_sans(cert: x509.Certificate) -> set[str]:
    return {str(v) for v in _san(cert).get_values_for_type(x509.IPAddress)}


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def public_key_matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(key.public_key().public_bytes(der, spki)
                == cert.public_key().public_bytes(der, spki))


def is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_material(material: Material, *, subject: str, dns_names: Sequence[str],
                   ip_addresses: Sequence[str], now: dt.datetime) -> None:
    """Raise MaterialError unless the material is safe to install.

    Checks that the key matches the certificate, that it is within its validity period, that
    Vault kept the configured subject DN (it is the ACL principal) and every requested SAN,
    and that the certificate chains up to a CA of the signing root.
    """
    cert = material.certificate
    if not public_key_matches(material.key, cert):
        raise MaterialError("certificate does not match the private key "
                            f"(serial {material.serial_hex})")
    if cert.not_valid_after_utc <= now:
        raise MaterialError(f"certificate {material.serial_hex} expired at "
                            f"{cert.not_valid_after_utc.isoformat()}")
    if cert.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise MaterialError(f"certificate {material.serial_hex} is not valid before "
                            f"{cert.not_valid_before_utc.isoformat()} (clock skew?)")
    served_subject = cert.subject.rfc4514_string()
    if served_subject != subject:
        raise MaterialError(f"Vault issued subject {served_subject!r}, configured {subject!r}: "
                            "set the PKI role's ou/organization to match the configured DN")
    missing = sorted({n.lower() for n in dns_names} - dns_sans(cert))
    missing += sorted(set(ip_addresses) - ip_sans(cert))
    if missing:
        raise MaterialError(f"certificate lacks requested SANs: {', '.join(missing)}")
    signer_cas = material.trust.get(material.signer, ())
    if not signer_cas:
        raise MaterialError(f"signing root {material.signer} is not in the trust set")
    issuers = [*material.chain, *signer_cas]
    if not any(is_issued_by(cert, ca) for ca in issuers):
        raise MaterialError(f"certificate {material.serial_hex} is not signed by a CA of "
                            f"{material.signer}")
