"""Pure logic of renewal timing and configuration loading."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import cli
from sidecar.config import AuthManagerConfig, load_config, reference
from sidecar.keys import build_csr, generate_private_key, parse_subject
from sidecar.manifest import Manifest
from sidecar.renewal import (
    Desired,
    Identity,
    RetryPacer,
    backoff_delay,
    renewal_reason,
    renewal_time,
)
from sidecar.settings import ConfigError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@given(hours=st.integers(1, 24 * 90), fraction=st.floats(0.1, 0.8),
       jitter=st.floats(0, 0.15), unit=st.floats(0, 0.999))
def test_renewal_time_is_within_lifetime_and_after_fraction(hours: int, fraction: float,
                                                            jitter: float, unit: float) -> None:
    not_after = T0 + dt.timedelta(hours=hours)
    at = renewal_time(T0, not_after, fraction, jitter, unit)
    lifetime = not_after - T0
    assert T0 + lifetime * fraction <= at + dt.timedelta(microseconds=1)
    assert at < not_after
    assert at <= T0 + lifetime * (fraction + jitter) + dt.timedelta(microseconds=1)


def test_default_renewal_is_two_thirds() -> None:
    at = renewal_time(T0, T0 + dt.timedelta(hours=24), 2 / 3, 0.0, 0.5)
    assert at == T0 + dt.timedelta(hours=16)


@given(attempt=st.integers(0, 100), unit=st.floats(0, 1))
def test_backoff_is_capped_and_grows(attempt: int, unit: float) -> None:
    delay = backoff_delay(attempt, 1.0, 300.0, unit)
    assert 0.5 <= delay <= 300.0
    assert backoff_delay(attempt + 1, 1.0, 300.0, 0.0) >= backoff_delay(attempt, 1.0, 300.0, 0.0)


PHASE_1 = Desired("pki_root_a", ("pki_root_a", "pki_root_b"), "r1", 1)
PHASE_2 = Desired("pki_root_b", ("pki_root_a", "pki_root_b"), "r1", 2)


def test_a_permanent_refusal_holds_that_request_for_backoff_max() -> None:
    pacer = RetryPacer(initial=1.0, maximum=300.0)
    delay = pacer.failed(True, PHASE_1, now=100.0, random_unit=0.5)
    assert delay == 225.0, "at once between half and all of backoff_max"
    assert pacer.hold(PHASE_1, 100.0) == 225.0
    assert pacer.hold(PHASE_1, 300.0) == 25.0, "however often the loop wakes before"
    same_material = dataclasses.replace(PHASE_1, rotation_id="r2", phase=0)
    assert pacer.hold(same_material, 300.0) == 25.0, "the same request to Vault"
    assert pacer.hold(PHASE_1, 325.0) == 0.0
    assert pacer.hold(PHASE_2, 100.0) == 0.0, "another signer: Vault has not answered it yet"
    trust_only = Desired("pki_root_a", ("pki_root_b",))
    assert pacer.hold(trust_only, 100.0) == 0.0, "another trust set: another request too"


def test_a_transient_failure_holds_every_request() -> None:
    pacer = RetryPacer(initial=1.0, maximum=300.0)
    assert pacer.failed(False, PHASE_1, now=0.0, random_unit=1.0) == 1.0
    assert pacer.hold(PHASE_2, 0.5) == 0.5, "Vault or the network failed, whatever was asked"
    assert pacer.failed(False, PHASE_2, now=1.0, random_unit=1.0) == 2.0, "grows"
    assert pacer.hold(PHASE_1, 2.0) == 1.0
    pacer.succeeded()
    assert pacer.hold(PHASE_1, 2.0) == 0.0
    assert pacer.failed(False, PHASE_1, now=2.0, random_unit=1.0) == 1.0, "from initial again"


def test_a_pass_failing_before_its_attempt_holds_nothing_back() -> None:
    """A Consul error or a missing record: the wake-up that fixes it is followed at once,
    while the delay still grows; an earlier attempt's hold stays."""
    pacer = RetryPacer(initial=1.0, maximum=300.0)
    assert pacer.failed(False, None, now=0.0, random_unit=1.0) == 1.0
    assert pacer.hold(PHASE_1, 0.0) == 0.0
    assert pacer.failed(True, PHASE_1, now=0.0, random_unit=1.0) == 300.0
    assert pacer.failed(False, None, now=10.0, random_unit=1.0) == 4.0
    assert pacer.hold(PHASE_1, 10.0) == 290.0


