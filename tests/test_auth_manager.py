"""The auth manager end to end against Vault (the double, or a real Vault)."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import hvac
import jks
import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from sidecar import layout
from sidecar.health import HealthServer
from sidecar.keys import (
    build_csr,
    csr_pem,
    generate_private_key,
    parse_subject,
    private_key_pkcs8_pem,
)
from sidecar.manager import StaticSource
from sidecar.material import certificate_pem, parse_certificates
from sidecar.renewal import Desired
from sidecar.vault import TokenAuth, VaultError, VaultPKI
from tests import vault_setup
from tests.console import run_script
from tests.consul_setup import consul_client
from tests.doubles.consul import ConsulDouble
from tests.faults import VOLUME_WRITE_ERRORS, fail_volume_writes
from tests.java_tools import java_mtls_server, mtls_exchange
from tests.manager_kit import (
    PASSWORD,
    SUBJECT,
    make_config,
    make_manager,
    metric,
    paced_manager,
)
from tests.pki import LocalRoot
from tests.vault_setup import FaultyVault, VaultTarget

DESIRED_A = Desired(signer="pki_root_a", trust=("pki_root_a",))
DESIRED_AB = Desired(signer="pki_root_a", trust=("pki_root_a", "pki_root_b"))


def env_for(vault: VaultTarget, volume: Path, secrets: Path) -> dict[str, str]:
    pw = secrets / "pw"
    pw.write_text(PASSWORD)
    pw.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PKI_", "CONSUL_"))}
    env.update({"VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.token, "PKI_SUBJECT": SUBJECT,
                "PKI_DNS_SANS": "broker-1.kafka.test,localhost", "PKI_IP_SANS": "127.0.0.1",
                "PKI_OUTPUT_DIR": str(volume), "PKI_STORE_PASSWORD_FILE": str(pw),
                "PKI_ROOT": "pki_root_a", "PKI_TRUST": "pki_root_a,pki_root_b",
                "PKI_TTL": "1h", "PKI_LISTEN": ""})
    return env


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_once_writes_a_complete_generation(vault: VaultTarget, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    result = run_cli(["--once"], env_for(vault, volume, tmp_path))
    assert result.returncode == 0, result.stderr
    current = volume / "current"
    manifest = json.loads((current / layout.MANIFEST).read_text())
    assert manifest["signer"] == "pki_root_a"
    assert manifest["trust"] == ["pki_root_a", "pki_root_b"]
    assert manifest["subject"] == SUBJECT
    cert = parse_certificates((current / layout.CERT_PEM).read_bytes(), "cert")[0]
    root_a = parse_certificates(vault.ca_pem("pki_root_a"), "root")[-1]
    assert cert.issuer == root_a.subject
    trusted = parse_certificates((current / layout.CA_BUNDLE_PEM).read_bytes(), "bundle")
    assert {c.subject for c in trusted} >= {root_a.subject}
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    issued = [e for e in events if e["event"] == "certificate_issued"]
    assert issued and issued[0]["serial"] == manifest["serial"]
    assert issued[0]["not_after"] == manifest["not_after"]
    output = result.stdout + result.stderr
    assert PASSWORD not in output and "PRIVATE KEY" not in output
    assert vault.token not in output


def test_once_fails_clearly_when_vault_is_down(faulty_vault: FaultyVault,
                                               tmp_path: Path) -> None:
    target = faulty_vault.target()
    faulty_vault.set_down(True)
    env = env_for(target, tmp_path / "v", tmp_path) | {"PKI_ONCE_TIMEOUT": "1",
                                                       "PKI_BACKOFF_INITIAL": "0.2"}
    result = run_cli(["--once"], env)
    assert result.returncode == 1
    assert "cannot connect" in result.stderr and "once_failed" in result.stderr
    assert "once_retrying" in result.stderr, "transient failures are retried first"
    assert not (tmp_path / "v" / "current").exists()


def test_invalid_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PKI_SUBJECT": "CN=x.kafka.test"}
    result = run_cli([], env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "configuration error: missing required setting" in result.stderr


def test_vault_material_is_served_by_java(vault: VaultTarget, tmp_path: Path) -> None:
    config = make_config(vault.url, vault.token, tmp_path / "volume", tmp_path)
    manager, _, _ = make_manager(config)
    manager.reconcile(DESIRED_AB)
    current = tmp_path / "volume" / "current"
    ca_bundle = current / layout.CA_BUNDLE_PEM
    client = vault.client()
    clients = {}
    for mount in ("pki_root_a", "pki_root_b"):  # a client signed by each trusted root
        key = generate_private_key("ec-p256")
        name = f"client-{mount[-1]}.kafka.test"
        csr = build_csr(key, parse_subject(f"CN={name}"), [name], [])
        signed = client.secrets.pki.sign_certificate(
            name=vault.role, csr=csr_pem(csr), common_name=name, mount_point=mount)
        cert_path, key_path = tmp_path / f"{mount}.pem", tmp_path / f"{mount}.key"
        cert_path.write_text(signed["data"]["certificate"])
        key_path.write_bytes(private_key_pkcs8_pem(key))
        clients[mount] = (cert_path, key_path)
    stranger = LocalRoot("untrusted")
    key = generate_private_key("ec-p256")
    (tmp_path / "x.pem").write_bytes(certificate_pem(stranger.sign(key, "CN=x.kafka.test")))
    (tmp_path / "x.key").write_bytes(private_key_pkcs8_pem(key))
    pw = tmp_path / "store-password"
    for ext, kind in (("p12", "PKCS12"), ("jks", "JKS")):
        with java_mtls_server(current / f"keystore.{ext}", kind, current / f"truststore.{ext}",
                              kind, pw) as port:
            for mount, (cert_path, key_path) in clients.items():
                assert mtls_exchange(port, cert_path, key_path, ca_bundle).startswith(
                    f"OK CN=client-{mount[-1]}.kafka.test")
            with pytest.raises((ssl.SSLError, ConnectionError)):
                mtls_exchange(port, tmp_path / "x.pem", tmp_path / "x.key", ca_bundle)


def test_renews_at_its_time_and_when_configuration_changes(vault: VaultTarget,
                                                           tmp_path: Path) -> None:
    clock = {"now": dt.datetime.now(dt.UTC)}
    config = make_config(vault.url, vault.token, tmp_path / "volume", tmp_path)
    manager, metrics, log = make_manager(config)
    manager.now = lambda: clock["now"]
    first = manager.reconcile(DESIRED_A)
    assert manager.reconcile(DESIRED_A).serial == first.serial, "nothing due: no renewal"
    clock["now"] = manager.renew_at(first) + dt.timedelta(seconds=1)
    second = manager.reconcile(DESIRED_A)
    assert second.serial != first.serial and second.generation == first.generation + 1
    third = manager.reconcile(DESIRED_AB)  # the trust set changed
    assert third.trust == ("pki_root_a", "pki_root_b")
    reasons = [e["reason"] for e in log.named("renewal_started")]
    assert reasons[0] == "no material on the volume"
    assert "renewal time" in reasons[1] and "trust set changed" in reasons[2]
    assert metric(metrics, "pki_renewals_total", result="ok") == 3
    renew_at = manager.renew_at(first)
    lifetime = (dt.datetime.fromisoformat(first.not_after)
                - dt.datetime.fromisoformat(first.not_before))
    start = dt.datetime.fromisoformat(first.not_before)
    assert start + lifetime * (2 / 3) <= renew_at <= start + lifetime * (2 / 3 + 0.05)


def test_unreadable_material_is_replaced_on_start(vault: VaultTarget, tmp_path: Path) -> None:
    config = make_config(vault.url, vault.token, tmp_path / "volume", tmp_path)
    manager, _, log = make_manager(config)
    first = manager.reconcile(DESIRED_A)
    (tmp_path / "volume" / "current" / layout.KEYSTORE_JKS).write_bytes(b"garbage")
    restarted, _, log = make_manager(config)
    second = restarted.reconcile(DESIRED_A)
    assert second.serial != first.serial
    assert log.named("volume_unreadable")


FAULTS = {
    "down": (lambda v: v.set_down(True), "cannot connect", "error_unavailable"),
    "sealed": (lambda v: v.set_sealed(True), "sealed", "error_sealed"),
    "server_error": (lambda v: v.fail_next(5, 500, ["internal error"]), "internal error",
                     "error_error"),
    "rate_limited": (lambda v: v.fail_next(5, 429, ["rate limit quota exceeded"]),
                     "rate limit", "error_error"),
    "malformed": (lambda v: v.corrupt_next_certificate(2), "malformed certificate",
                  "error_malformed_response"),
    "wrong_key": (lambda v: v.mismatched_key_next(2), "does not match the private key",
                  "error_bad_material"),
    "expired": (lambda v: v.expired_next(2), "expired", "error_bad_material"),
}

#: Refusals retrying cannot fix: retried only at backoff_max, labelled permanent.
PERMANENT_FAULTS = {
    "cn_not_allowed": (lambda v: v.fail_next(5, 400, ["common name app-1 not allowed by this "
                                                      "role"]),
                       "not allowed by this role", "error_permanent_invalid_request"),
    "forbidden": (lambda v: v.fail_next(20, 403, ["permission denied"]), "permission denied",
                  "error_permanent_forbidden"),
    "no_mount": (lambda v: v.fail_next(5, 404, ['no handler for route "pki_root_b/sign/kafka". '
                                               'route entry not found.']),
                 "no handler for route", "error_permanent_not_found"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_vault_failure_keeps_previous_generation(faulty_vault: FaultyVault, tmp_path: Path,
                                                 fault: str) -> None:
    inject, message, result = FAULTS[fault]
    manager, metrics, log, clock = paced_manager(faulty_vault.url, faulty_vault.root_token,
                                                 tmp_path)
    first = manager.reconcile(DESIRED_A)
    before = {p.name: p.read_bytes() for p in (tmp_path / "volume" / "current").iterdir()}
    inject(faulty_vault)
    source = StaticSource("pki_root_b", ["pki_root_a", "pki_root_b"], threading.Event())
    delay = manager.step(source)
    assert 1.0 <= delay <= 2.0, "first retry after backoff_initial (with jitter)"
    requests = len(faulty_vault.request_log)
    clock.advance(delay / 2)  # woken early (the record, the acknowledgement): held back
    assert manager.step(source) == pytest.approx(delay / 2)
    assert len(faulty_vault.request_log) == requests, "nothing asked of Vault"
    clock.advance(delay / 2)
    assert manager.step(source) >= 2.0, "backoff grows"
    errors = log.named("renewal_failed")
    assert errors and message in errors[0]["error"], errors
    assert errors[0]["kept_generation"] == first.generation
    assert errors[0]["permanent"] is False
    assert metric(metrics, "pki_renewals_total", result=result) == 2
    after = {p.name: p.read_bytes() for p in (tmp_path / "volume" / "current").iterdir()}
    assert after == before
    ready, detail = manager.readiness()
    assert ready and "permanent" not in detail


@pytest.mark.parametrize("fault", list(PERMANENT_FAULTS))
def test_permanent_vault_refusal_is_retried_slowly(faulty_vault: FaultyVault, tmp_path: Path,
                                                   fault: str) -> None:
    inject, message, result = PERMANENT_FAULTS[fault]
    manager, metrics, log, clock = paced_manager(faulty_vault.url, faulty_vault.root_token,
                                                 tmp_path)
    first = manager.reconcile(DESIRED_A)
    inject(faulty_vault)
    source = StaticSource("pki_root_b", ["pki_root_a", "pki_root_b"], threading.Event())
    delay = manager.step(source)
    assert 30.0 <= delay <= 60.0, "at once the slow back-off: backoff_max"
    errors = log.named("renewal_failed")
    assert errors and message in errors[0]["error"] and errors[0]["permanent"] is True
    assert errors[0]["kind"] == result.removeprefix("error_")
    assert errors[0]["kept_generation"] == first.generation
    assert metric(metrics, "pki_renewals_total", result=result) == 1
    assert metric(metrics, "pki_errors_total", kind=result.removeprefix("error_")) == 1
    ready, detail = manager.readiness()
    assert ready, "the kept generation is still valid"
    assert "failing permanently" in detail and message in detail
    faulty_vault.reset_faults()  # the role is fixed: the pass after the back-off succeeds
    clock.advance(delay - 1.0)
    assert manager.step(source) == pytest.approx(1.0), "held back until backoff_max is over"
    assert "failing permanently" in manager.readiness()[1]
    clock.advance(1.0)
    manager.step(source)
    assert "permanent" not in manager.readiness()[1]
    if fault == "forbidden":  # one fresh login was tried before calling it permanent
        assert [r for r in faulty_vault.request_log if r[1].endswith("lookup-self")]


def test_transient_after_permanent_backs_off_from_the_start(faulty_vault: FaultyVault,
                                                            tmp_path: Path) -> None:
    manager, _, _, clock = paced_manager(faulty_vault.url, faulty_vault.root_token,
                                                 tmp_path)
    manager.reconcile(DESIRED_A)
    source = StaticSource("pki_root_b", ["pki_root_a", "pki_root_b"], threading.Event())
    faulty_vault.fail_next(1, 400, ["common name app-1 not allowed by this role"])
    delay = manager.step(source)
    assert delay >= 30.0
    clock.advance(delay)
    faulty_vault.fail_next(1, 503, ["Vault is sealed"])
    delay = manager.step(source)
    assert delay < 30.0 and "permanent" not in manager.readiness()[1]


ONCE_REFUSALS = {
    "cn_not_allowed": ({"PKI_SUBJECT": "CN=app-1,OU=kafka,O=Example", "PKI_DNS_SANS": "",
                        "PKI_IP_SANS": ""}, "not allowed by this role", "invalid_request"),
    "unknown_role": ({"PKI_PKI_ROLE": "no-such-role"}, "unknown role", "invalid_request"),
    "unknown_mount": ({"PKI_ROOT": "pki_nope", "PKI_TRUST": "pki_nope"}, "no handler",
                      "not_found"),
    "no_policy": ({"VAULT_TOKEN": "policy:default"}, "permission denied", "forbidden"),
}


@pytest.mark.parametrize("case", list(ONCE_REFUSALS))
def test_once_ends_at_once_on_a_permanent_refusal(faulty_vault: FaultyVault, tmp_path: Path,
                                                  case: str) -> None:
    target = faulty_vault.target()
    env = env_for(target, tmp_path / "v", tmp_path)
    changes, message, reason = ONCE_REFUSALS[case]
    if changes.get("VAULT_TOKEN") == "policy:default":
        changes = {"VAULT_TOKEN": faulty_vault.create_token(["default"], "1h")}
    started = time.monotonic()
    result = run_script("pki-auth-manager", ["--once"], env | changes)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert seconds < 15, "not retried until once_timeout (120 s)"
    failed = [json.loads(line) for line in result.stderr.splitlines()
              if '"once_failed"' in line]
    assert len(failed) == 1 and message in failed[0]["error"], result.stderr
    assert failed[0]["kind"] == f"permanent_{reason}" and failed[0]["permanent"] is True
    assert "once_retrying" not in result.stderr
    assert not (tmp_path / "v" / "current").exists()


def test_once_refuses_a_client_asking_for_a_brokers_name(vault: VaultTarget,
                                                        tmp_path: Path) -> None:
    """Least privilege: the AppRole ``producer`` (role ``kafka-client``, its name templated on
    the AppRole) asks for the broker's DN: Vault's 400 is permanent, --once exits 2 at once
    and writes nothing; asked for its own name, the same AppRole gets a certificate."""
    target = vault
    creds = vault_setup.prepare_least_privilege(
        target, {"broker-1": "broker", "producer": "client"})
    role_id, secret_id = creds["producer"]
    (tmp_path / "secret-id").write_text(secret_id)
    env = env_for(target, tmp_path / "v", tmp_path)
    del env["VAULT_TOKEN"]
    env |= {"PKI_VAULT_AUTH": "approle", "PKI_VAULT_ROLE_ID": role_id,
            "PKI_VAULT_SECRET_ID_FILE": str(tmp_path / "secret-id"),
            "PKI_PKI_ROLE": vault_setup.CLIENT_ROLE}
    started = time.monotonic()
    result = run_script("pki-auth-manager", ["--once"], env)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 15, "not retried until once_timeout"
    failed = [json.loads(line) for line in result.stderr.splitlines()
              if '"once_failed"' in line]
    assert len(failed) == 1, result.stderr
    assert "common name broker-1.kafka.test not allowed by this role" in failed[0]["error"]
    assert failed[0]["kind"] == "permanent_invalid_request"
    assert not (tmp_path / "v" / "current").exists()
    own = env | {"PKI_SUBJECT": "CN=producer.kafka.test,OU=kafka,O=Example",
                 "PKI_DNS_SANS": "producer.kafka.test,localhost"}
    assert run_script("pki-auth-manager", ["--once"], own).returncode == 0
    assert (tmp_path / "v" / "current").exists()


@pytest.mark.parametrize(("err", "message"), VOLUME_WRITE_ERRORS)
def test_volume_write_failure_keeps_previous_generation(
        faulty_vault: FaultyVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        err: int, message: str) -> None:
    config = make_config(faulty_vault.url, faulty_vault.root_token, tmp_path / "volume",
                         tmp_path)
    manager, metrics, log = make_manager(config)
    first = manager.reconcile(DESIRED_A)
    before = {p.name: p.read_bytes() for p in (tmp_path / "volume" / "current").iterdir()}
    fail_volume_writes(monkeypatch, after=2, err=err)
    source = StaticSource("pki_root_b", ["pki_root_a", "pki_root_b"], threading.Event())
    manager.step(source)
    monkeypatch.undo()
    errors = log.named("renewal_failed")
    assert errors and message in errors[0]["error"], errors
    assert errors[0]["kept_generation"] == first.generation
    assert metric(metrics, "pki_renewals_total", result="error_volume") == 1
    after = {p.name: p.read_bytes() for p in (tmp_path / "volume" / "current").iterdir()}
    assert after == before
    assert not list((tmp_path / "volume" / "generations").glob(".tmp-*")), "half-written"
    assert manager.readiness()[0]


def test_forbidden_token_is_reported(faulty_vault: FaultyVault, tmp_path: Path) -> None:
    token = faulty_vault.create_token(["root"], "1h")
    config = make_config(faulty_vault.url, token, tmp_path / "volume", tmp_path)
    manager = make_manager(config)[0]
    manager.issuer.vault.login()
    faulty_vault.revoke_token(token)
    with pytest.raises(VaultError, match="permission denied") as info:
        manager.reconcile(DESIRED_A)
    assert info.value.reason == "forbidden"


def test_approle_logs_in_again_after_403(faulty_vault: FaultyVault, tmp_path: Path) -> None:
    faulty_vault.add_policy("pki-sign", [f"{m}/{p}" for m in ("pki_root_a", "pki_root_b")
                                         for p in ("sign/kafka", "ca_chain", "ca/pem")])
    faulty_vault.add_approle("role-1", "secret-1", ["pki-sign"], "1h")
    secret = tmp_path / "secret-id"
    secret.write_text("secret-1")
    config = make_config(faulty_vault.url, None, tmp_path / "volume", tmp_path,
                         vault_auth="approle", vault_role_id="role-1",
                         vault_secret_id_file=secret)
    manager, _, _ = make_manager(config)
    manager.issuer.vault.login()
    first_token = manager.issuer.vault._client.token
    faulty_vault.revoke_token(first_token)
    manifest = manager.reconcile(DESIRED_A)  # 403, log in again, retry
    assert manifest.signer == "pki_root_a"
    assert manager.issuer.vault._client.token != first_token
    logins = [r for r in faulty_vault.request_log if r[1].endswith("/approle/login")]
    assert len(logins) == 2
    role_file = tmp_path / "role-id"
    role_file.write_text("role-1\n")
    from_files = make_config(faulty_vault.url, None, tmp_path / "volume2", tmp_path,
                             vault_auth="approle", vault_role_id_file=role_file,
                             vault_secret_id_file=secret)
    make_manager(from_files)[0].issuer.vault.login()  # role_id read from its file


def test_kubernetes_login(faulty_vault: FaultyVault, tmp_path: Path) -> None:
    faulty_vault.add_policy("pki-sign", [f"{m}/{p}" for m in ("pki_root_a", "pki_root_b")
                                         for p in ("sign/kafka", "ca_chain", "ca/pem")])
    jwt = tmp_path / "token"
    faulty_vault.add_kubernetes_role("kafka-broker", jwt, ["pki-sign"], "1h")
    config = make_config(faulty_vault.url, None, tmp_path / "volume", tmp_path,
                         vault_auth="kubernetes", vault_kubernetes_role="kafka-broker",
                         vault_kubernetes_jwt_file=jwt)
    manager, _, _ = make_manager(config)
    manager.issuer.vault.login()
    assert manager.reconcile(DESIRED_A).generation == 1
    jwt.write_text("jwt-wrong")
    with pytest.raises(VaultError):
        make_manager(config)[0].issuer.vault.login()


def test_token_is_renewed_before_it_expires(faulty_vault: FaultyVault) -> None:
    token = faulty_vault.create_token(["root"], "30s", renewable=True)
    clock = {"t": 1000.0}
    vault = VaultPKI(faulty_vault.url, TokenAuth(token=token), clock=lambda: clock["t"])
    vault.login()
    assert vault.token_seconds_left() is not None
    vault.keep_token_alive()
    assert not [r for r in faulty_vault.request_log if r[1].endswith("renew-self")]
    clock["t"] += 25  # a third or less of the TTL left
    vault.keep_token_alive()
    assert [r for r in faulty_vault.request_log if r[1].endswith("renew-self")]


def test_issue_mode(vault: VaultTarget, tmp_path: Path) -> None:
    client = vault.client()
    client.write("pki_root_a/roles/kafka-issue", allowed_domains=["kafka.test", "localhost"],
                 allow_subdomains=True, allow_localhost=True, allow_ip_sans=True,
                 allow_bare_domains=True, key_type="ec", key_bits=256, max_ttl="72h",
                 ou=["kafka"], organization=["Example"])
    config = make_config(vault.url, vault.token, tmp_path / "volume", tmp_path,
                         pki_mode="issue", pki_role="kafka-issue")
    manager, _, _ = make_manager(config)
    manifest = manager.reconcile(DESIRED_A)
    assert manifest.key_type == "ec-p256" and manifest.subject == SUBJECT


def test_ttl_capped_by_the_role_is_logged(vault: VaultTarget, tmp_path: Path) -> None:
    """Read from the certificate, not from the server's warning."""
    config = make_config(vault.url, vault.token, tmp_path / "volume", tmp_path, ttl="100h")
    manager, _, log = make_manager(config)
    manifest = manager.reconcile(DESIRED_A)
    lifetime = (dt.datetime.fromisoformat(manifest.not_after)
                - dt.datetime.fromisoformat(manifest.not_before))
    assert lifetime <= dt.timedelta(hours=72, minutes=1), "the role's max_ttl (72h) applies"
    capped = log.named("vault_ttl_capped")
    assert len(capped) == 1, log.events
    assert capped[0]["requested"] == 100 * 3600
    assert 72 * 3600 - 120 <= capped[0]["granted"] <= 72 * 3600
    assert capped[0]["serial"] == manifest.serial
    # The server's own cap warning and the use_csr_* ones are not repeated
    assert log.named("vault_warning") == [], log.events
    manager.reconcile(DESIRED_A)  # nothing to renew: no second report for that certificate
    assert len(log.named("vault_ttl_capped")) == 1


