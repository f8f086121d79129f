"""A throwaway local PKI for tests that do not need Vault: roots and leaves in memory."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.keys import PrivateKey, generate_private_key, parse_subject
from sidecar.material import Material

NOW = dt.datetime.now(dt.UTC)


class LocalRoot:
    """A self-signed root CA that can sign leaf certificates."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test Root {name}")])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))

    def sign(self, key: PrivateKey, subject: str, dns: Sequence[str] = (),
             ips: Sequence[str] = (), not_before: dt.datetime | None = None,
             not_after: dt.datetime | None = None) -> x509.Certificate:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder().subject_name(parse_subject(subject))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(minutes=1))
            .not_valid_after(not_after or NOW + dt.timedelta(hours=24))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())


SUBJECT = "CN=broker-1.kafka.test,OU=kafka,O=Example"
DNS = ("broker-1.kafka.test", "localhost")
IPS = ("127.0.0.1",)


def leaf_material(signer: LocalRoot, trust: Sequence[LocalRoot], subject: str = SUBJECT,
                  key_type: str = "ec-p256", **kwargs: object) -> Material:
    """Key + certificate signed by ``signer``, trusting ``trust``."""
    key = generate_private_key(key_type)
    cert = signer.sign(key, subject, DNS, IPS, **kwargs)  # type: ignore[arg-type]
    return Material(key=key, certificate=cert, chain=(signer.cert,),
                    trust={r.name: (r.cert,) for r in trust}, signer=signer.name)
