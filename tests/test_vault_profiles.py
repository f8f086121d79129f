"""The texts each supported server answers with (tests/doubles/vault/profiles.py), checked
against the server under test: OpenBao by default, the one at VAULT_ADDR when set.

The product never reads these texts (it classifies by status code,
test_auth_manager.py::test_vault_refusals_are_classified_by_status); they are recorded so a
difference between servers is data, not a surprise in a failing test.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import hvac
import hvac.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.doubles.vault.profiles import OPENBAO_2, VAULT_1, profile_for
from tests.vault_setup import KAFKA_ROLE_PARAMS, VaultTarget

BROKER = "broker-1.kafka.test"


def _csr(ips: Sequence[str] = ()) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(BROKER)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER)]))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _errors(exc: pytest.ExceptionInfo[hvac.exceptions.VaultError]) -> list[str]:
    return list(exc.value.errors or [])


def test_issue_on_a_key_type_any_role(vault: VaultTarget) -> None:
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        vault.client().secrets.pki.generate_certificate("kafka", BROKER, mount_point="pki_root_a")
    assert _errors(exc) == [vault.profile.key_type_any_issue]


def test_ip_sans_in_a_csr_on_a_role_without_them(vault: VaultTarget) -> None:
    client = vault.client()
    client.secrets.pki.create_or_update_role(
        "kafka-noip", extra_params={**KAFKA_ROLE_PARAMS, "allow_ip_sans": False},
        mount_point="pki_root_a")
    with pytest.raises(hvac.exceptions.InvalidRequest) as exc:
        client.write_data("pki_root_a/sign/kafka-noip", data={"csr": _csr(["10.0.0.7"])})
    assert _errors(exc) == [vault.profile.ip_sans_in_csr]


@pytest.mark.parametrize("token", ["unknown", "with a namespace suffix"])
def test_unknown_tokens(vault: VaultTarget, token: str) -> None:
    profile = vault.profile
    value = profile.token_prefix + ("A1b2C3d4E5f6G7h8I9j0K1l2" if token == "unknown"
                                    else "not-a.real-token")
    with pytest.raises(hvac.exceptions.Forbidden) as exc:
        vault.client(token=value).auth.token.lookup_self()
    assert _errors(exc) == list(profile.unknown_token)


def test_a_token_its_policy_does_not_allow(vault: VaultTarget) -> None:
    token = vault.client().auth.token.create_orphan(policies=["default"], ttl="5m")
    user = vault.client(token=token["auth"]["client_token"])
    with pytest.raises(hvac.exceptions.Forbidden) as exc:
        user.write_data("pki_root_a/sign/kafka", data={"csr": _csr()})
    assert _errors(exc) == list(vault.profile.not_allowed)


def test_an_unknown_issuer(vault: VaultTarget) -> None:
    with pytest.raises(hvac.exceptions.InternalServerError) as exc:
        vault.client().read("pki_root_a/issuer/root-z/json")
    assert _errors(exc) == vault.profile.unknown_issuer_errors("root-z")


def test_the_reported_version_picks_the_profile() -> None:
    assert profile_for("2.7.2") is OPENBAO_2
    assert profile_for("v1.17.3") is VAULT_1 and profile_for("1.11.0") is VAULT_1
    with pytest.raises(ValueError, match=r"older than the supported 1\.11"):
        profile_for("1.10.9")
    with pytest.raises(ValueError, match="not a Vault version"):
        profile_for("latest")