def test_ttl_within_the_role_max_is_not_reported(vault: VaultTarget, tmp_path: Path) -> None:
    config = make_config(vault.url, vault.token, tmp_path / "volume",
                         tmp_path, ttl="72h")
    manager, _, log = make_manager(config)
    manager.reconcile(DESIRED_A)
    assert log.named("vault_ttl_capped") == [] and log.named("vault_warning") == []


def _refusal(vault: VaultPKI, call: str) -> VaultError:
    csr = csr_pem(build_csr(generate_private_key("ec-p256"),
                            parse_subject("CN=broker-1.kafka.test"), ["broker-1.kafka.test"], []))
    with pytest.raises(VaultError) as info:
        if call == "bad_ip":
            vault.issue("pki_root_a", "kafka-issue", "broker-1.kafka.test", [],
                        ["10.0.0.300"], "1h", "ec-p256")
        else:
            vault.sign(call, "kafka", csr, "broker-1.kafka.test", [], [], "1h")
    return info.value


def test_vault_refusals_are_classified_by_status(faulty_vault: FaultyVault) -> None:
    """By status code and meaning, never by text: each server's wording
    (tests/doubles/vault/profiles.py) gets the same reason, and the operator's message has no
    go-multierror wrapping."""
    target = faulty_vault.target()
    faulty_vault.add_policy("sign-only", ["pki_root_a/sign/kafka"])
    client = target.client()
    client.secrets.pki.create_or_update_role(
        "kafka-issue", extra_params={**vault_setup.KAFKA_ROLE_PARAMS, "key_type": "ec",
                                     "key_bits": 256}, mount_point="pki_root_a")
    root = VaultPKI(target.url, TokenAuth(token=target.token))

    missing = _refusal(root, "pki_nope")
    assert (missing.reason, missing.permanent) == ("not_found", True)
    assert "no handler for route" in str(missing)

    bad_ip = _refusal(root, "bad_ip")
    assert (bad_ip.reason, bad_ip.permanent) == ("invalid_request", True)
    assert "10.0.0.300" in str(bad_ip) and "is not a valid IP address" in str(bad_ip)

    denied = _refusal(VaultPKI(target.url, TokenAuth(
        token=faulty_vault.create_token(["sign-only"], "1h"))), "pki_root_b")
    assert (denied.reason, denied.permanent) == ("forbidden", True)
    assert "(permission denied)" in str(denied) and "error occurred" not in str(denied)

    malformed = faulty_vault.profile.token_prefix + "not-a.real-token"
    refused = _refusal(VaultPKI(target.url, TokenAuth(token=malformed)), "pki_root_a")
    assert (refused.reason, refused.permanent) == ("forbidden", True), str(refused)


