"""What a user can get wrong before the loop starts ends both console scripts with one line
on stderr naming the setting, and exit code 2: no traceback, no retrying."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.console import clean_env, run_script
from tests.manager_kit import PASSWORD, SUBJECT


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def assert_one_line(result: subprocess.CompletedProcess[str], setting: str) -> None:
    stderr = result.stderr
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert "configuration error" in lines[0] and setting in lines[0], lines[0]


# -- tls-monitor ------------------------------------------------------------------------------

def monitor_env(tmp_path: Path, **values: str) -> dict[str, str]:
    volume = tmp_path / "volume"
    volume.mkdir(exist_ok=True)
    return clean_env(**{"MONITOR_VOLUME_DIR": str(volume), "MONITOR_MODE": "client",
                        "MONITOR_RELOAD_ACTION": "command", "MONITOR_RELOAD_COMMAND": "true",
                        "MONITOR_LISTEN": "", **values})


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


MONITOR_CASES: dict[str, tuple[Callable[[Path, int], dict[str, str]], list[str], str]] = {
    "listen port in use": (lambda t, p: monitor_env(t, MONITOR_LISTEN=f"127.0.0.1:{p}"),
                           [], "listen"),
    "listen address not local": (lambda t, p: monitor_env(t, MONITOR_LISTEN="192.0.2.1:9109"),
                                 [], "listen"),
    "listen host unknown": (lambda t, p: monitor_env(
        t, MONITOR_LISTEN="no-such-host.invalid:9109"), [], "listen"),
    "listen not host:port": (lambda t, p: monitor_env(t, MONITOR_LISTEN="localhost"),
                             [], "listen"),
    "volume missing": (lambda t, p: monitor_env(t, MONITOR_VOLUME_DIR=str(t / "nope")),
                       [], "volume_dir"),
    "volume is a file": (lambda t, p: monitor_env(
        t, MONITOR_VOLUME_DIR=_write(t / "file", "x")), [], "volume_dir"),
    "password file missing": (lambda t, p: monitor_env(
        t, MONITOR_STORE_PASSWORD_FILE=str(t / "nope")), [], "store_password_file"),
    "password file empty": (lambda t, p: monitor_env(
        t, MONITOR_STORE_PASSWORD_FILE=_write(t / "pw", "\n")), [], "store_password_file"),
    "password file is a directory": (lambda t, p: monitor_env(
        t, MONITOR_STORE_PASSWORD_FILE=str(t)), [], "store_password_file"),
    "reload command not found": (lambda t, p: monitor_env(
        t, MONITOR_RELOAD_COMMAND="/no/such/reload --now"), [], "reload_command"),
    "reload command unbalanced quote": (lambda t, p: monitor_env(
        t, MONITOR_RELOAD_COMMAND="reload 'x"), [], "reload_command"),
    "reload url not http": (lambda t, p: monitor_env(
        t, MONITOR_RELOAD_ACTION="http", MONITOR_RELOAD_URL="localhost:8080/reload"),
        [], "reload_url"),
    "bootstrap servers not host:port": (lambda t, p: monitor_env(
        t, MONITOR_MODE="broker", KAFKA_BOOTSTRAP_SERVERS="broker-1", MONITOR_BROKER_ID="1",
        MONITOR_LISTENERS="SSL=broker-1:9093", MONITOR_KEYSTORE_TYPE="PEM"),
        [], "bootstrap_servers"),
    "unknown flag": (lambda t, p: monitor_env(t), ["--no-such-flag"], "--no-such-flag"),
    "flag without value": (lambda t, p: monitor_env(t), ["--volume-dir"], "--volume-dir"),
    "config file missing": (lambda t, p: monitor_env(t), ["--config", "/no/such.toml"],
                            "config file"),
    "number not a number": (lambda t, p: monitor_env(t, MONITOR_POLL_INTERVAL="soon"),
                            [], "MONITOR_POLL_INTERVAL"),
}


@pytest.mark.parametrize("case", list(MONITOR_CASES))
def test_monitor_startup_error(tmp_path: Path, busy_port: int, case: str) -> None:
    env_of, args, setting = MONITOR_CASES[case]
    result = run_script("tls-monitor", args, env_of(tmp_path, busy_port), timeout=30)
    assert_one_line(result, setting)
    assert result.stderr.startswith("tls-monitor: configuration error: ")


# -- pki-auth-manager -------------------------------------------------------------------------

def manager_env(tmp_path: Path, **values: str) -> dict[str, str]:
    password = tmp_path / "store-password"
    password.write_text(PASSWORD)
    return clean_env(**{"VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "t",
                        "PKI_SUBJECT": SUBJECT, "PKI_OUTPUT_DIR": str(tmp_path / "volume"),
                        "PKI_STORE_PASSWORD_FILE": str(password), "PKI_ROOT": "pki_root_a",
                        "PKI_LISTEN": "", **values})


def consul_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """Coordinated: Consul (nothing listens there) instead of a static root."""
    return manager_env(tmp_path, CONSUL_HTTP_ADDR="http://127.0.0.1:1", PKI_ROOT="", **values)


MANAGER_CASES: dict[str, tuple[Callable[[Path, int], dict[str, str]], list[str], str]] = {
    "listen port in use": (lambda t, p: manager_env(t, PKI_LISTEN=f"127.0.0.1:{p}"),
                           [], "listen"),
    "listen address not local": (lambda t, p: manager_env(t, PKI_LISTEN="192.0.2.1:9108"),
                                 [], "listen"),
    "listen host unknown": (lambda t, p: manager_env(
        t, PKI_LISTEN="no-such-host.invalid:9108"), [], "listen"),
    "password file missing": (lambda t, p: manager_env(
        t, PKI_STORE_PASSWORD_FILE=str(t / "nope")), [], "store_password_file"),
    "password file empty": (lambda t, p: manager_env(
        t, PKI_STORE_PASSWORD_FILE=_write(t / "pw", "")), [], "store_password_file"),
    "output dir under a file": (lambda t, p: manager_env(
        t, PKI_OUTPUT_DIR=_write(t / "file", "x") + "/volume"), [], "output_dir"),
    "vault address without scheme": (lambda t, p: manager_env(t, VAULT_ADDR="vault:8200"),
                                     [], "vault_addr"),
    "no Vault token": (lambda t, p: {k: v for k, v in manager_env(t).items()
                                     if k != "VAULT_TOKEN"}, [], "vault_token"),
    "bad subject": (lambda t, p: manager_env(t, PKI_SUBJECT="OU=kafka"), [], "subject"),
    "unknown flag": (lambda t, p: manager_env(t), ["--no-such-flag"], "--no-such-flag"),
    "config file missing": (lambda t, p: manager_env(t), ["--config", "/no/such.toml"],
                            "config file"),
    "Consul token file missing": (lambda t, p: consul_env(
        t, CONSUL_HTTP_TOKEN_FILE=str(t / "nope")), [], "CONSUL_HTTP_TOKEN_FILE"),
    "Consul token file empty": (lambda t, p: consul_env(
        t, CONSUL_HTTP_TOKEN_FILE=_write(t / "token", " \n")), [], "CONSUL_HTTP_TOKEN_FILE"),
    "Consul token file is a directory": (lambda t, p: consul_env(
        t, CONSUL_HTTP_TOKEN_FILE=str(t)), [], "CONSUL_HTTP_TOKEN_FILE"),
}


# --once serves no metrics, so the listen cases apply to the long-running loop only.
MANAGER_RUNS = [pytest.param(case, once, id=f"{case}-{'once' if once else 'loop'}")
                for case in MANAGER_CASES for once in (False, True)
                if not (once and MANAGER_CASES[case][2] == "listen")]


@pytest.mark.parametrize(("case", "once"), MANAGER_RUNS)
def test_auth_manager_startup_error(tmp_path: Path, busy_port: int, case: str,
                                    once: bool) -> None:
    env_of, args, setting = MANAGER_CASES[case]
    result = run_script("pki-auth-manager", args + (["--once"] if once else []),
                        env_of(tmp_path, busy_port), timeout=30)
    assert_one_line(result, setting)
    assert result.stderr.startswith("pki-auth-manager: configuration error: ")
