"""The TLS monitor's configuration: every setting, its flag, environment name and default."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

from monitor.restart_gate import RAFT_RESTART
from sidecar.settings import ConfigError, build_parser, load, parse_host_port, setting

ENV_PREFIX = "MONITOR_"
ACTIONS = ("none", "signal", "command", "http", "restart")
_LISTENER = re.compile(r"^([A-Za-z0-9_]+)=(.+:\d+)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """Settings of ``tls-monitor``. See docs/configuration.md."""

    volume_dir: Path = setting(help="shared secrets volume written by pki-auth-manager")
    mode: str = setting("broker", help="reload a Kafka broker, or a client app",
                        choices=("broker", "client"))
    store_password_file: Path | None = setting(
        None, help="file holding the store password (to open PKCS12/JKS stores)")
    keystore_type: str = setting("PKCS12", help="store type Kafka is configured with",
                                 choices=("PKCS12", "JKS", "PEM"))
    kafka_volume_dir: Path | None = setting(
        None, help="where the broker mounts the volume (default: volume_dir)")

    # Broker mode.
    bootstrap_servers: str | None = setting(
        None, help="admin connection to this broker (host:port of an SSL listener)",
        env="KAFKA_BOOTSTRAP_SERVERS")
    broker_id: int | None = setting(None, help="this broker's id (the config resource)")
    listeners: list[str] = setting([], help="listeners to reload and verify, "
                                   "NAME=host:port (comma separated)")
    inter_broker_listener: str | None = setting(
        None, help="listener used between brokers (gets Kafka's test handshakes)")
    controller_listener: str | None = setting(
        None, help="the KRaft controller listener (one of listeners): reloaded like the "
        "others, and the broker restarted once when the trust set gains a root its Raft client "
        "did not load (raft_restart)")
    raft_restart: str = setting(
        "new-roots", help="restart the broker when the trust set gains a root (new-roots: "
        "Kafka releases without the KAFKA-20025 fix), or never (releases with it)",
        choices=RAFT_RESTART)
    restart_cluster_size: int = setting(
        0, help="brokers the cluster must show alive before this one restarts (required with "
        "controller_listener and raft_restart=new-roots)")
    restart_listeners: list[str] = setting(
        [], help="removed: the controller listener reloads dynamically now; use "
        "controller_listener")
    alter_passwords: bool = setting(False, help="also send the store passwords (first alter, "
                                    "then when changed; needs password.encoder.secret on "
                                    "the broker)")
    allow_dn_changes: bool = setting(False, help="the broker sets ssl.allow.dn.changes")
    allow_san_changes: bool = setting(False, help="the broker sets ssl.allow.san.changes")
    admin_hostname_verification: bool = setting(
        True, help="verify the broker's hostname on the admin and verification connections")
    admin_timeout: float = setting(15.0, help="seconds for an admin request")

    # Client mode (and a KRaft broker's restart).
    reload_action: str = setting("none", help="how to reload a client app", choices=ACTIONS)
    reload_pid_file: Path | None = setting(None, help="pid file of the process to signal "
                                           "or restart")
    reload_signal: str = setting("SIGHUP", help="signal sent by the signal action")
    reload_command: str | None = setting(None, help="command run by the command action "
                                         "(no shell; PKI_GENERATION and PKI_CURRENT_DIR set)")
    reload_url: str | None = setting(None, help="URL the http action POSTs the manifest to")
    action_timeout: float = setting(30.0, help="seconds an action may take")

    # Timing and operation.
    debounce: float = setting(0.3, help="seconds of quiet before acting on volume events")
    poll_interval: float = setting(30.0, help="seconds between checks without events")
    retry_interval: float = setting(5.0, help="seconds before retrying a failed reload")
    verify_timeout: float = setting(60.0, help="seconds to verify a reload before alerting")
    listen: str = setting("127.0.0.1:9109", help="address of /metrics, /healthz, /readyz; "
                          "empty to disable")
    log_level: str = setting("info", help="log level",
                             choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        validate(self)

    def raft_restarts(self) -> bool:
        """This broker's Raft client must be restarted when the trust set gains a root."""
        return self.mode == "broker" and bool(self.controller_listener) \
            and self.raft_restart == "new-roots"

    def listener_addresses(self) -> dict[str, tuple[str, int]]:
        """Listener name -> (host, port), from ``listeners``."""
        out = {}
        for item in self.listeners:
            match = _LISTENER.match(item)
            assert match is not None
            out[match.group(1).upper()] = parse_host_port("listeners", match.group(2))
        return out


