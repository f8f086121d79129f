"""pki-auth-manager takes its Consul ACL token from CONSUL_HTTP_TOKEN_FILE (a mounted secret)
when CONSUL_HTTP_TOKEN is unset, as the consul CLI does. Against a Consul with ACLs enforced:
the double, or the real Consul at CONSUL_HTTP_ADDR when its token is a management token."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sidecar.config import AuthManagerConfig, consul_token, load_config
from sidecar.consul_store import ConsulStore
from sidecar.settings import ConfigError
from tests.console import clean_env, run_script
from tests.consul_setup import AclTokens, participant_rules
from tests.manager_kit import PASSWORD, SUBJECT
from tests.vault_setup import VaultTarget

NODE = "broker-1"


def coordinated_env(consul_acl: AclTokens, vault: VaultTarget, tmp_path: Path,
                    **values: str) -> dict[str, str]:
    """A coordinated ``--once`` on the fixture's prefix, with no Consul token set yet."""
    password = tmp_path / "pw"
    password.write_text(PASSWORD)
    config_prefix, cluster = consul_acl.base.prefix.strip("/").rsplit("/", 1)
    return clean_env(
        VAULT_ADDR=vault.url, VAULT_TOKEN=vault.token, PKI_SUBJECT=SUBJECT, PKI_TTL="1h",
        PKI_OUTPUT_DIR=str(tmp_path / "volume"), PKI_STORE_PASSWORD_FILE=str(password),
        CONSUL_HTTP_ADDR=consul_acl.base.url, PKI_CONSUL_PREFIX=config_prefix,
        PKI_CLUSTER=cluster, PKI_NODE_ID=NODE, PKI_LISTEN="", PKI_LOG_LEVEL="debug",
        PKI_ONCE_TIMEOUT="20", **values)


@pytest.fixture
def participant_token(consul_acl: AclTokens) -> str:
    """The shipped per-node policy's token for NODE; active-root set (management token)."""
    base = consul_acl.base
    ConsulStore(base.url, base.prefix, base.token, verify=base.verify).put(
        "active-root", b"pki_root_a")
    return consul_acl.token(participant_rules(base.prefix, NODE))


def once_events(result_stderr: str, event: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in result_stderr.splitlines()
            if line.startswith("{") and json.loads(line).get("event") == event]


def test_once_uses_the_token_from_the_file(consul_acl: AclTokens, vault: VaultTarget,
                                           participant_token: str, tmp_path: Path) -> None:
    token_file = tmp_path / "consul-token"
    token_file.write_text(participant_token + "\n")  # as `consul acl token create` writes it
    env = coordinated_env(consul_acl, vault, tmp_path)

    denied = run_script("pki-auth-manager", ["--once"], env)  # no token: ACLs refuse
    assert denied.returncode == 2, denied.stderr
    (failed,) = once_events(denied.stderr, "once_failed")
    assert failed["kind"] == "permanent_consul_forbidden"
    assert "CONSUL_HTTP_TOKEN_FILE" in str(failed["action"])  # where a mounted token goes
    assert "token from nowhere (neither CONSUL_HTTP_TOKEN nor CONSUL_HTTP_TOKEN_FILE is set" in \
        str(failed["error"])  # the start-up's one line names the token's source

    env["CONSUL_HTTP_TOKEN_FILE"] = str(token_file)
    result = run_script("pki-auth-manager", ["--once"], env)
    assert result.returncode == 0, result.stderr
    assert once_events(result.stderr, "once_ok"), result.stderr
    manifest = json.loads((tmp_path / "volume" / "current" / "manifest.json").read_text())
    assert manifest["signer"] == "pki_root_a"
    # registered under its node key: a write only this token's policy allows
    base = consul_acl.base
    admin = ConsulStore(base.url, base.prefix, base.token, verify=base.verify)
    assert any(NODE in key for key in admin.read().entries), admin.read().entries
    for output in (result.stdout, result.stderr, denied.stderr):
        assert participant_token not in output  # debug logging on, still not logged


def test_consul_http_token_wins_over_the_file(consul_acl: AclTokens, vault: VaultTarget,
                                              participant_token: str, tmp_path: Path) -> None:
    good, unknown = tmp_path / "good-token", tmp_path / "unknown-token"
    good.write_text(participant_token)
    unknown.write_text(str(uuid.uuid4()))
    env = coordinated_env(consul_acl, vault, tmp_path)

    # the environment's token is used, the file's is not (not even read: it need not exist)
    for token_file in (unknown, tmp_path / "missing"):
        result = run_script("pki-auth-manager", ["--once"], env | {
            "CONSUL_HTTP_TOKEN": participant_token, "CONSUL_HTTP_TOKEN_FILE": str(token_file)})
        assert result.returncode == 0, result.stderr

    # and the other way round: a refused environment token is not replaced by the file's
    result = run_script("pki-auth-manager", ["--once"], env | {
        "CONSUL_HTTP_TOKEN": str(uuid.uuid4()), "CONSUL_HTTP_TOKEN_FILE": str(good)})
    assert result.returncode == 2, result.stderr
    (failed,) = once_events(result.stderr, "once_failed")
    assert failed["kind"] == "permanent_consul_forbidden"
    assert "Consul does not know this token" in str(failed["error"])
    assert "token from CONSUL_HTTP_TOKEN:" in str(failed["error"])


# -- configuration (no Consul request) ---------------------------------------------------------

def config_of(tmp_path: Path, *argv: str, **values: str) -> AuthManagerConfig:
    password = tmp_path / "pw"
    password.write_text(PASSWORD)
    env = {"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "t", "PKI_SUBJECT": SUBJECT,
           "PKI_OUTPUT_DIR": str(tmp_path / "volume"), "PKI_STORE_PASSWORD_FILE": str(password),
           "CONSUL_HTTP_ADDR": "http://127.0.0.1:1", **values}
    return load_config(list(argv), env)[0]


def test_the_file_is_read_stripped_and_only_without_consul_http_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token\r\n")
    assert consul_token(config_of(tmp_path, CONSUL_HTTP_TOKEN_FILE=str(token_file))) \
        == "file-token"
    flag = config_of(tmp_path, "--consul-token-file", str(token_file), CONSUL_HTTP_TOKEN="")
    assert consul_token(flag) == "file-token"  # an empty CONSUL_HTTP_TOKEN is unset
    both = config_of(tmp_path, CONSUL_HTTP_TOKEN="env-token",
                     CONSUL_HTTP_TOKEN_FILE=str(tmp_path / "missing"))
    assert consul_token(both) == "env-token"
    assert consul_token(config_of(tmp_path)) is None


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read .*missing: No such file"),
    ("\n", "is empty"),
    ("s3cr3t\nXq9", "does not hold one token"),
    ("s3cr\u00e9t", "does not hold one token"),
], ids=["missing", "empty", "two lines", "not ascii"])
def test_a_bad_token_file_names_the_setting_not_the_content(
        tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / ("missing" if content is None else "token")
    if content is not None:
        path.write_text(content)
    config = config_of(tmp_path, CONSUL_HTTP_TOKEN_FILE=str(path))
    with pytest.raises(ConfigError,
                       match=f"invalid value for consul_token_file "
                             f"\\(CONSUL_HTTP_TOKEN_FILE\\): .*{problem}") as info:
        consul_token(config)
    assert "\n" not in str(info.value) and "s3cr" not in str(info.value)