def test_health_endpoints(vault: VaultTarget, tmp_path: Path) -> None:
    config = make_config(vault.url, vault.token, tmp_path / "volume", tmp_path)
    manager, metrics, _ = make_manager(config)
    server = HealthServer("127.0.0.1", 0, metrics.registry, healthy=lambda: (True, "ok"),
                          ready=manager.readiness).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/readyz", timeout=5)
        assert info.value.code == 503
        manager.step(StaticSource("pki_root_a", [], threading.Event()))
        with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "pki_certificate_not_after_timestamp_seconds" in text
        assert 'pki_renewals_total{result="ok"} 1.0' in text
        assert "pki_vault_request_duration_seconds_bucket" in text
    finally:
        server.stop()


def test_hvac_client_used_over_a_real_socket(faulty_vault: FaultyVault, tmp_path: Path) -> None:
    config = make_config(faulty_vault.url, faulty_vault.root_token, tmp_path / "v", tmp_path)
    manager, _, _ = make_manager(config)
    manager.reconcile(DESIRED_A)
    assert isinstance(manager.issuer.vault._client, hvac.Client)
    paths = [r[1] for r in faulty_vault.request_log]
    assert "/v1/pki_root_a/sign/kafka" in paths
    assert faulty_vault.sign_count["pki_root_a"] == 1


