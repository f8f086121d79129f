"""The auth manager's configuration: every setting, its flag, environment name and default."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509

from sidecar.domain import parse_datacenters
from sidecar.keys import KEY_TYPES, parse_subject
from sidecar.rotation import RotationInputError, parse_root_name
from sidecar.settings import (
    ConfigError,
    build_parser,
    describe,
    is_ip_address,
    load,
    parse_host_port,
    setting,
)

ENV_PREFIX = "PKI_"
#: How errors name consul_token_file: also by the consul CLI's variable, which users set.
CONSUL_TOKEN_FILE = "consul_token_file (CONSUL_HTTP_TOKEN_FILE)"
_HEADER_TOKEN = re.compile(rb"[\x21-\x7e]+")
# What Vault's parseutil.ParseDurationSecond accepts: seconds, or Go units plus "d".
_VAULT_DURATION = re.compile(r"^(?:\d+|(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d))+)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthManagerConfig:
    """Settings of ``pki-auth-manager``. See docs/configuration.md."""

    # Identity of the certificate (stable: the DN is the Kafka ACL principal).
    subject: str = setting(
        help="certificate subject DN, e.g. CN=broker-1.kafka.test,OU=kafka,O=Example")
    dns_sans: list[str] = setting([], help="DNS subject alternative names (comma separated)")
    ip_sans: list[str] = setting([], help="IP subject alternative names (comma separated)")
    key_type: str = setting("ec-p256", help="private key type", choices=KEY_TYPES)
    ttl: str = setting("24h", help="requested certificate TTL (Vault duration)")

    # Where the material goes.
    output_dir: Path = setting(help="shared secrets volume the generations are written to")
    store_password_file: Path = setting(
        help="file holding the keystore/truststore password (never pass it on argv)")
    keep_generations: int = setting(3, help="generations kept on the volume (>= 2; the one "
                                    "the monitor last acknowledged is always kept)")
    published_dir: Path | None = setting(
        None, help="where the broker/app mounts the volume, for the properties snippets "
        "(default: output_dir)")

    # Vault.
    vault_addr: str = setting(help="Vault address", env="VAULT_ADDR")
    vault_cacert: Path | None = setting(None, help="CA bundle to verify Vault's TLS certificate",
                                        env="VAULT_CACERT")
    vault_namespace: str | None = setting(None, help="Vault Enterprise namespace",
                                          env="VAULT_NAMESPACE")
    vault_auth: str = setting("token", help="Vault auth method",
                              choices=("token", "approle", "kubernetes"))
    vault_token: str | None = setting(None, help="Vault token (token auth)", env="VAULT_TOKEN",
                                      secret=True)
    vault_token_file: Path | None = setting(None, help="file holding the Vault token (token auth)")
    vault_approle_mount: str = setting("approle", help="AppRole auth mount path")
    vault_role_id: str | None = setting(None, help="AppRole role_id")
    vault_role_id_file: Path | None = setting(None, help="file holding the AppRole role_id "
                                              "(instead of vault_role_id)")
    vault_secret_id_file: Path | None = setting(None, help="file holding the AppRole secret_id")
    vault_kubernetes_mount: str = setting("kubernetes", help="Kubernetes auth mount path")
    vault_kubernetes_role: str | None = setting(None, help="Vault role for Kubernetes auth")
    vault_kubernetes_jwt_file: Path = setting(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        help="service-account JWT file for Kubernetes auth")
    vault_timeout: float = setting(10.0, help="seconds before a Vault request times out")
    pki_role: str = setting("kafka", help="Vault PKI role used to sign or issue")
    pki_mode: str = setting("sign", help="sign a local CSR, or let Vault issue the key",
                            choices=("sign", "issue"))

    # Which roots: static (no Consul) or coordinated through Consul.
    root: str | None = setting(None, help="static mode: the root that signs (no Consul): a PKI "
                               "mount, or `mount:issuer` (Vault 1.11+)")
    trust: list[str] = setting([], help="static mode: roots trusted, as `root` (default: the "
                                        "signer)")
    consul_addr: str | None = setting(None, help="Consul address; enables coordinated rotation",
                                      env="CONSUL_HTTP_ADDR")
    consul_token: str | None = setting(None, help="Consul ACL token", env="CONSUL_HTTP_TOKEN",
                                       secret=True)
    consul_token_file: Path | None = setting(
        None, help="file holding the Consul ACL token (used when CONSUL_HTTP_TOKEN is unset, "
        "as by the consul CLI)", env="CONSUL_HTTP_TOKEN_FILE")
    cluster: str = setting("default", help="cluster name in the Consul key prefix")
    consul_prefix: str = setting("kafka-pki",
                                 help="Consul KV prefix (keys under <prefix>/<cluster>/)")
    node_id: str | None = setting(None, help="participant id in Consul (default: the subject CN)")
    node_role: str = setting("broker", help="participant role", choices=("broker", "client"))
    session_ttl: int = setting(15, help="Consul session TTL in seconds (10..86400)")
    watch_wait: int = setting(60, help="Consul blocking query wait in seconds")
    min_dwell: float = setting(0.0, help="minimum seconds every rotation phase lasts")
    expected_members: int = setting(0, help="rotation waits for at least this many participants")
    datacenters: str = setting("", help="a rotation domain over these Consul datacenters, "
                               "comma-separated, the primary first (empty: this datacenter "
                               "only)")
    require_ack: bool = setting(True, help="report a phase to Consul only once the TLS monitor "
                                "acknowledged the broker/app serves it")

    # Renewal.
    renew_fraction: float = setting(2 / 3, help="renew after this fraction of the lifetime")
    renew_jitter: float = setting(0.05, help="random jitter, as a fraction of the lifetime")
    backoff_initial: float = setting(1.0, help="first retry delay after a failure, seconds")
    backoff_max: float = setting(300.0, help="maximum retry delay, seconds")

    # Operation.
    once_timeout: float = setting(120.0, help="--once: seconds to keep retrying before "
                                  "exiting non-zero")
    listen: str = setting("127.0.0.1:9108", help="address of /metrics, /healthz, /readyz; "
                          "empty to disable")
    log_level: str = setting("info", help="log level",
                             choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        validate(self)

    @property
    def common_name(self) -> str:
        attrs = parse_subject(self.subject).get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(attrs[0].value)

    @property
    def participant_id(self) -> str:
        return self.node_id or self.common_name

    @property
    def coordinated(self) -> bool:
        return bool(self.consul_addr)


def validate(config: AuthManagerConfig) -> None:
    """Cross-field checks; raise ConfigError naming the first bad setting."""
    try:
        name = parse_subject(config.subject)
    except ValueError as exc:
        raise ConfigError(f"invalid value for subject: {config.subject!r} ({exc})") from None
    if not name.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        raise ConfigError(f"invalid value for subject: {config.subject!r} (no CN)")
    for ip in config.ip_sans:
        if not is_ip_address(ip):
            raise ConfigError(f"invalid value for ip_sans: {ip!r} is not an IP address")
    if not _VAULT_DURATION.match(config.ttl) or not re.search(r"[1-9]", config.ttl):
        raise ConfigError(f"invalid value for ttl: {config.ttl!r} is not a positive Vault "
                          "duration (e.g. 24h, 90m, 3600)")
    if not 0 < config.renew_fraction < 1:
        raise ConfigError("invalid value for renew_fraction: must be between 0 and 1")
    if not 0 <= config.renew_jitter < 1 - config.renew_fraction:
        raise ConfigError("invalid value for renew_jitter: must be >= 0 and leave room before "
                          "expiry (renew_fraction + renew_jitter < 1)")
    if config.backoff_initial <= 0 or config.backoff_max < config.backoff_initial:
        raise ConfigError("invalid value for backoff_max: must be >= backoff_initial > 0")
    if config.keep_generations < 2:
        raise ConfigError("invalid value for keep_generations: must be at least 2")
    if not 10 <= config.session_ttl <= 86400:
        raise ConfigError("invalid value for session_ttl: Consul accepts 10..86400 seconds")
    if config.watch_wait < 1:
        raise ConfigError("invalid value for watch_wait: must be at least 1 second")
    try:
        parse_datacenters(config.datacenters)
    except ValueError as exc:
        raise ConfigError(f"invalid value for datacenters: {exc}") from None
    vault = urllib.parse.urlsplit(config.vault_addr)
    if vault.scheme not in ("http", "https") or not vault.hostname:
        raise ConfigError(f"invalid value for vault_addr: {config.vault_addr!r} (expected "
                          "http://host:port or https://host:port)")
    if config.vault_timeout <= 0:
        raise ConfigError("invalid value for vault_timeout: must be positive")
    if config.listen:
        parse_host_port("listen", config.listen)
    if not config.coordinated and not config.root:
        raise ConfigError("missing required setting root (--root or PKI_ROOT), "
                          "or set consul_addr (CONSUL_HTTP_ADDR) for coordinated rotation")
    for root in [config.root or "", *config.trust]:
        try:
            if root:
                parse_root_name(root, what="root/trust")
        except RotationInputError as exc:
            raise ConfigError(f"invalid value for {exc}") from None
    if config.vault_auth == "token" and not (config.vault_token or config.vault_token_file):
        raise ConfigError("missing required setting vault_token (VAULT_TOKEN or "
                          "--vault-token-file) for vault_auth=token")
    if config.vault_auth == "approle" and not (
            (config.vault_role_id or config.vault_role_id_file) and config.vault_secret_id_file):
        raise ConfigError("missing required setting vault_role_id/vault_secret_id_file "
                          "for vault_auth=approle")
    if config.vault_auth == "kubernetes" and not config.vault_kubernetes_role:
        raise ConfigError("missing required setting vault_kubernetes_role "
                          "for vault_auth=kubernetes")


def configured_files(config: AuthManagerConfig) -> list[tuple[str, Path]]:
    """(setting, path) of every file the configuration makes the auth manager read (but the
    Consul token's: see :func:`consul_token`)."""
    files: list[tuple[str, Path | None]] = [
        ("store_password_file", config.store_password_file),
        ("vault_cacert", config.vault_cacert)]
    if config.vault_auth == "token":
        files.append(("vault_token_file", config.vault_token_file))
    elif config.vault_auth == "approle":
        files += [("vault_role_id_file", config.vault_role_id_file),
                  ("vault_secret_id_file", config.vault_secret_id_file)]
    else:
        files.append(("vault_kubernetes_jwt_file", config.vault_kubernetes_jwt_file))
    return [(name, path) for name, path in files if path is not None]


def check_files(config: AuthManagerConfig) -> None:
    """Fail at start, naming the setting, if a configured file is missing, unreadable or
    empty, or output_dir cannot be written (rather than retrying a renewal that cannot
    succeed). Reads the file system: I/O."""
    for name, path in configured_files(config):
        if name == "vault_cacert" and os.path.isdir(path):
            continue  # a directory of CA certificates is valid for verification
        read_configured_file(name, path)
    if config.coordinated:
        consul_token(config)
    _check_output_dir(config.output_dir)


def read_configured_file(name: str, path: Path) -> bytes:
    """The content of the file of setting ``name``, stripped; ConfigError naming the setting
    if it is a directory, cannot be read or is empty. I/O."""
    try:
        if path.is_dir():
            raise ConfigError(f"invalid value for {name}: {path} is a directory")
        content = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"invalid value for {name}: cannot read {path}: "
                          f"{exc.strerror}") from None
    if not content:
        raise ConfigError(f"invalid value for {name}: {path} is empty")
    return content


