"""Private keys and CSRs, made locally: the key never leaves the process except into the volume."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_private_key(key_type: str) -> PrivateKey:
    """Generate a key of one of :data:`KEY_TYPES`."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(f"unknown key type {key_type!r}; choose from {', '.join(KEY_TYPES)}")


_ATTRIBUTE_OIDS = {
    "CN": NameOID.COMMON_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "C": NameOID.COUNTRY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "POSTALCODE": NameOID.POSTAL_CODE,
}


def parse_subject(dn: str) -> x509.Name:
    """Parse an RFC 4514 DN (``CN=a,OU=b,O=c``) into an ``x509.Name``.

    RFC 4514 lists the most specific RDN first, so the sequence is reversed: the result's
    ``rfc4514_string()`` gives back the same text, which is what Kafka shows as the principal.
    """
    rdns: list[x509.RelativeDistinguishedName] = []
    for part in _split_unescaped(dn, ","):
        key, sep, value = part.partition("=")
        oid = _ATTRIBUTE_OIDS.get(key.strip().upper())
        if not sep or oid is None or not value.strip():
            raise ValueError(f"cannot parse DN component {part.strip()!r}")
        text = _unescape(value.strip())
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, text)]))
    if not rdns:
        raise ValueError("empty DN")
    return x509.Name(list(reversed(rdns)))


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def subject_alt_names(dns_names: Sequence[str], ip_addresses: Sequence[str]
                      ) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return names


def build_csr(key: PrivateKey, subject: x509.Name, dns_names: Sequence[str],
              ip_addresses: Sequence[str]) -> x509.CertificateSigningRequest:
    """A CSR carrying the stable subject DN and the configured SANs, signed with ``key``."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    sans = subject_alt_names(dns_names, ip_addresses)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    signing_key: CertificateIssuerPrivateKeyTypes = key
    return builder.sign(signing_key, hashes.SHA256())


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def private_key_pkcs8_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the form Kafka's PEM stores (KIP-651) and librdkafka read."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_key_pkcs8_der(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(pem: bytes) -> PrivateKey:
    """Load a PEM key, accepting only the key types this project makes."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def key_type_of(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(key.curve.name, key.curve.name)