def _coordinated_env(faulty_vault: FaultyVault, consul: ConsulDouble, tmp_path: Path,
                     **values: str) -> dict[str, str]:
    target = faulty_vault.target()
    env = env_for(target, tmp_path / "v", tmp_path)
    del env["PKI_ROOT"], env["PKI_TRUST"]
    return env | {"CONSUL_HTTP_ADDR": consul.url, "PKI_CONSUL_PREFIX": "kafka-pki-once",
                  "PKI_CLUSTER": "demo"} | values


def test_once_ends_at_once_when_consul_denies_the_token(faulty_vault: FaultyVault,
                                                        tmp_path: Path) -> None:
    with ConsulDouble(acl_token="the-sidecars-token") as consul:
        consul_client(consul.host, consul.port, token="the-sidecars-token").kv.put(
            "kafka-pki-once/demo/active-root", "pki_root_a")
        env = _coordinated_env(faulty_vault, consul, tmp_path,
                               CONSUL_HTTP_TOKEN="a-revoked-token")
        started = time.monotonic()
        result = run_script("pki-auth-manager", ["--once"], env)
        seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert seconds < 15, "not retried until once_timeout (120 s)"
    failed = [json.loads(line) for line in result.stderr.splitlines() if '"once_failed"' in line]
    assert len(failed) == 1, result.stderr
    assert failed[0]["kind"] == "permanent_consul_forbidden" and failed[0]["permanent"] is True
    # names the operation and the prefix, and says what to check
    assert "Consul create session under kafka-pki-once/demo/: permission denied (ACL not " \
           "found)" in failed[0]["error"]
    assert "CONSUL_HTTP_TOKEN" in failed[0]["action"]
    assert "docker/consul/kafka-pki-sidecar.policy.hcl" in failed[0]["action"]
    assert "once_retrying" not in result.stderr
    assert not (tmp_path / "v" / "current").exists()


