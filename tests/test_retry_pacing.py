"""After a failed attempt the auth manager asks Vault nothing until its back-off is over,
however often its loop is woken (rotation record, acknowledgement, session); a rotation phase
that asks another signer or trust set is tried at once after a permanent refusal."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from sidecar import layout
from sidecar.manager import StaticSource
from sidecar.manifest import Acknowledgement
from sidecar.renewal import Desired
from tests.console import Console, clean_env, run_script
from tests.consul_proxy import CountingProxy
from tests.consul_setup import ConsulTarget
from tests.manager_kit import PASSWORD, paced_manager
from tests.rotation_kit import Cluster
from tests.vault_setup import CLIENT_ROLE, FaultyVault, VaultTarget, prepare_least_privilege

PHASE_0 = Desired("pki_root_a", ("pki_root_a",), "r1", 0)
PHASE_1 = Desired("pki_root_a", ("pki_root_a", "pki_root_b"), "r1", 1)
PHASE_2 = Desired("pki_root_b", ("pki_root_a", "pki_root_b"), "r1", 2)
REFUSED = ["common name broker-1.kafka.test not allowed by this role"]


class PhaseSource(StaticSource):
    """A source whose desired material the test moves from phase to phase."""

    def __init__(self, desired: Desired) -> None:
        super().__init__(desired.signer, list(desired.trust), threading.Event())
        self.desired_now = desired

    def desired(self) -> Desired:
        return self.desired_now


def _signs(double: FaultyVault, mount: str) -> int:
    return sum(1 for method, path, _ in double.request_log
               if method in ("POST", "PUT") and path.startswith(f"/v1/{mount}/sign/"))


def test_a_phase_asking_another_signer_is_tried_at_once(faulty_vault: FaultyVault,
                                                        tmp_path: Path) -> None:
    manager, _, log, clock = paced_manager(faulty_vault.url, faulty_vault.root_token,
                                           tmp_path)
    manager.reconcile(PHASE_0)
    faulty_vault.fail_next(100, 400, REFUSED, path="pki_root_a/sign/")
    source = PhaseSource(PHASE_1)
    held = manager.step(source)
    assert 30.0 <= held <= 60.0 and _signs(faulty_vault, "pki_root_a") == 2
    requests = len(faulty_vault.request_log)
    clock.advance(1.0)
    assert manager.step(source) == pytest.approx(held - 1.0), "the same request: held back"
    assert len(faulty_vault.request_log) == requests, "nothing asked of Vault"
    source.desired_now = PHASE_2  # the keeper moved on: another signer, not refused yet
    manager.step(source)
    assert _signs(faulty_vault, "pki_root_b") == 1, "tried at once"
    assert manager.current_manifest().signer == "pki_root_b"  # type: ignore[union-attr]
    assert len(log.named("renewal_failed")) == 1


def test_a_transient_failure_holds_back_another_phase_too(faulty_vault: FaultyVault,
                                                          tmp_path: Path) -> None:
    manager, _, _, clock = paced_manager(faulty_vault.url, faulty_vault.root_token,
                                         tmp_path, backoff_initial=20.0)
    manager.reconcile(PHASE_0)
    faulty_vault.fail_next(1, 503, ["Vault is sealed"], path="/sign/")
    source = PhaseSource(PHASE_1)
    held = manager.step(source)
    assert 10.0 <= held <= 20.0
    requests = len(faulty_vault.request_log)
    source.desired_now = PHASE_2
    clock.advance(1.0)
    assert manager.step(source) == pytest.approx(held - 1.0), "Vault failed, whatever the request"
    assert len(faulty_vault.request_log) == requests
    clock.advance(held)
    manager.step(source)
    assert manager.current_manifest().signer == "pki_root_b"  # type: ignore[union-attr]


# -- the long-running process, counted at the Vault API -------------------------------------------

#: How long the sign requests are counted after each refusal: the back-off is at least 150 s
#: (half of backoff_max), and the quick retries this guards against came within 0.3 s.
WINDOW = 6.0


def test_a_permanent_refusal_is_asked_once_per_backoff(vault: VaultTarget, consul: ConsulTarget,
                                                       tmp_path: Path) -> None:
    """The long-running, coordinated auth manager of the AppRole ``producer`` is configured
    with a name its role refuses (Vault's permanent 400). Its start wakes its loop twice (the
    rotation watch's first answer, the monitor's acknowledgement from before), which used to
    send 3 sign requests within 0.3 s: now 1, then none for the window. A rotation started
    meanwhile asks another trust set: exactly one attempt more, at once."""
    creds = prepare_least_privilege(vault, {"producer": "client"})
    role_id, secret_id = creds["producer"]
    (tmp_path / "secret-id").write_text(secret_id)
    (tmp_path / "pw").write_text(PASSWORD)
    (tmp_path / "pw").chmod(0o600)
    config_prefix, cluster = consul.prefix.strip("/").rsplit("/", 1)
    consul.client().kv.put(consul.key("active-root"), "pki_root_a")
    volume = tmp_path / "volume"
    env = clean_env(
        VAULT_ADDR=vault.url, PKI_VAULT_AUTH="approle", PKI_VAULT_ROLE_ID=role_id,
        PKI_VAULT_SECRET_ID_FILE=str(tmp_path / "secret-id"), PKI_PKI_ROLE=CLIENT_ROLE,
        PKI_SUBJECT="CN=producer.kafka.test,OU=kafka,O=Example",
        PKI_DNS_SANS="producer.kafka.test", PKI_OUTPUT_DIR=str(volume),
        PKI_STORE_PASSWORD_FILE=str(tmp_path / "pw"), PKI_TTL="1h", PKI_LISTEN="",
        CONSUL_HTTP_ADDR=consul.url, PKI_CONSUL_PREFIX=config_prefix, PKI_CLUSTER=cluster,
        PKI_NODE_ID="producer", PKI_NODE_ROLE="client", PKI_BACKOFF_MAX="300",
        **({"CONSUL_HTTP_TOKEN": consul.token} if consul.token else {}))
    init = run_script("pki-auth-manager", ["--once"], env)
    assert init.returncode == 0, init.stderr
    manifest = json.loads((volume / "current" / layout.MANIFEST).read_text())
    layout.ack_path(volume).write_bytes(Acknowledgement(  # its monitor served it
        manifest["generation"], manifest["serial"], manifest["created_at"],
        "handshake").to_json())

    sign = f"POST /v1/pki_root_a/sign/{CLIENT_ROLE}"
    with CountingProxy(vault.url) as proxy:
        refused = env | {"VAULT_ADDR": proxy.url,
                         "PKI_SUBJECT": "CN=broker-1.kafka.test,OU=kafka,O=Example",
                         "PKI_DNS_SANS": "broker-1.kafka.test"}
        manager = Console("pki-auth-manager", [], refused, tmp_path / "manager.log")
        try:
            first = manager.wait_for("renewal_failed", timeout=60)
            assert first["permanent"] is True and "not allowed" in first["error"], first
            assert first["retry_in_seconds"] >= 150
            time.sleep(WINDOW)
            assert proxy.stats().paths.get(sign) == 1, proxy.stats().paths
            assert len(manager.named("renewal_failed")) == 1

            consul.client().kv.put(consul.key("active-root"), "pki_root_b")  # phase 1
            second = manager.wait_for("renewal_failed", timeout=60,
                                      where=lambda e: e.get("attempt") == 2)
            assert second["permanent"] is True and second["retry_in_seconds"] >= 150
            started = [e for e in manager.named("renewal_started") if e.get("phase") == 1]
            assert started and started[-1]["trust"] == ["pki_root_a", "pki_root_b"]
            time.sleep(WINDOW)
            assert proxy.stats().paths.get(sign) == 2, proxy.stats().paths
            assert len(manager.named("renewal_failed")) == 2
        finally:
            manager.stop()


def test_a_restarted_participant_is_not_woken_by_what_it_read_itself(
        consul: ConsulTarget, vault: VaultTarget, tmp_path: Path) -> None:
    """After its first pass a participant sleeps until something changes: neither the rotation
    watch's first answer (the record the pass read) nor the acknowledgement its monitor wrote
    before the restart wakes it."""
    cluster = Cluster(consul, vault, tmp_path)
    try:
        cluster.set_root("pki_root_a")
        first = cluster.start("broker-1", run=False)
        first.step()
        first.step(ack=1)
        first.halt(destroy=False)
        again = cluster.start("broker-1", run=False)
        again.source.fresh_reads = False  # as in production: the live watch's record
        assert again.manager.step(again.source) > 60, "nothing to do until renewal"
        started = time.monotonic()
        again.source.wait(3.0)
        assert time.monotonic() - started >= 2.5, "woken by no news"
    finally:
        cluster.stop()
