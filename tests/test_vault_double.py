"""Tests of the Vault double, through hvac over the real socket.

Tests taking ``vault`` must pass unchanged against a real Vault (set VAULT_ADDR and
VAULT_TOKEN to a root token of a disposable dev server); those taking ``vault_double`` use
fault injection or auth methods that ``prepare`` does not set up. Tests taking
``vault_versioned`` check behaviour that differs between Vault versions: they run against
each profile of the double (1.7, current), or against the real Vault with the profile of the
version its ``sys/health`` reports.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests import vault_setup
from tests.doubles.vault import VaultDouble
from tests.vault_setup import VaultTarget, prepare

vault = vault_setup.vault
vault_double = vault_setup.vault_double
vault_versioned = vault_setup.vault_versioned

ROOT = Path(__file__).resolve().parents[1]
MOUNT_A, MOUNT_B = "pki_root_a", "pki_root_b"
BROKER = "broker-1.kafka.test"


# ----------------------------------------------------------------------------- helpers


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key per run (generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_csr(
    cn: str,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    key: Any = None,
) -> tuple[str, Any]:
    """A PEM CSR for ``cn`` with the given SANs, and its private key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def remaining(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()


def same_public_key(a: Any, b: Any) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(
        serialization.Encoding.DER, fmt
    )


def sign(
    client: hvac.Client, csr: str, cn: str = BROKER, mount: str = MOUNT_A, role: str = "kafka",
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    return client.secrets.pki.sign_certificate(
        role, csr, cn, extra_params=dict(extra), mount_point=mount
    )


def errors_of(exc: pytest.ExceptionInfo[hvac.exceptions.VaultError]) -> list[str]:
    return list(exc.value.errors or [])


def ensure_role(client: hvac.Client, name: str, mount: str = MOUNT_A, **params: Any) -> None:
    base = dict(vault_setup.KAFKA_ROLE_PARAMS)
    base.update(params)
    client.secrets.pki.create_or_update_role(name, extra_params=base, mount_point=mount)


# ----------------------------------------------------------------------------- PKI (portable)


def test_sign_ec_csr(vault: VaultTarget) -> None:
    client = vault.client()
    csr, key = make_csr(BROKER, dns=[BROKER, "localhost"], ips=["127.0.0.1"])
    resp = sign(client, csr, ttl="1h")
    data = resp["data"]
    cert = load(data["certificate"])
    ca = load(vault.ca_pem(MOUNT_A))

    assert cert.subject.rfc4514_string() == f"CN={BROKER},OU=kafka,O=Example"
    assert cert.issuer == ca.subject
    assert ca.subject.rfc4514_string() == "CN=Kafka Root A"
    cert.verify_directly_issued_by(ca)
    assert same_public_key(cert.public_key(), key.public_key())
    assert sans(cert) == ({BROKER, "localhost"}, {"127.0.0.1"})
    assert 3600 - 120 < remaining(cert) <= 3600
    assert data["expiration"] == int(cert.not_valid_after_utc.timestamp())
    assert data["serial_number"] == ":".join(
        f"{b:02x}" for b in cert.serial_number.to_bytes(20, "big").lstrip(b"\0")
    )
    assert load(data["issuing_ca"]) == ca
    if "ca_chain" in data:
        assert [load(p) for p in data["ca_chain"]] == [ca]
    assert {"request_id", "lease_id", "lease_duration", "renewable", "warnings", "auth"} <= set(
        resp
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)


def test_sign_rsa_csr_on_second_root(vault: VaultTarget) -> None:
    csr, key = make_csr("broker-2.kafka.test", dns=["broker-2.kafka.test"], key=rsa_key())
    data = sign(vault.client(), csr, "broker-2.kafka.test", mount=MOUNT_B)["data"]
    cert = load(data["certificate"])
    ca_b = load(vault.ca_pem(MOUNT_B))
    assert ca_b.subject.rfc4514_string() == "CN=Kafka Root B"
    cert.verify_directly_issued_by(ca_b)
    assert same_public_key(cert.public_key(), key.public_key())
    assert cert.subject.rfc4514_string() == "CN=broker-2.kafka.test,OU=kafka,O=Example"
    assert 24 * 3600 - 120 < remaining(cert) <= 24 * 3600  # the role's default ttl


def test_issue_generates_the_key(vault: VaultTarget) -> None:
    client = vault.client()
    ensure_role(client, "kafka-issue-ec", key_type="ec", key_bits=256)
    data = client.secrets.pki.generate_certificate(
        "kafka-issue-ec", "client-1.kafka.test", mount_point=MOUNT_A
    )["data"]
    cert = load(data["certificate"])
    key = serialization.load_pem_private_key(data["private_key"].encode(), None)
    assert data["private_key_type"] == "ec"
    assert same_public_key(cert.public_key(), key.public_key())
    assert sans(cert)[0] == {"client-1.kafka.test"}
    cert.verify_directly_issued_by(load(vault.ca_pem(MOUNT_A)))


def test_issue_refused_on_key_type_any(vault: VaultTarget) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        vault.client().secrets.pki.generate_certificate("kafka", BROKER, mount_point=MOUNT_A)
    assert errors_of(exc) == [
        'role key type "any" not allowed for issuing certificates, only signing'
    ]


def test_ca_chain_and_ca_endpoints(vault: VaultTarget) -> None:
    client = vault.client()
    ca = load(vault.ca_pem(MOUNT_A))
    assert load(client.secrets.pki.read_ca_certificate(mount_point=MOUNT_A)) == ca
    chain = client.secrets.pki.read_ca_certificate_chain(mount_point=MOUNT_A)
    if vault.is_double or chain:  # Vault < 1.11 answers 204 for a root's chain
        assert load(chain) == ca
    assert load(client.read(f"{MOUNT_A}/cert/ca")["data"]["certificate"]) == ca
    assert load(vault.ca_pem(MOUNT_B)) != ca


def test_common_name_outside_allowed_domains(vault: VaultTarget) -> None:
    csr, _ = make_csr("evil.example.com")
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        sign(vault.client(), csr, "evil.example.com")
    assert errors_of(exc) == ["common name evil.example.com not allowed by this role"]


def test_san_outside_allowed_domains(vault: VaultTarget) -> None:
    csr, _ = make_csr(BROKER, dns=[BROKER, "evil.example.com"])
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        sign(vault.client(), csr)
    assert errors_of(exc) == ["subject alternate name evil.example.com not allowed by this role"]


def test_ip_sans_refused_by_role_and_invalid_ip(vault_versioned: VaultTarget) -> None:
    vault = vault_versioned
    client = vault.client()
    ensure_role(client, "kafka-noip", allow_ip_sans=False)
    csr, _ = make_csr(BROKER, dns=[BROKER], ips=["10.0.0.7"])
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        sign(client, csr, role="kafka-noip")
    assert errors_of(exc) == [
        "IP Subject Alternative Names are not allowed in this role, but was provided some via CSR"
    ]
    ensure_role(client, "kafka-issue-ec", key_type="ec", key_bits=256)
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        client.secrets.pki.generate_certificate(
            "kafka-issue-ec", BROKER, extra_params={"ip_sans": "10.0.0.300"}, mount_point=MOUNT_A
        )
    quoted = "'10.0.0.300'" if vault.profile.single_quotes else '"10.0.0.300"'
    assert errors_of(exc) == [f"the value {quoted} is not a valid IP address"]


def test_ttl_above_role_max_is_capped(vault_versioned: VaultTarget) -> None:
    """Both cap; current Vault warns, 1.7 does not (FIELD-NOTES, Vault 1.7.10)."""
    csr, _ = make_csr(BROKER)
    resp = sign(vault_versioned.client(), csr, ttl="100h")
    assert 72 * 3600 - 120 < remaining(load(resp["data"]["certificate"])) <= 72 * 3600
    capped = 'TTL "100h0m0s" is longer than permitted maxTTL "72h0m0s", so maxTTL is being used'
    warned = capped in (resp["warnings"] or [])
    assert warned is vault_versioned.profile.warns_ttl_cap, resp["warnings"]


def test_ttl_beyond_the_ca_is_refused(vault: VaultTarget) -> None:
    client = vault.client()
    ensure_role(client, "kafka-long", max_ttl="900000h")
    csr, _ = make_csr(BROKER)
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        sign(client, csr, role="kafka-long", ttl="900000h")
    assert "beyond the expiration of the CA certificate" in errors_of(exc)[0]


def test_unknown_role(vault: VaultTarget) -> None:
    csr, _ = make_csr(BROKER)
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        sign(vault.client(), csr, role="nope")
    assert errors_of(exc) == ["unknown role: nope"]


def test_unknown_mount(vault_versioned: VaultTarget) -> None:
    csr, _ = make_csr(BROKER)
    with pytest.raises(hvac.exceptions.InvalidPath) as exc:
        sign(vault_versioned.client(), csr, mount="pki_nope")
    expected = {
        True: "no handler for route 'pki_nope/sign/kafka'",
        False: 'no handler for route "pki_nope/sign/kafka". route entry not found.',
    }[vault_versioned.profile.single_quotes]
    assert errors_of(exc) == [expected]


def test_sys_health_reports_the_version(vault_versioned: VaultTarget) -> None:
    health = requests.get(f"{vault_versioned.url}/v1/sys/health", timeout=5).json()
    version = health["version"]
    assert version == vault_versioned.profile.version or not vault_versioned.is_double
    if vault_versioned.is_double:
        assert version in ("1.7.10", "1.17.3")


def test_role_without_key_type_is_rsa_and_a_write_replaces_the_role(
    vault_versioned: VaultTarget,
) -> None:
    """A role is written whole: fields left out return to their defaults (key_type rsa)."""
    client = vault_versioned.client()
    ensure_role(client, "kafka-rewrite", ttl="1h", max_ttl="5h")
    ec_csr, _ = make_csr(BROKER)
    sign(client, ec_csr, role="kafka-rewrite")  # key_type any: signs
    client.secrets.pki.create_or_update_role(
        "kafka-rewrite", extra_params={"allowed_domains": ["kafka.test"],
                                       "allow_subdomains": True}, mount_point=MOUNT_A)
    role = client.secrets.pki.read_role("kafka-rewrite", mount_point=MOUNT_A)["data"]
    assert role["key_type"] == "rsa" and role["max_ttl"] == 0 and role["ou"] == []
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        sign(client, ec_csr, role="kafka-rewrite")
    assert errors_of(exc) == ["role requires keys of type rsa"]
    rsa_csr, _ = make_csr(BROKER, key=rsa_key())
    cert = load(sign(client, rsa_csr, role="kafka-rewrite")["data"]["certificate"])
    assert cert.subject.rfc4514_string() == f"CN={BROKER}", "ou/organization are gone too"


def test_sys_mounts_lists_the_pki_roots(vault: VaultTarget) -> None:
    mounts = vault.client().sys.list_mounted_secrets_engines()["data"]
    for mount in vault.mounts:
        assert mounts[f"{mount}/"]["type"] == "pki"
        assert mounts[f"{mount}/"]["config"]["max_lease_ttl"] == 87600 * 3600


def test_prepare_is_idempotent(vault: VaultTarget) -> None:
    client = vault.client()
    before = {m: client.secrets.pki.read_ca_certificate(mount_point=m) for m in vault.mounts}
    prepare(client)
    prepare(client)
    after = {m: client.secrets.pki.read_ca_certificate(mount_point=m) for m in vault.mounts}
    assert before == after
    role = client.secrets.pki.read_role("kafka", mount_point=MOUNT_A)["data"]
    assert role["allowed_domains"] == ["kafka.test", "localhost"]
    assert (role["ou"], role["organization"], role["key_type"]) == (["kafka"], ["Example"], "any")
    assert (role["ttl"], role["max_ttl"]) == (24 * 3600, 72 * 3600)


# ----------------------------------------------------------------------------- tokens (portable)


def test_unknown_or_missing_token_is_forbidden(vault_versioned: VaultTarget) -> None:
    profile = vault_versioned.profile
    csr, _ = make_csr(BROKER)
    unknown = profile.token_prefixes[0] + "A1b2C3d4E5f6G7h8I9j0K1l2"
    for token in (unknown, ""):
        with pytest.raises(hvac.exceptions.Forbidden) as exc:
            sign(vault_versioned.client(token=token), csr)
        assert profile.permission_denied() in errors_of(exc)
    with pytest.raises(hvac.exceptions.Forbidden) as exc:
        vault_versioned.client(token=unknown).auth.token.lookup_self()
    assert errors_of(exc) == profile.invalid_token_errors()


def test_malformed_token(vault_versioned: VaultTarget) -> None:
    """A token this version reads a namespace suffix from: 400 on 1.7, 403 on current Vault."""
    token = "hvs.not-a-real-token" if vault_versioned.profile.malformed_token_is_400 \
        else "s.not-a-real.token"
    assert vault_versioned.profile.is_malformed_token(token)
    client = vault_versioned.client(token=token)
    if vault_versioned.profile.malformed_token_is_400:
        with pytest.raises(hvac.exceptions.InvalidRequest) as bad:
            client.auth.token.lookup_self()
        assert errors_of(bad) == ["error performing token check: failed to look up namespace "
                                  "from the token: no namespace"]
    else:
        with pytest.raises(hvac.exceptions.Forbidden) as denied:
            client.auth.token.lookup_self()
        assert errors_of(denied) == vault_versioned.profile.invalid_token_errors()


def test_token_lookup_renew_and_revoke(vault_versioned: VaultTarget) -> None:
    vault = vault_versioned
    root = vault.client()
    auth = root.auth.token.create(policies=["default"], ttl="1h", explicit_max_ttl="2h")["auth"]
    assert auth["policies"] == ["default"] and auth["renewable"] is True
    user = vault.client(token=auth["client_token"])

    looked = user.auth.token.lookup_self()["data"]
    assert looked["policies"] == ["default"] and looked["renewable"] is True
    assert 3600 - 60 < looked["ttl"] <= 3600 and looked["creation_ttl"] == 3600

    assert user.auth.token.renew_self(increment="30m")["auth"]["lease_duration"] == 1800
    assert 1800 - 60 < user.auth.token.lookup_self()["data"]["ttl"] <= 1800
    capped = user.auth.token.renew_self(increment="5h")["auth"]["lease_duration"]
    assert 7200 - 60 < capped <= 7200  # explicit_max_ttl bounds renewals

    csr, _ = make_csr(BROKER)
    with pytest.raises(hvac.exceptions.Forbidden) as exc:  # default policy grants no PKI
        sign(user, csr)
    assert errors_of(exc) == [vault.profile.permission_denied()]  # 1.7: in a multierror

    user.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        user.auth.token.lookup_self()


def test_non_renewable_token(vault: VaultTarget) -> None:
    auth = vault.client().auth.token.create(policies=["default"], ttl="1h", renewable=False)
    user = vault.client(token=auth["auth"]["client_token"])
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        user.auth.token.renew_self()
    assert errors_of(exc) == ["lease is not renewable"]


# ----------------------------------------------------------------------------- double only


def test_prepare_builds_an_empty_vault() -> None:
    with VaultDouble(mounts=()) as double:
        client = hvac.Client(url=double.url, token=double.root_token, timeout=5)
        assert double.mounts == []
        prepare(client)
        assert double.mounts == [MOUNT_A, MOUNT_B]
        assert double.ca_cert(MOUNT_B).subject.rfc4514_string() == "CN=Kafka Root B"
        assert isinstance(double.ca_cert(MOUNT_A).public_key(), ec.EllipticCurvePublicKey)
        csr, _ = make_csr(BROKER)
        cert = load(sign(client, csr, mount=MOUNT_B)["data"]["certificate"])
        cert.verify_directly_issued_by(double.ca_cert(MOUNT_B))
        methods = [(m, p) for m, p, _ in double.request_log]
        assert ("POST", "/v1/sys/mounts/pki_root_a") in methods
        assert ("POST", "/v1/pki_root_b/root/generate/internal") in methods


def test_add_mount_and_counters(vault_double: VaultDouble) -> None:
    vault_double.add_mount("pki_root_c")
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    assert "pki_root_c/" in client.sys.list_mounted_secrets_engines()["data"]
    csr, _ = make_csr(BROKER)
    cert = load(sign(client, csr, mount="pki_root_c")["data"]["certificate"])
    assert cert.issuer.rfc4514_string() == "CN=Kafka Root C"
    sign(client, csr)
    assert vault_double.sign_count == {MOUNT_A: 1, MOUNT_B: 0, "pki_root_c": 1}
    assert ("POST", "/v1/pki_root_c/sign/kafka", 200) in vault_double.request_log


def test_alt_names_ignored_when_role_uses_csr_sans(vault_double: VaultDouble) -> None:
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    csr, _ = make_csr(BROKER, dns=[BROKER])
    resp = sign(client, csr, alt_names="other.kafka.test", exclude_cn_from_sans=True)
    assert sans(load(resp["data"]["certificate"]))[0] == {BROKER}
    assert any("use_csr_sans" in w for w in resp["warnings"])


def test_approle_login(vault_double: VaultDouble) -> None:
    vault_double.add_policy("kafka-signer", ["pki_root_a/sign/kafka", "pki_root_b/sign/kafka"])
    vault_double.add_approle("role-1", "secret-1", ["kafka-signer"], token_ttl="20m")
    client = hvac.Client(url=vault_double.url, timeout=5)
    auth = client.auth.approle.login("role-1", "secret-1")["auth"]
    assert auth["policies"] == ["default", "kafka-signer"]
    assert auth["lease_duration"] == 1200 and auth["renewable"] is True
    assert client.token == auth["client_token"]
    csr, _ = make_csr(BROKER)
    sign(client, csr, mount=MOUNT_B)
    for role_id, secret_id in (("role-1", "wrong"), ("nope", "secret-1")):
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            hvac.Client(url=vault_double.url).auth.approle.login(role_id, secret_id)
        assert errors_of(exc) == ["invalid role or secret ID"]


def test_kubernetes_login(vault_double: VaultDouble) -> None:
    vault_double.add_kubernetes_role("sidecar", ["jwt-good"], ["default"], token_ttl=600)
    client = hvac.Client(url=vault_double.url, timeout=5)
    auth = client.auth.kubernetes.login("sidecar", "jwt-good")["auth"]
    assert auth["lease_duration"] == 600 and auth["metadata"]["role"] == "sidecar"
    assert client.auth.token.lookup_self()["data"]["path"] == "auth/kubernetes/login"
    with pytest.raises(hvac.exceptions.Forbidden) as exc:
        hvac.Client(url=vault_double.url).auth.kubernetes.login("sidecar", "jwt-bad")
    assert errors_of(exc) == ["permission denied"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        hvac.Client(url=vault_double.url).auth.kubernetes.login("nope", "jwt-good")
    assert errors_of(exc) == ['invalid role name "nope"']


def test_policy_allows_and_denies(vault_double: VaultDouble) -> None:
    vault_double.add_policy("kafka-signer", ["pki_root_a/sign/kafka", "pki_root_b/sign/kafka"])
    token = vault_double.create_token(["kafka-signer"], ttl="1h")
    client = hvac.Client(url=vault_double.url, token=token, timeout=5)
    csr, _ = make_csr(BROKER)
    sign(client, csr, mount=MOUNT_A)
    sign(client, csr, mount=MOUNT_B)
    with pytest.raises(hvac.exceptions.Forbidden) as exc:
        client.secrets.pki.read_role("kafka", mount_point=MOUNT_A)
    assert errors_of(exc) == ["permission denied"]
    with pytest.raises(hvac.exceptions.Forbidden):  # ACL is checked before routing
        sign(client, csr, mount="pki_nope")
    with pytest.raises(hvac.exceptions.Forbidden):  # no grant on auth/token/create
        client.auth.token.create(policies=["root"])
    assert client.auth.token.lookup_self()["data"]["policies"] == ["default", "kafka-signer"]


def test_revoked_and_expired_tokens(vault_double: VaultDouble) -> None:
    for action in (vault_double.revoke_token, vault_double.expire_token):
        token = vault_double.create_token(["default"])
        client = hvac.Client(url=vault_double.url, token=token, timeout=5)
        client.auth.token.lookup_self()
        action(token)
        with pytest.raises(hvac.exceptions.Forbidden) as exc:
            client.auth.token.lookup_self()
        assert errors_of(exc) == ["permission denied", "invalid token"]
        assert client.is_authenticated() is False


def test_down_refuses_connections_then_recovers(vault_double: VaultDouble) -> None:
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=2)
    vault_double.set_down(True)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.auth.token.lookup_self()
    vault_double.set_down(False)
    assert client.auth.token.lookup_self()["data"]["policies"] == ["root"]


def test_sealed(vault_double: VaultDouble) -> None:
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    vault_double.set_sealed(True)
    csr, _ = make_csr(BROKER)
    with pytest.raises(hvac.exceptions.VaultDown) as exc:
        sign(client, csr)
    assert errors_of(exc) == ["Vault is sealed"]
    assert client.sys.is_sealed() is True
    vault_double.set_sealed(False)
    sign(client, csr)


def test_fail_next(vault_double: VaultDouble) -> None:
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    csr, _ = make_csr(BROKER)
    vault_double.fail_next(2, 500)
    for _ in range(2):
        with pytest.raises(hvac.exceptions.InternalServerError):
            sign(client, csr)
    sign(client, csr)
    vault_double.fail_next(1, 429, ["rate limited"], path="/sign/")
    client.auth.token.lookup_self()  # not matching the path: untouched
    with pytest.raises(hvac.exceptions.RateLimitExceeded):
        sign(client, csr)
    assert vault_double.sign_count[MOUNT_A] == 1


def test_corrupt_mismatched_and_expired_certificates(vault_double: VaultDouble) -> None:
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    ca = vault_double.ca_cert(MOUNT_A)
    csr, key = make_csr(BROKER)

    vault_double.corrupt_next_certificate()
    blob = sign(client, csr)["data"]["certificate"]
    assert blob.startswith("-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError):
        load(blob)

    vault_double.mismatched_key_next()
    wrong = load(sign(client, csr)["data"]["certificate"])
    wrong.verify_directly_issued_by(ca)
    assert not same_public_key(wrong.public_key(), key.public_key())

    vault_double.expired_next()
    old = load(sign(client, csr)["data"]["certificate"])
    old.verify_directly_issued_by(ca)
    assert old.not_valid_after_utc < dt.datetime.now(dt.UTC)

    good = load(sign(client, csr)["data"]["certificate"])
    assert same_public_key(good.public_key(), key.public_key()) and remaining(good) > 0


def test_root_in_the_chain_per_version(vault_versioned: VaultTarget) -> None:
    """Vault < 1.11 leaves a self-signed root out of ca_chain and answers /ca_chain with 204."""
    client = vault_versioned.client()
    csr, _ = make_csr(BROKER)
    in_chain = vault_versioned.profile.root_in_chain
    assert ("ca_chain" in sign(client, csr)["data"]) is in_chain
    chain = client.secrets.pki.read_ca_certificate_chain(mount_point=MOUNT_A)
    assert bool(chain) is in_chain


def test_legacy_flag_is_the_1_7_profile() -> None:
    with VaultDouble(legacy=True, mounts=()) as double:
        assert double.profile.version == "1.7.10" and double.legacy
        assert double.root_token.startswith("s.")


def test_start_is_fast() -> None:
    started = time.perf_counter()
    with VaultDouble() as double:
        assert requests.get(f"{double.url}/v1/sys/health", timeout=2).json()["sealed"] is False
    assert time.perf_counter() - started < 0.5


def test_standalone_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.vault", "--port", "0", "--root-token", "hvs.drill"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["root_token"] == "hvs.drill" and info["mounts"] == [MOUNT_A, MOUNT_B]
        client = hvac.Client(url=info["url"], token=info["root_token"], timeout=5)
        assert client.auth.token.lookup_self()["data"]["policies"] == ["root"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_policy_wildcards_follow_vault(vault_double: VaultDouble) -> None:
    """``+`` is a wildcard only as a whole segment; inside one it is a literal character."""
    vault_double.add_policy("literal-plus", ["pki_root_+/sign/kafka"])
    token = vault_double.create_token(["literal-plus"], "1h")
    client = hvac.Client(url=vault_double.url, token=token)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker-1.kafka.test")])
    ).sign(key, hashes.SHA256())
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.pki.sign_certificate(name="kafka", csr=pem,
                                            common_name="broker-1.kafka.test",
                                            mount_point="pki_root_a")


# ----------------------------------------------------------------------------- identity templating
# builtin/logical/pki/cert_util.go validateNames; sdk/helper/identitytpl/templating.go;
# builtin/credential/approle/path_login.go (alias = role_id, metadata role_name);
# vault-plugin-auth-kubernetes backend.go getAliasName (alias = SA UID or <ns>/<name>).


def test_auth_methods_list_their_accessors(vault_double: VaultDouble) -> None:
    auths = hvac.Client(url=vault_double.url, token=vault_double.root_token).sys.list_auth_methods()
    assert auths["data"]["approle/"]["accessor"] == vault_double.auth_accessor("approle")
    assert auths["data"]["kubernetes/"]["type"] == "kubernetes"
    assert vault_double.auth_accessor("approle").startswith("auth_approle_")


def test_approle_login_carries_an_entity_aliased_by_role_id(vault_double: VaultDouble) -> None:
    vault_double.add_approle("id-of-broker-1", "s1", ["default"], role_name="broker-1")
    client = hvac.Client(url=vault_double.url, timeout=5)
    first = client.auth.approle.login("id-of-broker-1", "s1")["auth"]
    entity = vault_double.entity_for(first["client_token"])
    assert entity is not None and first["entity_id"] == entity.id
    (alias,) = entity.aliases
    assert alias.name == "id-of-broker-1" and alias.metadata == {"role_name": "broker-1"}
    assert alias.mount_accessor == vault_double.auth_accessor("approle")
    again = client.auth.approle.login("id-of-broker-1", "s1")["auth"]
    assert again["entity_id"] == entity.id  # the same alias finds the same entity


def _templated_target(double: VaultDouble) -> vault_setup.VaultTarget:
    return VaultTarget(url=double.url, token=double.root_token, double=double)


@pytest.mark.parametrize("version", ["1.7", "1.17"])
def test_templated_role_signs_only_the_callers_own_name(version: str) -> None:
    with VaultDouble(version=version) as double:
        creds = vault_setup.prepare_least_privilege(
            _templated_target(double), {"broker-1": "broker", "producer": "client"})
        broker = hvac.Client(url=double.url, timeout=5)
        broker.auth.approle.login(*creds["broker-1"])
        controller = "broker-1.kraft.test"  # its controller listener's name, brokers only
        csr, _ = make_csr(BROKER, dns=[BROKER, controller, "localhost"], ips=["127.0.0.1"])
        cert = load(sign(broker, csr, role="kafka-broker")["data"]["certificate"])
        assert sans(cert) == ({BROKER, controller, "localhost"}, {"127.0.0.1"})
        csr, _ = make_csr("broker-2.kafka.test")
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            sign(broker, csr, role="kafka-broker")
        # the words a real Vault 1.7.10 answered (same text in current Vault)
        assert errors_of(exc) == ["common name broker-2.kafka.test not allowed by this role"]
        producer = hvac.Client(url=double.url, timeout=5)
        producer.auth.approle.login(*creds["producer"])
        csr, _ = make_csr(BROKER)
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            sign(producer, csr, role="kafka-client")
        assert errors_of(exc) == [f"common name {BROKER} not allowed by this role"]
        with pytest.raises(hvac.exceptions.Forbidden):  # the broker role is not its to use
            sign(producer, csr, role="kafka-broker")
        csr, _ = make_csr("producer.kafka.test", dns=["producer.kraft.test"])
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            sign(producer, csr, "producer.kafka.test", role="kafka-client")
        assert errors_of(exc) == ["subject alternate name producer.kraft.test not allowed by "
                                  "this role"]
        csr, _ = make_csr("producer.kafka.test")
        cert = load(sign(producer, csr, "producer.kafka.test", role="kafka-client")
                    ["data"]["certificate"])
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_templated_role_without_an_entity_keeps_the_template_literal(
    vault_double: VaultDouble,
) -> None:
    accessor = vault_double.auth_accessor("approle")
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    ensure_role(client, "tpl", allowed_domains=[
        f"{{{{identity.entity.aliases.{accessor}.name}}}}.kafka.test"],
        allowed_domains_template=True, allow_subdomains=False)
    csr, _ = make_csr(BROKER)
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        sign(client, csr, role="tpl")  # root has no entity: nothing is allowed
    assert errors_of(exc) == [f"common name {BROKER} not allowed by this role"]


def test_kubernetes_alias_by_name_and_namespace_metadata(vault_double: VaultDouble) -> None:
    accessor = vault_double.auth_accessor("kubernetes")
    vault_double.add_kubernetes_role("brokers", ["jwt-b1"], ["kafka-signer"],
                                     service_account_name="broker-1", namespace="kafka",
                                     alias_name_source="serviceaccount_name")
    vault_double.add_kubernetes_role("by-uid", ["jwt-u"], ["kafka-signer"],
                                     service_account_name="broker-1", namespace="kafka")
    vault_double.add_policy("kafka-signer", ["pki_root_a/sign/*"])
    root = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    ensure_role(root, "by-sa", allowed_domains=[
        f"{{{{identity.entity.aliases.{accessor}.metadata.service_account_name}}}}"
        f".{{{{identity.entity.aliases.{accessor}.metadata.service_account_namespace}}}}.test"],
        allowed_domains_template=True, allow_subdomains=False)
    client = hvac.Client(url=vault_double.url, timeout=5)
    client.auth.kubernetes.login("brokers", "jwt-b1")
    entity = vault_double.entity_for(client.token)
    assert entity is not None and entity.aliases[0].name == "kafka/broker-1"
    csr, _ = make_csr("broker-1.kafka.test")
    sign(client, csr, "broker-1.kafka.test", role="by-sa")
    csr, _ = make_csr("broker-2.kafka.test")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        sign(client, csr, "broker-2.kafka.test", role="by-sa")
    sa = f"{{{{identity.entity.aliases.{accessor}.metadata.service_account_name}}}}"
    ns = f"{{{{identity.entity.aliases.{accessor}.metadata.service_account_namespace}}}}"
    ensure_role(root, "pods", allowed_domains=[f"{sa}-*.{sa}.{ns}.svc.cluster.local"],
                allowed_domains_template=True, allow_glob_domains=True, allow_subdomains=False)
    pod = "broker-1-0.broker-1.kafka.svc.cluster.local"  # docker/k8s/broker-pod.yaml's form
    csr, _ = make_csr(pod)
    sign(client, csr, pod, role="pods")
    csr, _ = make_csr("producer-0.producer.kafka.svc.cluster.local")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        sign(client, csr, "producer-0.producer.kafka.svc.cluster.local", role="pods")
    uid_client = hvac.Client(url=vault_double.url, timeout=5)
    uid_client.auth.kubernetes.login("by-uid", "jwt-u")
    uid_entity = vault_double.entity_for(uid_client.token)
    assert uid_entity is not None
    assert uid_entity.aliases[0].name == uid_entity.aliases[0].metadata["service_account_uid"]


@pytest.mark.parametrize("template", [
    "{{identity.groups.names.kafka.name}}.kafka.test",
    "{{identity.entity.metadata.host}}.kafka.test",
    "{{time.now}}.kafka.test",
])
def test_a_template_the_double_does_not_model_fails_loudly(
    vault_double: VaultDouble, template: str
) -> None:
    client = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    with pytest.raises(hvac.exceptions.InternalServerError) as exc:
        ensure_role(client, "tpl", allowed_domains=[template], allowed_domains_template=True)
    assert "does not model" in errors_of(exc)[0]


def test_a_template_vault_cannot_populate_allows_nothing(vault_double: VaultDouble) -> None:
    vault_double.add_approle("p", "s", ["signer"], role_name="producer")
    vault_double.add_policy("signer", ["pki_root_a/sign/tpl"])
    root = hvac.Client(url=vault_double.url, token=vault_double.root_token, timeout=5)
    accessor = vault_double.auth_accessor("approle")
    ensure_role(root, "tpl", allowed_domains=[
        "{{identity.entity.aliases.auth_approle_nothere.name}}.kafka.test",
        "{{identity.entity.aliases." + accessor + ".metadata.absent}}.kafka.test",
        "{{identity.entity.name", "{{identity.entity.bogus}}"],
        allowed_domains_template=True, allow_subdomains=True)
    client = hvac.Client(url=vault_double.url, timeout=5)
    client.auth.approle.login("p", "s")
    for name in ("producer.kafka.test", "x.kafka.test", "kafka.test"):
        csr, _ = make_csr(name)
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            sign(client, csr, name, role="tpl")
        assert errors_of(exc) == [f"common name {name} not allowed by this role"]


# ----------------------------------------------------------------------------- multi-issuer mounts
# Vault 1.11+ (builtin/logical/pki/path_manage_issuers.go issuers/generate/root/<type>,
# path_fetch_issuers.go issuers + issuer/<ref>[/json], path_config_ca.go config/issuers,
# path_issue_sign.go issuer/<ref>/sign/<role>, issuing/issuers.go ResolveIssuerReference).

ISSUERS_MOUNT = "pki_issuers_test"


def _issuer_mount(target: VaultTarget) -> hvac.Client:
    """A fresh PKI mount without a CA, with the ``kafka`` role (Vault 1.11+ layout)."""
    client = target.client()
    if f"{ISSUERS_MOUNT}/" in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.disable_secrets_engine(ISSUERS_MOUNT)
    client.sys.enable_secrets_engine("pki", path=ISSUERS_MOUNT, config={"max_lease_ttl": "87600h"})
    ensure_role(client, "kafka", mount=ISSUERS_MOUNT)
    return client


def _generate(client: hvac.Client, name: str, cn: str) -> dict[str, Any]:
    response = client.write_data(f"{ISSUERS_MOUNT}/issuers/generate/root/internal",
                                 data={"common_name": cn, "issuer_name": name, "key_type": "ec",
                                       "ttl": "87600h"})
    return dict(response["data"])


def test_issuers_generate_list_read_and_default(vault_versioned: VaultTarget) -> None:
    client = _issuer_mount(vault_versioned)
    if not vault_versioned.profile.multi_issuer:
        with pytest.raises(hvac.exceptions.InvalidPath):  # 404 (FIELD-NOTES, Vault 1.7.10)
            client.adapter.list(f"/v1/{ISSUERS_MOUNT}/issuers")
        return
    a = _generate(client, "root-a", "Kafka Root A")
    b = _generate(client, "root-b", "Kafka Root B")
    assert (a["issuer_name"], b["issuer_name"]) == ("root-a", "root-b")
    listed = client.list(f"{ISSUERS_MOUNT}/issuers")["data"]
    assert set(listed["keys"]) == {a["issuer_id"], b["issuer_id"]}
    info = listed["key_info"]
    assert info[a["issuer_id"]]["issuer_name"] == "root-a" and info[a["issuer_id"]]["is_default"]
    assert not info[b["issuer_id"]]["is_default"], "the first issuer stays the default"
    by_name = client.read(f"{ISSUERS_MOUNT}/issuer/root-b/json")["data"]
    by_id = client.read(f"{ISSUERS_MOUNT}/issuer/{b['issuer_id']}")["data"]
    assert by_name["issuer_id"] == by_id["issuer_id"] == b["issuer_id"]
    cert = load(by_name["certificate"])
    assert cert.subject.rfc4514_string() == "CN=Kafka Root B"
    assert [load(p) for p in by_name["ca_chain"]] == [cert]
    config = client.read(f"{ISSUERS_MOUNT}/config/issuers")["data"]
    assert config["default"] == a["issuer_id"]
    client.write_data(f"{ISSUERS_MOUNT}/config/issuers", data={"default": "root-b"})
    assert client.read(f"{ISSUERS_MOUNT}/config/issuers")["data"]["default"] == b["issuer_id"]
    assert load(client.secrets.pki.read_ca_certificate(mount_point=ISSUERS_MOUNT)) == cert


def test_issuer_names_vault_refuses(vault_versioned: VaultTarget) -> None:
    client = _issuer_mount(vault_versioned)
    if not vault_versioned.profile.multi_issuer:
        return
    _generate(client, "root-a", "Kafka Root A")
    for name, message in (("root-a", "issuer name already in use"),
                          ("default", "reserved keyword 'default' can not be used as issuer name"),
                          ("root a", "issuer name contained invalid characters")):
        with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
            _generate(client, name, "Kafka Root X")
        assert errors_of(exc) == [message]


def test_sign_by_issuer_reference_and_by_the_roles_issuer_ref(
    vault_versioned: VaultTarget,
) -> None:
    client = _issuer_mount(vault_versioned)
    if not vault_versioned.profile.multi_issuer:
        return
    _generate(client, "root-a", "Kafka Root A")
    b = _generate(client, "root-b", "Kafka Root B")
    csr, _ = make_csr(BROKER)

    def issuer_of(response: dict[str, Any]) -> str:
        return load(response["data"]["certificate"]).issuer.rfc4514_string()

    for ref in ("root-b", b["issuer_id"]):
        signed = client.write_data(f"{ISSUERS_MOUNT}/issuer/{ref}/sign/kafka",
                                   data={"csr": csr, "common_name": BROKER})
        assert issuer_of(signed) == "CN=Kafka Root B"
        assert signed["data"]["issuing_ca"] == signed["data"]["ca_chain"][0]
    assert issuer_of(sign(client, csr, mount=ISSUERS_MOUNT)) == "CN=Kafka Root A", "default"
    ensure_role(client, "kafka", mount=ISSUERS_MOUNT, issuer_ref="root-b")
    assert issuer_of(sign(client, csr, mount=ISSUERS_MOUNT)) == "CN=Kafka Root B", "issuer_ref"


def test_an_unknown_issuer_reference(vault_versioned: VaultTarget) -> None:
    """ResolveIssuerReference's UserError is returned as an error, not a response: a 500
    (sdk/logical/response_util.go), wrapped by request_handling.go's multierror."""
    client = _issuer_mount(vault_versioned)
    if not vault_versioned.profile.multi_issuer:
        return
    _generate(client, "root-a", "Kafka Root A")
    csr, _ = make_csr(BROKER)
    unknown = "unable to find PKI issuer for reference: root-z"
    with pytest.raises(hvac.exceptions.InternalServerError) as exc:
        client.read(f"{ISSUERS_MOUNT}/issuer/root-z/json")
    assert errors_of(exc) == [f"1 error occurred:\n\t* {unknown}\n\n"]
    with pytest.raises(hvac.exceptions.InternalServerError) as exc:
        client.write_data(f"{ISSUERS_MOUNT}/issuer/root-z/sign/kafka", data={"csr": csr})
    assert errors_of(exc) == [
        f"1 error occurred:\n\t* could not fetch the CA certificate (was one set?): {unknown}\n\n"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        client.write_data(f"{ISSUERS_MOUNT}/config/issuers", data={"default": "root-z"})
    assert unknown in errors_of(exc)[0]


def test_add_issuer_from_python(vault_double: VaultDouble) -> None:
    vault_double.add_mount("pki", with_root=False)
    a_id = vault_double.add_issuer("pki", "root-a")
    vault_double.add_issuer("pki", "root-b")
    assert vault_double.ca_cert("pki:root-a").subject.rfc4514_string() == "CN=Kafka Root A"
    assert vault_double.ca_cert(f"pki:{a_id}") == vault_double.ca_cert("pki")
    vault_double.set_default_issuer("pki", "root-b")
    assert vault_double.ca_cert("pki") == vault_double.ca_cert("pki:root-b")
    with pytest.raises(KeyError):
        vault_double.ca_cert("pki:root-z")
    with VaultDouble(version="1.7") as old, pytest.raises(ValueError, match="multi-issuer"):
        old.add_issuer("pki_root_a", "root-x")