def test_once_retries_while_consul_is_unreachable(faulty_vault: FaultyVault,
                                                  tmp_path: Path) -> None:
    with ConsulDouble() as consul:
        pass  # stopped: its port now refuses connections
    env = _coordinated_env(faulty_vault, consul, tmp_path, PKI_ONCE_TIMEOUT="3",
                           PKI_BACKOFF_INITIAL="0.2")
    result = run_script("pki-auth-manager", ["--once"], env)
    assert result.returncode == 1, result.stderr
    assert "once_retrying" in result.stderr
    failed = [json.loads(line) for line in result.stderr.splitlines() if '"once_failed"' in line]
    assert len(failed) == 1 and failed[0]["kind"] == "consul_unavailable", result.stderr
    assert "permanent" not in failed[0]


# -- roots as issuers of one mount (Vault 1.11+) ---------------------------------------------------

def _issuer_target(vault: FaultyVault) -> VaultTarget:
    """One mount ``pki`` holding the issuers ``root-a`` and ``root-b`` (and the role kafka)."""
    vault.add_mount("pki", with_root=False)
    vault.add_issuer("pki", "root-a")
    vault.add_issuer("pki", "root-b")
    return vault.target(mounts=("pki",))


def test_once_signs_with_an_issuer_and_trusts_issuers(faulty_vault: FaultyVault,
                                                      tmp_path: Path) -> None:
    double = faulty_vault
    env = env_for(_issuer_target(double), tmp_path / "volume", tmp_path) | {
        "PKI_ROOT": "pki:root-a", "PKI_TRUST": "pki:root-a,pki:root-b"}
    result = run_cli(["--once"], env)
    assert result.returncode == 0, result.stderr
    assert double.sign_count.get("pki:root-a") == 1 and "pki:root-b" not in double.sign_count
    logged = [path for _, path, _ in double.request_log]
    assert "/v1/pki/issuer/root-a/sign/kafka" in logged
    assert {"/v1/pki/issuer/root-a/json", "/v1/pki/issuer/root-b/json"} <= set(logged)
    root_a, root_b = double.ca_cert("pki:root-a"), double.ca_cert("pki:root-b")
    current = tmp_path / "volume" / "current"
    manifest = json.loads((current / layout.MANIFEST).read_text())
    assert (manifest["signer"], manifest["trust"]) == ("pki:root-a", ["pki:root-a", "pki:root-b"])
    cert = parse_certificates((current / layout.CERT_PEM).read_bytes(), "cert")[0]
    assert cert.issuer == root_a.subject
    truststore = pkcs12.load_pkcs12((current / layout.TRUSTSTORE_P12).read_bytes(),
                                    PASSWORD.encode())
    aliases = {c.friendly_name: c.certificate for c in truststore.additional_certs}
    assert aliases == {b"pki:root-a": root_a, b"pki:root-b": root_b}
    jks_store = jks.KeyStore.loads((current / layout.TRUSTSTORE_JKS).read_bytes(), PASSWORD)
    assert set(jks_store.certs) == {"pki:root-a", "pki:root-b"}
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    issued = [e for e in events if e["event"] == "certificate_issued"]
    assert issued and issued[0]["signer"] == "pki:root-a"
    assert issued[0]["trust"] == ["pki:root-a", "pki:root-b"]