def consul_token(config: AuthManagerConfig) -> str | None:
    """The Consul ACL token as the consul CLI resolves it: CONSUL_HTTP_TOKEN if set, else the
    content of CONSUL_HTTP_TOKEN_FILE (stripped), else none. Reads the file each call (I/O);
    ConfigError naming it if it cannot be read, is empty or holds no token."""
    if config.consul_token or config.consul_token_file is None:
        return config.consul_token
    content = read_configured_file(CONSUL_TOKEN_FILE, config.consul_token_file)
    if not _HEADER_TOKEN.fullmatch(content):
        # not sendable as the X-Consul-Token header; the message must not show the content
        raise ConfigError(f"invalid value for {CONSUL_TOKEN_FILE}: "
                          f"{config.consul_token_file} does not hold one token (printable "
                          "ASCII, no spaces)")
    return content.decode()


def _check_output_dir(path: Path) -> None:
    """output_dir must be a writable directory, or creatable (its nearest existing parent
    a writable directory)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"invalid value for output_dir: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"invalid value for output_dir: {existing} is not writable by "
                          "this user")


def _add_once_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--once", action="store_true",
        help="make sure valid material is on the volume, then exit (init containers)")


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]
                ) -> tuple[AuthManagerConfig, bool]:
    """Parse flags/env/TOML; return the config and whether ``--once`` was given."""
    parser = build_parser(
        AuthManagerConfig, "pki-auth-manager",
        "Keeps a Kafka broker's or client's key, certificate and trust stores fresh from Vault.",
        ENV_PREFIX,
        extra=_add_once_flag,
    )
    args = parser.parse_args(argv)
    return load(AuthManagerConfig, args, environ, ENV_PREFIX), bool(args.once)


def reference() -> list[tuple[str, str, str, str]]:
    """(flag, env, default, help) rows for the configuration reference (docs/configuration.md)."""
    return [(i.flag, i.env, i.default, i.help) for i in describe(AuthManagerConfig, ENV_PREFIX)]
