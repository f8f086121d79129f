"""docker/vault-init.sh against the tests' Vault, with only OpenBao's ``bao`` command on PATH
(as in the openbao/openbao image): each AppRole it writes signs its own name and no other."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.openbao import bao_binary
from tests.vault_setup import VaultTarget

ROOT = Path(__file__).resolve().parent.parent


def _csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "kafka"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = (x509.CertificateSigningRequestBuilder().subject_name(subject)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_vault_init_runs_with_bao_alone(vault: VaultTarget, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bao").symlink_to(bao_binary())
    credentials = tmp_path / "credentials"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.token,
           "CREDENTIALS_DIR": str(credentials),
           "CREDENTIALS_OWNER": f"{os.getuid()}:{os.getgid()}",
           "PKI_LAYOUT": "issuers", "ISSUER_MOUNT": "pki_init",
           "PARTICIPANTS": "kafka-1 producer", "BROKERS": "kafka-1"}
    done = subprocess.run(["sh", str(ROOT / "docker" / "vault-init.sh")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "vault-init: done" in done.stdout
    assert vault.token not in done.stdout + done.stderr

    def login(name: str) -> hvac.Client:
        client = hvac.Client(url=vault.url, timeout=10)
        secret_id = (credentials / name / "secret-id").read_text().strip()
        client.auth.approle.login(name, secret_id)
        return client

    broker = login("kafka-1")
    signed = broker.write_data("pki_init/issuer/root-a/sign/kafka-broker",
                               data={"csr": _csr("kafka-1.kafka.test")})
    cert = x509.load_pem_x509_certificate(signed["data"]["certificate"].encode())
    assert cert.subject.rfc4514_string() == "CN=kafka-1.kafka.test,OU=kafka,O=Example"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not allowed by this role"):
        login("producer").write_data("pki_init/issuer/root-a/sign/kafka-client",
                                     data={"csr": _csr("kafka-1.kafka.test")})
