"""``kafka-pki init``, ``status`` and ``rotate`` against Consul and Vault (the doubles, or the
real servers when CONSUL_HTTP_ADDR / VAULT_ADDR + VAULT_TOKEN are set)."""

from __future__ import annotations

import argparse
import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.consul_store import ConsulStore
from sidecar.operator_cli import build_parser, main
from tests.consul_setup import AclTokens, ConsulTarget, operator_rules, participant_rules
from tests.rotation_kit import Cluster
from tests.vault_setup import VaultTarget, least_privilege_roles


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


# --------------------------------------------------------------------------- kafka-pki init


@pytest.fixture
def env(consul: ConsulTarget, vault: VaultTarget,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], ConsulStore]]:
    """The global options for this test's prefix, and a store to look at the keys with."""
    monkeypatch.setenv("VAULT_ADDR", vault.url)
    monkeypatch.setenv("VAULT_TOKEN", vault.token)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    if consul.token:
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul.token)
    prefix, cluster = consul.prefix.strip("/").rsplit("/", 1)
    yield (["--consul-addr", consul.url, "--consul-prefix", prefix, "--cluster", cluster],
           ConsulStore(consul.url, consul.prefix, consul.token))


BROKER_NAMES = ["--pki-role", "kafka", "--name", "broker-1.kafka.test", "--name",
                "localhost,127.0.0.1"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_init_sets_active_root_only_if_absent(env: tuple[list[str], ConsulStore],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    options, store = env
    assert main([*options, "init", "--root", "pki_root_a", *BROKER_NAMES]) == 0
    out = capsys.readouterr().out
    assert "pki_root_a/sign/kafka signs for broker-1.kafka.test, localhost, 127.0.0.1" in out
    assert "active-root = pki_root_a" in out and ": set" in out
    assert store.get("active-root").entry.value == b"pki_root_a"  # type: ignore[union-attr]
    assert main([*options, "init", "--root", "pki_root_a"]) == 0, "equal: idempotent"
    assert "already set; unchanged" in capsys.readouterr().out
    assert main([*options, "init", "--root", "pki_root_b"]) == 1, "different: never overwritten"
    err = capsys.readouterr().err
    assert "already holds 'pki_root_a', not 'pki_root_b'; unchanged" in err
    assert "kafka-pki rotate --to pki_root_b" in err
    assert store.get("active-root").entry.value == b"pki_root_a"  # type: ignore[union-attr]


def test_init_reports_a_malformed_value_it_finds(env: tuple[list[str], ConsulStore],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    options, store = env
    store.put("active-root", b"pki root a\n")
    assert main([*options, "init", "--root", "pki_root_a"]) == 1
    assert "already holds 'pki root a\\n'" in capsys.readouterr().err
    assert store.get("active-root").entry.value == b"pki root a\n"  # type: ignore[union-attr]


@pytest.mark.parametrize(("extra", "message"), [
    (["--root", "pki_root_missing"], "pki_root_missing is not a usable Vault PKI mount"),
    (["--root", "pki_root_a", "--pki-role", "nope", "--name", "broker-1.kafka.test"],
     "pki_root_a has no role nope"),
    (["--root", "pki_root_a", "--pki-role", "nope"], "pki_root_a has no role nope"),
    (["--root", "pki_root_a", "--pki-role", "kafka", "--name", "broker-1.evil.example"],
     "common name broker-1.evil.example not allowed by this role"),
    (["--root", "pki_root_a", "--pki-role", "kafka", "--name", "broker-1.kafka.test", "--name",
      "kafka.evil.example"], "subject alternate name kafka.evil.example not allowed by this role"),
    (["--root", "pki_root_a", "--name", "broker-1.kafka.test"], "give the one --pki-role"),
    (["--root", "pki_root_a", "--pki-role", "kafka", "--pki-role", "nope"],
     "pki_root_a has no role nope"),
    (["--root", "pki_root_a", "--name", "127.0.0.1"], "give the common name (a DNS name) first"),
    (["--root", "pki root a"], "--root:"),
])
def test_init_refuses_what_vault_refuses(env: tuple[list[str], ConsulStore],
                                         capsys: pytest.CaptureFixture[str], extra: list[str],
                                         message: str) -> None:
    options, store = env
    assert main([*options, "init", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert store.get("active-root").entry is None, "nothing written after a refusal"


def test_init_checks_the_key_type_with_the_role(env: tuple[list[str], ConsulStore],
                                                vault: VaultTarget,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    options, _ = env
    client = vault.client()
    client.secrets.pki.create_or_update_role("kafka-rsa-only", extra_params={
        "allowed_domains": ["kafka.test"], "allow_subdomains": True, "key_type": "rsa",
        "key_bits": 3072, "max_ttl": "1h"}, mount_point="pki_root_a")
    try:
        base = [*options, "init", "--root", "pki_root_a", "--pki-role", "kafka-rsa-only"]
        assert main([*base, "--name", "broker-1.kafka.test"]) == 2
        assert "role requires keys of type rsa" in capsys.readouterr().err
        assert main(base) == 2, "without --name: the role is read, its key type compared"
        assert "pki_root_a/roles/kafka-rsa-only refuses the sidecars' key (ec-p256): role " \
               "requires keys of type rsa" in capsys.readouterr().err
        assert main([*base, "--key-type", "rsa-2048"]) == 2, "at least 3072 bits"
        assert "minimum of a 3072-bit key" in capsys.readouterr().err
        assert main([*base, "--name", "broker-1.kafka.test", "--key-type", "rsa-3072"]) == 0
    finally:
        client.secrets.pki.delete_role("kafka-rsa-only", mount_point="pki_root_a")


def test_init_without_names_checks_mount_and_role(env: tuple[list[str], ConsulStore],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    options, store = env
    assert main([*options, "init", "--root", "pki_root_b", "--pki-role", "kafka"]) == 0
    assert "pki_root_b has a CA; pki_root_b/roles/kafka exists (ec-p256; no --name, so no " \
           "names checked)" in capsys.readouterr().out
    # The default: vault-init.sh's templated pair where a mount has it, else its shared kafka.
    assert main([*options, "init", "--root", "pki_root_b"]) == 0
    assert re.search(r"pki_root_b/roles/kafka(-broker, pki_root_b/roles/kafka-client)? exists?",
                     capsys.readouterr().out)
    assert store.get("active-root").entry.value == b"pki_root_b"  # type: ignore[union-attr]


def test_init_unreachable_servers_exit_3(env: tuple[list[str], ConsulStore],
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    options, store = env
    assert main([*options, "--vault-addr", f"http://127.0.0.1:{closed_port()}", "init",
                 "--root", "pki_root_a"]) == 3
    assert "cannot connect" in capsys.readouterr().err
    down = ["--consul-addr", f"http://127.0.0.1:{closed_port()}"]
    assert main([*options, "init", "--root", "pki_root_a", *down]) == 3
    captured = capsys.readouterr()
    assert "Vault: pki_root_a" in captured.out and "Consul" in captured.err
    monkeypatch.delenv("VAULT_ADDR")
    assert main([*options, "init", "--root", "pki_root_a"]) == 2
    assert "set VAULT_ADDR" in capsys.readouterr().err
    assert store.get("active-root").entry is None


def vault_operator_rules(mount: str) -> list[tuple[str, str]]:
    """The kafka-pki-operator policy docker/vault-init.sh writes with PKI_LAYOUT=issuers
    (``ISSUER_MOUNT=mount``): (path, capability) pairs, read from the script itself."""
    script = (Path(__file__).parents[1] / "docker" / "vault-init.sh").read_text()
    block = script.split('if [ "$PKI_LAYOUT" = issuers ]; then', 1)[1].split('operator="', 1)[1]
    rules = re.findall(r'path \\"([^"\\]+)\\" +\{ capabilities = \[\\"(\w+)\\"\] \}',
                       block.split('"\n', 1)[0])
    return [(path.replace("$issuer", "$ISSUER_MOUNT/issuer/+").replace("$ISSUER_MOUNT", mount),
             capability) for path, capability in rules]


def issuers_layout(vault: VaultTarget, mount: str) -> str:
    """What vault-init.sh builds with PKI_LAYOUT=issuers PKI_ROLES=templated, on ``mount``:
    the issuers root-a and root-b, the roles kafka-broker and kafka-client templated on the
    AppRole's name, and the operator's policy; returns an operator token."""
    client = vault.client()
    client.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})
    for issuer in ("root-a", "root-b"):
        client.adapter.post(f"/v1/{mount}/issuers/generate/root/internal", json={
            "common_name": f"Example Kafka {issuer}", "issuer_name": issuer, "key_type": "ec",
            "key_bits": 256, "ttl": "87600h"})
    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    accessor = client.sys.list_auth_methods()["data"]["approle/"]["accessor"]
    template = f"{{{{identity.entity.aliases.{accessor}.metadata.role_name}}}}"
    for role, params in least_privilege_roles(template).items():
        client.secrets.pki.create_or_update_role(role, extra_params=params, mount_point=mount)
    rules = vault_operator_rules(mount)
    policy = f"kafka-pki-operator-{mount}"
    client.sys.create_or_update_policy(policy, "\n".join(
        f'path "{path}" {{ capabilities = ["{capability}"] }}' for path, capability in rules))
    return str(client.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"])


def test_init_with_the_operator_token_of_the_issuers_layout(
        env: tuple[list[str], ConsulStore], vault: VaultTarget, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """README "Deploying without Compose", step 2, with vault-init.sh's operator policy: init
    reads the issuer and the templated roles (the operator may not sign): 0 on a fresh
    cluster, 0 again, 1 for another root; a --name check needs a participant's token."""
    options, store = env
    mount = f"pki-{uuid.uuid4().hex[:8]}"
    assert vault_operator_rules(mount) == [(f"{mount}/issuer/+/json", "read"),
                                     (f"{mount}/roles/+", "read")]
    monkeypatch.setenv("VAULT_TOKEN", issuers_layout(vault, mount))
    assert main([*options, "init", "--root", f"{mount}:root-a"]) == 0
    out = capsys.readouterr().out
    assert f"{mount}:root-a has a CA; {mount}/roles/kafka-broker, {mount}/roles/kafka-client " \
           "exist" in out and ": set" in out
    assert store.get("active-root").entry.value == f"{mount}:root-a".encode()  # type: ignore[union-attr]
    assert main([*options, "init", "--root", f"{mount}:root-a"]) == 0
    assert "already set; unchanged" in capsys.readouterr().out
    assert main([*options, "init", "--root", f"{mount}:root-b"]) == 1
    assert f"already holds '{mount}:root-a'" in capsys.readouterr().err
    assert main([*options, "init", "--root", f"{mount}:root-b", "--pki-role", "kafka-broker",
                 "--name", "kafka-1.kafka.test"]) == 2
    err = capsys.readouterr().err
    assert "permission denied" in err and "needs a participant's token" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*options, "init", "--root", f"{mount}:root-c"]) == 2
    assert "unable to find PKI issuer for reference: root-c" in capsys.readouterr().err


# --------------------------------------------------------------------------- global options


def test_global_options_go_before_or_after_the_command(env: tuple[list[str], ConsulStore],
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    options, store = env
    addr, prefix, cluster = options[1], options[3], options[5]
    assert main(["init", "--root", "pki_root_a", *options]) == 0, "all after"
    assert store.get("active-root").entry.value == b"pki_root_a"  # type: ignore[union-attr]
    capsys.readouterr()
    mixed = ["--consul-addr", addr, "status", "--json", "--consul-prefix", prefix,
             "--cluster", cluster]
    assert main(mixed) == 0
    assert json.loads(capsys.readouterr().out)["active_root"] == "pki_root_a"
    assert main(["--cluster", "elsewhere", "status", "--json", "--cluster", cluster,
                 "--consul-addr", addr, "--consul-prefix", prefix]) == 0, "the later one wins"
    assert json.loads(capsys.readouterr().out)["active_root"] == "pki_root_a"
    assert main([*options[:4], "--cluster", cluster + "-other", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["active_root"] is None, "before: still read"


def test_help_says_where_global_options_go() -> None:
    parser = build_parser()
    assert "global options (before or after the command)" in parser.format_help()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "global options (before or after the command)" in text, name
        assert "--cluster" in text and "--vault-addr" in text, name


def test_init_with_a_consul_token_refused_exits_2(vault: VaultTarget,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from tests.doubles.consul import ConsulDouble

    monkeypatch.setenv("VAULT_ADDR", vault.url)
    monkeypatch.setenv("VAULT_TOKEN", vault.token)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "not-the-token")
    with ConsulDouble(acl_token="the-token") as consul:  # ACLs are the double's to set up
        assert main(["init", "--root", "pki_root_a", "--consul-addr", consul.url]) == 2
    assert "permission denied" in capsys.readouterr().err


# ------------------------------------------------------------ least privilege (per-node tokens)


def test_participants_with_their_own_tokens_rotate(consul_acl: AclTokens, vault: VaultTarget,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Each participant holds only the shipped per-node policy: it registers, reports, one
    becomes keeper and advances the record; the operator's token flips active-root; a
    read-only operator token runs status and is refused rotate, naming the key."""
    monkeypatch.setenv("VAULT_ADDR", vault.url)
    monkeypatch.setenv("VAULT_TOKEN", vault.token)
    prefix = consul_acl.base.prefix
    c = Cluster(consul_acl.base, vault, tmp_path, min_dwell=0.5)  # its store: the bootstrap token
    try:
        c.set_root("pki_root_a")
        for name in ("broker-1", "broker-2"):
            c.start(name, consul_token=consul_acl.token(participant_rules(prefix, name)))
        c.wait_until(lambda: c.converged("pki_root_a"), "stable on A")
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul_acl.token(operator_rules(prefix)))
        assert main(cli(c, "rotate", "--to", "pki_root_b")) == 0
        c.wait_until(lambda: c.converged("pki_root_b"), "rotated to B", timeout=90)
        capsys.readouterr()
        monkeypatch.setenv("CONSUL_HTTP_TOKEN",
                           consul_acl.token(operator_rules(prefix, read_only=True)))
        assert main(cli(c, "status", "--json")) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["active_root"] == "pki_root_b"
        assert {p["node_id"] for p in data["participants"]} == {"broker-1", "broker-2"}
        assert main(cli(c, "rotate", "--to", "pki_root_a")) == 1  # rotate: 1 on any refusal
        err = capsys.readouterr().err
        assert f'the token needs key "{prefix}active-root" write' in err
        assert "docker/consul/kafka-pki-operator.policy.hcl" in err
        assert c.store.read().value("active-root") == b"pki_root_b"
    finally:
        c.stop()


def test_status_reads_the_token_from_consul_http_token_file(
        consul_acl: AclTokens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The compose operator has CONSUL_HTTP_TOKEN_FILE (a secret volume), like the consul CLI."""
    prefix = consul_acl.base.prefix
    ConsulStore(consul_acl.base.url, prefix, consul_acl.base.token).put("active-root", b"pki_a")
    token_file = tmp_path / "token"
    token_file.write_text(consul_acl.token(operator_rules(prefix, read_only=True)) + "\n")
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(token_file))
    config_prefix, cluster = prefix.strip("/").rsplit("/", 1)
    args = ["--consul-addr", consul_acl.base.url, "--consul-prefix", config_prefix,
            "--cluster", cluster, "status", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["active_root"] == "pki_a"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="cannot read CONSUL_HTTP_TOKEN_FILE"):
        main(args)


def test_status_tells_a_refused_token_from_an_empty_cluster(
        consul_acl: AclTokens, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Consul filters a denied recursive read down to an empty 404, so status reads
    active-root directly (403) and asks acl/token/self what the token is: one line, exit 2,
    with --json too; an empty prefix read with a good token is still "none yet", exit 0."""
    prefix = consul_acl.base.prefix
    ConsulStore(consul_acl.base.url, prefix, consul_acl.base.token).put("active-root", b"pki_a")
    config_prefix, cluster = prefix.strip("/").rsplit("/", 1)
    args = ["--consul-addr", consul_acl.base.url, "--consul-prefix", config_prefix,
            "--cluster", cluster, "status"]
    rule = f'key_prefix "{prefix}" read (see docker/consul/kafka-pki-operator.policy.hcl)'
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN_FILE", raising=False)
    for extra in ([], ["--json"]):
        assert main([*args, *extra]) == 2
        out, err = capsys.readouterr()
        assert len(err.strip().splitlines()) == 1, err
        assert "token from nowhere (neither CONSUL_HTTP_TOKEN nor CONSUL_HTTP_TOKEN_FILE" in err
        assert f"give a token with {rule}" in err
        if extra:
            assert json.loads(out)["reason"] == "forbidden"
        else:
            assert out == ""
    elsewhere = consul_acl.token('key_prefix "elsewhere/" { policy = "read" }')
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", elsewhere)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Consul refuses the token from CONSUL_HTTP_TOKEN (AccessorID " in err
    assert "policies: kafka-pki-test-" in err and f"the token needs {rule}" in err
    assert elsewhere not in err, "the secret is never shown"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", str(uuid.uuid4()))
    assert main(args) == 2
    assert "Consul does not know the token from CONSUL_HTTP_TOKEN (ACL not found" in (
        capsys.readouterr().err)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul_acl.token(operator_rules(prefix,
                                                                             read_only=True)))
    assert main(args) == 0
    assert "desired root : pki_a" in capsys.readouterr().out
    empty = [*args[:4], "--cluster", cluster + "-empty", "status"]
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul_acl.token(operator_rules(
        f"{config_prefix}/{cluster}-empty/", read_only=True)))
    assert main(empty) == 0, "allowed and empty: not an error"
    assert "rotation     : none yet" in capsys.readouterr().out
    monkeypatch.delenv("CONSUL_HTTP_TOKEN")
    abort = [*args[:-1], "rotate", "--abort"]
    assert main(abort) == 1, "rotate --abort: refused, not 'nothing to abort'"
    err = capsys.readouterr().err
    assert "permission denied" in err and "token from nowhere" in err
    assert "nothing to abort" not in err


def test_status_exits_1_when_consul_cannot_be_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--consul-addr", f"http://127.0.0.1:{closed_port()}", "status", "--json"]) == 1
    out, err = capsys.readouterr()
    assert "cannot connect" in err and json.loads(out)["reason"] == "unavailable"
