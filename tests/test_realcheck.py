"""``python -m tests.realcheck``: the real-server groups, run against the doubles as servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.realcheck import ROOT, SERVER_VARS

# A representative subset, to keep this under ~15 s: the Consul store, the operator CLI, the
# Vault API and the auth manager, each through the variables alone. Left out for time: the
# Consul double's protocol tests (blocking queries, ~80 s) and the rotation over Consul.
SUBSET = "test_consul_store or test_operator_cli or test_vault_profiles or test_auth_manager"


def _realcheck(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    return subprocess.run([sys.executable, "-m", "tests.realcheck", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240, check=False)


def test_doubles_as_servers_pass_the_consul_and_vault_groups() -> None:
    done = _realcheck("--doubles", "--group", "consul", "--group", "vault", "-k", SUBSET)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for group in ("consul", "vault"):
        line = next((x for x in lines if x.startswith(f"{group}: ")), None)
        assert line is not None, done.stdout
        found = re.fullmatch(rf"{group}: passed=(\d+) failed=(\d+) skipped=(\d+)", line)
        assert found, line
        assert int(found[1]) > 0 and int(found[2]) == 0, line


def test_groups_without_their_environment_are_not_configured() -> None:
    done = _realcheck()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "consul: not configured (missing CONSUL_HTTP_ADDR)",
        "vault: not configured (missing VAULT_ADDR VAULT_TOKEN)",
        "kafka: not configured (missing KAFKA_BOOTSTRAP_SERVERS KAFKA_TEST_PKI_DIR "
        "KAFKA_RESTART_COMMAND)",
        "monitor: not configured (missing KAFKA_BOOTSTRAP_SERVERS KAFKA_TEST_VOLUME_DIR "
        "KAFKA_RESTART_COMMAND VAULT_ADDR VAULT_TOKEN)",
    ]