@pytest.mark.parametrize(("version", "root", "message", "reason"), [
    ("1.7.10", "pki_root_a:root-a", "Vault 1.7.10 has no multi-issuer PKI mounts",
     "invalid_request"),
    (None, "pki:root-z", "unable to find PKI issuer for reference: root-z", "not_found")])
def test_once_refuses_an_issuer_vault_cannot_sign_with(
        faulty_vault: FaultyVault, tmp_path: Path, version: str | None, root: str, message: str,
        reason: str) -> None:
    """An issuer on a Vault older than 1.11 (the version ``sys/health`` reports) is refused
    before any request names it; an issuer the mount does not have is the server's 500,
    permanent all the same: exit 2 at once."""
    env = env_for(_issuer_target(faulty_vault), tmp_path / "v", tmp_path) | {
        "PKI_ROOT": root, "PKI_TRUST": root}
    faulty_vault.report_version(version)
    result = run_script("pki-auth-manager", ["--once"], env)
    issuer_paths = [path for _, path, _ in faulty_vault.request_log if "/issuer/" in path]
    assert result.returncode == 2, result.stderr
    failed = [json.loads(line) for line in result.stderr.splitlines() if '"once_failed"' in line]
    assert len(failed) == 1 and message in failed[0]["error"], result.stderr
    assert failed[0]["kind"] == f"permanent_{reason}"
    assert "once_retrying" not in result.stderr
    assert issuer_paths == ([] if version else ["/v1/pki/issuer/root-z/sign/kafka"])
    assert not (tmp_path / "v" / "current").exists()


def test_a_malformed_issuer_root_is_a_configuration_error(tmp_path: Path) -> None:
    env = env_for(VaultTarget(url="http://127.0.0.1:9", token="t"), tmp_path / "v", tmp_path)
    result = run_cli(["--once"], env | {"PKI_ROOT": "pki:default"})
    assert result.returncode == 2
    assert "invalid value for root/trust 'pki:default' names no fixed issuer" in result.stderr