IDENTITY = Identity(subject="CN=b1.kafka.test,OU=kafka,O=Example", dns_sans=("b1.kafka.test",),
                    ip_sans=("127.0.0.1",), key_type="ec-p256")
DESIRED = Desired(signer="pki_root_a", trust=("pki_root_a",))
MANIFEST = Manifest(generation=3, created_at=T0.isoformat(), signer="pki_root_a",
                    trust=("pki_root_a",), serial="01:02", subject=IDENTITY.subject,
                    issuer="CN=Root A", sans=("b1.kafka.test", "127.0.0.1"),
                    not_before=T0.isoformat(),
                    not_after=(T0 + dt.timedelta(hours=24)).isoformat(),
                    key_type="ec-p256", files={})


@pytest.mark.parametrize(("change", "expected"), [
    ({}, None),
    ({"not_after": T0.isoformat()}, "expired"),
    ({"subject": "CN=other"}, "subject changed"),
    ({"sans": ("b1.kafka.test",)}, "SANs changed"),
    ({"key_type": "rsa-2048"}, "key type changed"),
    ({"signer": "pki_root_b"}, "signer changed"),
    ({"trust": ("pki_root_a", "pki_root_b")}, "trust set changed"),
])
def test_renewal_reason(change: dict[str, object], expected: str | None) -> None:
    manifest = dataclasses.replace(MANIFEST, **change)  # type: ignore[arg-type]
    reason = renewal_reason(manifest, DESIRED, IDENTITY, T0 + dt.timedelta(hours=1), None)
    assert (reason is None) if expected is None else (expected in (reason or ""))


def test_renewal_reason_missing_and_due() -> None:
    assert renewal_reason(None, DESIRED, IDENTITY, T0, None) == "no material on the volume"
    due = renewal_reason(MANIFEST, DESIRED, IDENTITY, T0 + dt.timedelta(hours=17),
                         T0 + dt.timedelta(hours=16))
    assert due is not None and "renewal time" in due


def test_subject_round_trips_through_csr() -> None:
    dn = "CN=broker-1.kafka.test,OU=kafka,O=Example,C=US"
    assert parse_subject(dn).rfc4514_string() == dn
    csr = build_csr(generate_private_key("ec-p256"), parse_subject(dn), ["a.kafka.test"],
                    ["10.0.0.1"])
    assert csr.is_signature_valid and csr.subject.rfc4514_string() == dn