def validate(config: MonitorConfig) -> None:
    """Cross-field checks; raise ConfigError naming the first bad setting."""
    for item in config.listeners:
        if not _LISTENER.match(item):
            raise ConfigError(f"invalid value for listeners: {item!r} (expected NAME=host:port)")
    if config.mode == "broker":
        if not config.bootstrap_servers:
            raise ConfigError("missing required setting bootstrap_servers "
                              "(KAFKA_BOOTSTRAP_SERVERS) in broker mode")
        if config.broker_id is None:
            raise ConfigError("missing required setting broker_id (--broker-id or "
                              "MONITOR_BROKER_ID) in broker mode")
        if not config.listeners:
            raise ConfigError("missing required setting listeners in broker mode")
        names = {item.split("=", 1)[0].upper() for item in config.listeners}
        if config.inter_broker_listener and config.inter_broker_listener.upper() not in names:
            raise ConfigError("invalid value for inter_broker_listener: not in listeners")
    if config.restart_listeners:
        raise ConfigError("restart_listeners was removed: the controller listener reloads "
                          "dynamically; set controller_listener="
                          f"{config.restart_listeners[0]} (and list it in listeners) instead")
    restarts = config.raft_restarts()
    if config.mode == "broker" and config.controller_listener:
        names = {item.split("=", 1)[0].upper() for item in config.listeners}
        if config.controller_listener.upper() not in names:
            raise ConfigError("invalid value for controller_listener: not in listeners (it "
                              "is reloaded and verified like the others)")
        if restarts and config.restart_cluster_size <= 0:
            raise ConfigError("missing required setting restart_cluster_size for "
                              "controller_listener with raft_restart=new-roots (the number "
                              "of brokers, so that a restart waits for a whole cluster)")
    needs_action = config.mode == "client" or restarts
    if needs_action and config.reload_action == "none":
        raise ConfigError("missing required setting reload_action (signal, command, http or "
                          "restart) for a client, or to restart a KRaft broker "
                          "(controller_listener)")
    if config.reload_action in ("signal", "restart") and not config.reload_pid_file:
        raise ConfigError(f"missing required setting reload_pid_file for "
                          f"reload_action={config.reload_action}")
    if config.reload_action == "command" and not config.reload_command:
        raise ConfigError("missing required setting reload_command for reload_action=command")
    if config.reload_action == "http" and not config.reload_url:
        raise ConfigError("missing required setting reload_url for reload_action=http")
    if config.keystore_type != "PEM" and config.mode == "broker" \
            and not config.store_password_file:
        raise ConfigError("missing required setting store_password_file for "
                          f"keystore_type={config.keystore_type}")
    if config.debounce < 0 or min(config.poll_interval, config.retry_interval,
                                  config.verify_timeout) <= 0:
        raise ConfigError("invalid value for debounce/poll_interval/retry_interval/"
                          "verify_timeout: must be positive")
    if config.listen:
        parse_host_port("listen", config.listen)
    for server in (config.bootstrap_servers or "").split(","):
        if server.strip():
            parse_host_port("bootstrap_servers", server.strip())
    if config.reload_url:
        url = urllib.parse.urlsplit(config.reload_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"invalid value for reload_url: {config.reload_url!r} "
                              "(expected an http:// or https:// URL)")
    if config.reload_command is not None:
        try:
            if not shlex.split(config.reload_command):
                raise ValueError("empty command")
        except ValueError as exc:
            raise ConfigError(f"invalid value for reload_command: {exc}") from None


def check_startup(config: MonitorConfig) -> None:
    """What the monitor reads or runs must be there before the loop starts: the volume
    (a readable, writable directory), the store password file, the reload command. Raise
    ConfigError naming the setting. Reads the file system: I/O."""
    volume = config.volume_dir
    if not volume.is_dir():
        what = "is not a directory" if volume.exists() else "does not exist"
        raise ConfigError(f"invalid value for volume_dir: {volume} {what}")
    if not os.access(volume, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"invalid value for volume_dir: {volume} is not readable and "
                          "writable by this user")
    path = config.store_password_file
    if path is not None:
        try:
            empty = not path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"invalid value for store_password_file: cannot read {path}: "
                              f"{reason}") from None
        if empty:
            raise ConfigError(f"invalid value for store_password_file: {path} is empty")
    if config.reload_action == "command" and config.reload_command:
        program = shlex.split(config.reload_command)[0]
        if shutil.which(program) is None:
            raise ConfigError(f"invalid value for reload_command: {program!r} is not an "
                              "executable file (nor found on PATH)")


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> MonitorConfig:
    """Parse flags/env/TOML into a validated MonitorConfig."""
    parser: argparse.ArgumentParser = build_parser(
        MonitorConfig, "tls-monitor",
        "Makes Kafka (or a client app) serve the material on the volume, and proves it.",
        ENV_PREFIX)
    return load(MonitorConfig, parser.parse_args(argv), environ, ENV_PREFIX)
