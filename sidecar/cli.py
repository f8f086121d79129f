"""``pki-auth-manager``: the entry point. Wires config, Vault, volume, metrics and the loop."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sidecar.config import AuthManagerConfig, check_files, load_config
from sidecar.consul_store import SIDECAR_POLICY, ConsulError
from sidecar.health import check_heartbeat, serve_health
from sidecar.issuer import Issuer
from sidecar.lifecycle import install_stop_handlers, run_until_stopped
from sidecar.logs import configure
from sidecar.manager import (
    RECOVERABLE,
    AuthManager,
    DesiredSource,
    RetryHeld,
    StaticSource,
    error_kind,
    is_permanent,
)
from sidecar.metrics import AuthManagerMetrics
from sidecar.renewal import Desired, Identity
from sidecar.settings import ConfigError
from sidecar.vault import VaultPKI, authenticator_from
from sidecar.volume import Volume


def build_manager(config: AuthManagerConfig, metrics: AuthManagerMetrics, log: Any
                  ) -> AuthManager:
    """Construct the auth manager from validated configuration (no network I/O yet)."""
    verify: str | bool = str(config.vault_cacert) if config.vault_cacert else True
    vault = VaultPKI(
        config.vault_addr,
        authenticator_from(
            config.vault_auth, token=config.vault_token, token_file=config.vault_token_file,
            approle_mount=config.vault_approle_mount, role_id=config.vault_role_id,
            secret_id_file=config.vault_secret_id_file,
            role_id_file=config.vault_role_id_file,
            kubernetes_mount=config.vault_kubernetes_mount,
            kubernetes_role=config.vault_kubernetes_role,
            jwt_file=config.vault_kubernetes_jwt_file),
        verify=verify, namespace=config.vault_namespace, timeout=config.vault_timeout,
        observe=metrics.observe_vault)
    identity = Identity(subject=config.subject, dns_sans=tuple(config.dns_sans),
                        ip_sans=tuple(config.ip_sans), key_type=config.key_type)
    issuer = Issuer(vault=vault, identity=identity, pki_role=config.pki_role, ttl=config.ttl,
                    mode=config.pki_mode)
    return AuthManager(
        issuer=issuer, volume=Volume(config.output_dir, keep=config.keep_generations),
        password_file=config.store_password_file, metrics=metrics, log=log,
        renew_fraction=config.renew_fraction, renew_jitter=config.renew_jitter,
        backoff_initial=config.backoff_initial, backoff_max=config.backoff_max,
        published_dir=config.published_dir)


def build_source(config: AuthManagerConfig, manager: AuthManager, metrics: AuthManagerMetrics,
                 log: Any, stop: threading.Event) -> DesiredSource:
    if config.coordinated:
        from sidecar.coordinator import RotationParticipant

        return RotationParticipant.from_config(config, manager, metrics, log, stop)
    assert config.root is not None
    return StaticSource(config.root, list(config.trust), stop)


def main(argv: Sequence[str] | None = None) -> int:
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        config, once = load_config(argv, os.environ)
        check_files(config)
    except ConfigError as exc:
        return config_error(exc)
    log = configure(config.log_level)
    metrics = AuthManagerMetrics()
    manager = build_manager(config, metrics, log)
    health = None
    if not once:
        try:
            health = serve_health(config.listen, metrics.registry,
                                  healthy=lambda: manager_health(manager, config),
                                  ready=manager.readiness)
        except ConfigError as exc:
            return config_error(exc)
        if health is not None:
            log.info("listening", address=f"{health.host}:{health.port}")

    def serve() -> int:
        try:
            source = build_source(config, manager, metrics, log, stop)
        except ConfigError as exc:
            return config_error(exc)
        except RECOVERABLE as exc:
            log.error("startup_failed", error=str(exc))
            return 1
        if once:
            return run_once(manager, source, log, config.once_timeout, stop)
        log.info("started", subject=config.subject, output_dir=str(config.output_dir),
                 mode="coordinated" if config.coordinated else "static")
        try:
            manager.run(source, stop)
        finally:
            source.close(destroy=True)
        return 0

    try:
        finished, code = run_until_stopped(serve, stop)
    finally:
        if health is not None:
            health.stop()
    abandoned = {} if finished else {"abandoned": "a blocking Vault or Consul request"}
    if once:
        if code is None:
            log.error("once_failed", error="stopped before valid material was on the volume",
                      **abandoned)
            return 1
        return code
    log.info("stopped", **abandoned)
    return code or 0


def config_error(exc: ConfigError) -> int:
    """One line naming the setting, exit code 2."""
    print(f"pki-auth-manager: configuration error: {exc}", file=sys.stderr)
    return 2


def run_once(manager: AuthManager, source: DesiredSource, log: Any, timeout: float,
             stop: threading.Event | None = None) -> int:
    """Init-container mode: valid, current material on the volume, or a non-zero exit.

    Transient failures (Vault or Consul not up yet, the rotation record not there yet) are
    retried with backoff until ``timeout`` seconds have passed (exit 1). A permanent refusal
    (a Vault one, see VaultError.permanent, or a Consul ACL 403) ends it at once with exit 2:
    retrying cannot help.
    """
    deadline = time.monotonic() + timeout
    try:
        while stop is None or not stop.is_set():
            attempted: Desired | None = None
            try:
                attempted = source.desired()
                manifest = manager.reconcile(attempted)
                source.report(manifest, manager.volume.read_ack())
                break
            except RetryHeld as held:  # the record or the acknowledgement woke the wait
                source.wait(held.seconds)
                continue
            except RECOVERABLE as exc:
                kind = error_kind(exc)
                permanent = is_permanent(exc)
                delay = manager.pacer.failed(permanent, attempted, manager.clock(),
                                             manager.rng.random())
                attempt = manager.pacer.failures
                if permanent:
                    log.error("once_failed", error=str(exc), kind=kind, attempts=attempt,
                              permanent=True, action=permanent_action(exc))
                    return 2
                if time.monotonic() + delay > deadline:
                    log.error("once_failed", error=str(exc), kind=kind, attempts=attempt)
                    return 1
                log.warning("once_retrying", error=str(exc), attempt=attempt,
                            retry_in_seconds=round(delay, 2))
                source.wait(delay)
        else:
            log.error("once_failed", error="stopped before valid material was on the volume")
            return 1
    finally:
        # Keep the registration: the long-running auth manager resumes the same session.
        source.close(destroy=False)
    log.info("once_ok", generation=manifest.generation, serial=manifest.serial,
             not_after=manifest.not_after)
    return 0


def permanent_action(exc: Exception) -> str:
    """What to fix after a permanent refusal (the ``action`` of ``once_failed``)."""
    if isinstance(exc, ConsulError):
        return ("not retried: give CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE) a token whose "
                f"policy allows this (see {SIDECAR_POLICY}), then run again")
    return "not retried: fix the Vault role, policy or mount names, then run again"


def manager_health(manager: AuthManager, config: AuthManagerConfig) -> tuple[bool, str]:
    """Healthy while the loop is alive (it wakes at least every backoff_max seconds)."""
    return check_heartbeat(manager.heartbeat, max(config.backoff_max, 3600.0) * 2,
                           "reconcile loop", f"ok; last error: {manager.last_error or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