def base_env(tmp_path: Path) -> dict[str, str]:
    return {"PKI_SUBJECT": "CN=b1.kafka.test,OU=kafka,O=Example",
            "PKI_OUTPUT_DIR": str(tmp_path), "PKI_STORE_PASSWORD_FILE": str(tmp_path / "pw"),
            "VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "t", "PKI_ROOT": "pki_root_a"}


def test_precedence_flag_over_env_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('ttl = "12h"\nkey-type = "rsa-2048"\ndns_sans = ["x.kafka.test"]\n')
    env = base_env(tmp_path) | {"PKI_CONFIG": str(toml), "PKI_KEY_TYPE": "ec-p384"}
    config, once = load_config(["--renew-fraction", "0.5", "--once"], env)
    assert once and config.renew_fraction == 0.5
    assert config.key_type == "ec-p384"  # env beats TOML
    assert config.ttl == "12h" and config.dns_sans == ["x.kafka.test"]  # TOML beats default
    assert config.vault_token == "t" and config.common_name == "b1.kafka.test"


@pytest.mark.parametrize(("override", "message"), [
    ({"PKI_KEY_TYPE": "dsa"}, "invalid value for PKI_KEY_TYPE"),
    ({"PKI_RENEW_FRACTION": "1.5"}, "renew_fraction"),
    ({"PKI_RENEW_FRACTION": "abc"}, "invalid value for PKI_RENEW_FRACTION"),
    ({"PKI_SUBJECT": "OU=kafka"}, "subject"),
    ({"PKI_SUBJECT": "CN=x,BOGUS=1"}, "subject"),
    ({"PKI_IP_SANS": "not-an-ip"}, "ip_sans"),
    ({"PKI_ROOT": None}, "root"),
    ({"VAULT_TOKEN": None, "PKI_VAULT_AUTH": "token"}, "vault_token"),
    ({"PKI_VAULT_AUTH": "approle"}, "vault_role_id"),
    ({"PKI_SESSION_TTL": "5"}, "session_ttl"),
    ({"PKI_LISTEN": "nowhere"}, "listen"),
    ({"PKI_TTL": "banana"}, "invalid value for ttl"),
    ({"PKI_TTL": "0h"}, "invalid value for ttl"),
    ({"PKI_TTL": "-5m"}, "invalid value for ttl"),
])
def test_invalid_configuration_names_the_setting(tmp_path: Path,
                                                 override: dict[str, str | None],
                                                 message: str) -> None:
    merged = base_env(tmp_path) | override
    env = {k: v for k, v in merged.items() if v is not None}  # None: unset
    with pytest.raises(ConfigError, match=message) as info:
        load_config([], env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ttl", ["24h", "90m", "1h30m", "3600", "7d", "0.5h"])
def test_vault_durations_are_accepted(tmp_path: Path, ttl: str) -> None:
    assert load_config([], base_env(tmp_path) | {"PKI_TTL": ttl})[0].ttl == ttl


@pytest.mark.parametrize(("override", "message"), [
    ({}, "invalid value for store_password_file: cannot read .*pw: No such file"),
    ({"PKI_VAULT_TOKEN_FILE": "{tmp}/token", "VAULT_TOKEN": ""},
     "invalid value for vault_token_file: cannot read"),
    ({"VAULT_CACERT": "{tmp}/missing-ca.pem"}, "invalid value for vault_cacert: cannot read"),
    ({"PKI_VAULT_AUTH": "approle", "PKI_VAULT_ROLE_ID": "r",
      "PKI_VAULT_SECRET_ID_FILE": "{tmp}/empty"},
     "invalid value for vault_secret_id_file: .*empty"),
    ({"PKI_VAULT_AUTH": "kubernetes", "PKI_VAULT_KUBERNETES_ROLE": "kafka",
      "PKI_VAULT_KUBERNETES_JWT_FILE": "{tmp}"}, "invalid value for vault_kubernetes_jwt_file: "
     ".* is a directory"),
])
def test_unreadable_files_fail_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        override: dict[str, str], message: str) -> None:
    (tmp_path / "empty").write_text("\n")
    if override:
        (tmp_path / "pw").write_text("secret\n")
    env = base_env(tmp_path) | {k: v.format(tmp=tmp_path) for k, v in override.items()}
    with mock.patch.dict(os.environ, env, clear=True):
        assert cli.main(["--once"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err


def test_missing_required_setting_and_unknown_toml_key(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    del env["PKI_OUTPUT_DIR"]
    with pytest.raises(ConfigError, match="missing required setting output_dir"):
        load_config([], env)
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting in .*no_such_setting"):
        load_config(["--config", str(bad)], base_env(tmp_path))


def test_reference_covers_every_setting() -> None:
    rows = reference()
    assert len(rows) == len(dataclasses.fields(AuthManagerConfig))
    assert ("--vault-addr", "VAULT_ADDR") in [(r[0], r[1]) for r in rows]
