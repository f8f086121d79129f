"""``kafka-pki status`` and ``kafka-pki rotate`` against a running cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.operator_cli import main
from tests.consul_setup import ConsulTarget
from tests.rotation_kit import Cluster
from tests.vault_setup import VaultTarget


@pytest.fixture
def cluster(consul: ConsulTarget, vault: VaultTarget, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setenv("VAULT_ADDR", vault.url)
    monkeypatch.setenv("VAULT_TOKEN", vault.token)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    if consul.token:
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul.token)
    c = Cluster(consul, vault, tmp_path, min_dwell=0.5)
    yield c
    c.stop()


def cli(cluster: Cluster, *args: str) -> list[str]:
    return ["--consul-addr", cluster.consul.url, "--consul-prefix", cluster.config_prefix,
            "--cluster", cluster.cluster, *args]


def test_status_table_and_json(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.set_root("pki_root_a")
    cluster.start("broker-1")
    cluster.start("client-1", role="client", monitor=False)
    cluster.wait_until(lambda: cluster.nodes["client-1"].served() is not None, "material")
    cluster.wait_until(lambda: b'"serial": "' in (cluster.store.read().value("nodes/broker-1")
                                                 or b""), "broker-1 to report what it serves")
    assert main(cli(cluster, "status", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["active_root"] == "pki_root_a"
    assert data["rotation"]["to"] == "pki_root_a"
    by_id = {p["node_id"]: p for p in data["participants"]}
    assert by_id["broker-1"]["role"] == "broker" and by_id["broker-1"]["serial"]
    assert by_id["client-1"]["waited_on"], "no acknowledgement yet: the barrier waits on it"
    assert not by_id["broker-1"]["waited_on"]
    assert main(cli(cluster, "status")) == 0
    text = capsys.readouterr().out
    assert "desired root : pki_root_a" in text
    assert "* the rotation waits on this participant" in text
    assert any(line.startswith("*") and "client-1" in line for line in text.splitlines())


def test_rotate_checks_the_root_then_flips(cluster: Cluster,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cluster.set_root("pki_root_a")
    cluster.start("broker-1")
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "stable on A")
    with pytest.raises(SystemExit, match="not a usable Vault PKI mount"):
        main(cli(cluster, "rotate", "--to", "pki_root_missing"))
    assert cluster.store.read().value("active-root") == b"pki_root_a"
    assert main(cli(cluster, "rotate", "--abort")) == 1, "nothing to abort when stable"
    assert main(cli(cluster, "rotate", "--to", "pki_root_b")) == 0
    cluster.wait_until(lambda: (r := cluster.record()) is not None and r.to_root == "pki_root_b"
                       and r.phase >= 1, "rotation started")
    assert main(cli(cluster, "rotate", "--abort")) == 0
    assert cluster.store.read().value("active-root") == b"pki_root_a"
    cluster.wait_until(lambda: cluster.converged("pki_root_a"), "rolled back to A")
    assert "active-root = pki_root_a" in capsys.readouterr().out
