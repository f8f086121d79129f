"""Prepare a Vault for the tests, real or double, and the pytest fixtures that provide one.

``prepare(client)`` idempotently leaves a Vault with the PKI layout the project expects
(one mount per root CA, each with the ``kafka`` role). ``VaultDouble`` comes up in exactly
that state, so ``prepare`` is a no-op on it and tests can target either.

Fixtures (load with ``pytest_plugins = ["tests.vault_setup"]`` or import them):

* ``vault``: a ``VaultTarget``; a real Vault when ``VAULT_ADDR`` and ``VAULT_TOKEN`` are set
  (prepared with ``prepare``), else a fresh ``VaultDouble``. Tests using it must only rely
  on behaviour both share.
* ``vault_double``: always a fresh ``VaultDouble`` (for fault injection and auth methods).
* ``vault_versioned``: a ``VaultTarget`` for each profile of the double (``PROFILES``), or
  the real Vault alone when ``VAULT_ADDR`` and ``VAULT_TOKEN`` are set; its ``profile`` says
  what that version answers (read from ``sys/health`` for a real one). Tests of behaviour
  that differs between Vault versions use it and compare with ``target.profile``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import hvac
import hvac.exceptions
import pytest

from tests.doubles.vault import (
    DEFAULT_MOUNTS,
    DEFAULT_ROLE,
    KAFKA_ROLE_PARAMS,
    PROFILES,
    ROOT_CA_TTL,
    VaultDouble,
    VaultProfile,
    parse_duration,
    root_common_name,
)
from tests.doubles.vault.profiles import profile_for

__all__ = [
    "BROKER_ROLE",
    "CLIENT_ROLE",
    "VaultTarget",
    "least_privilege_roles",
    "prepare",
    "prepare_least_privilege",
    "vault",
    "vault_double",
    "vault_target",
    "vault_versioned",
]

_ROOT_MAX_LEASE_TTL = parse_duration(ROOT_CA_TTL)


def _has_ca(client: hvac.Client, mount: str) -> bool:
    """Whether the PKI mount already has a CA (``ca/pem`` is empty or an error otherwise)."""
    try:
        pem = client.secrets.pki.read_ca_certificate(mount_point=mount)
    except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath):
        return False
    return "BEGIN CERTIFICATE" in (pem or "")


def prepare(
    client: hvac.Client,
    mounts: Sequence[str] = DEFAULT_MOUNTS,
    role: str = DEFAULT_ROLE,
) -> None:
    """Idempotently give ``client``'s Vault the project's PKI layout.

    For each mount: enable a ``pki`` engine if missing (max_lease_ttl 87600h, tuned up if an
    existing one is lower), generate an internal EC P-256 root CA if it has none (CN
    "Kafka Root A" for ``pki_root_a`` ...), and write ``role`` with ``KAFKA_ROLE_PARAMS``.
    Needs a token allowed on sys/mounts (root in practice).
    """
    existing: dict[str, Any] = client.sys.list_mounted_secrets_engines()["data"]
    for mount in mounts:
        entry = existing.get(f"{mount}/")
        if entry is None:
            client.sys.enable_secrets_engine(
                "pki", path=mount, config={"max_lease_ttl": ROOT_CA_TTL}
            )
        elif entry.get("type") != "pki":
            raise RuntimeError(f"{mount}/ is mounted as {entry.get('type')!r}, not pki")
        elif int((entry.get("config") or {}).get("max_lease_ttl") or 0) < _ROOT_MAX_LEASE_TTL:
            client.sys.tune_mount_configuration(path=mount, max_lease_ttl=ROOT_CA_TTL)
        if not _has_ca(client, mount):
            client.secrets.pki.generate_root(
                "internal",
                root_common_name(mount),
                extra_params={"ttl": ROOT_CA_TTL, "key_type": "ec", "key_bits": 256},
                mount_point=mount,
            )
        # Written whole (a role write replaces the role); KAFKA_ROLE_PARAMS sets key_type=any,
        # without which the role is rsa-only and refuses EC CSRs on every Vault version.
        params = {k: (list(v) if isinstance(v, list) else v) for k, v in KAFKA_ROLE_PARAMS.items()}
        client.secrets.pki.create_or_update_role(role, extra_params=params, mount_point=mount)


BROKER_ROLE, CLIENT_ROLE = "kafka-broker", "kafka-client"


def least_privilege_roles(name_template: str) -> dict[str, dict[str, Any]]:
    """The PKI roles of the least-privilege set-up (docker/vault-init.sh writes the same):
    ``kafka-broker`` and ``kafka-client`` allow only ``<name_template>.kafka.test`` (plus
    localhost and IP SANs; a broker also ``<name_template>.kraft.test``, its controller
    listener's name), the template naming the caller's auth identity, e.g.
    ``{{identity.entity.aliases.<approle accessor>.metadata.role_name}}``; a client's
    certificate is not valid for TLS servers."""
    common: dict[str, Any] = {
        **KAFKA_ROLE_PARAMS,
        "allowed_domains": [f"{name_template}.kafka.test"],
        "allowed_domains_template": True,
        "allow_bare_domains": True,
        "allow_subdomains": False,
    }
    broker_domains = [f"{name_template}.kafka.test", f"{name_template}.kraft.test"]
    return {BROKER_ROLE: {**common, "allowed_domains": broker_domains},
            CLIENT_ROLE: {**common, "server_flag": False}}


def prepare_least_privilege(
    target: VaultTarget, participants: dict[str, str], mounts: Sequence[str] | None = None
) -> dict[str, tuple[str, str]]:
    """Templated roles, one policy per kind and one AppRole per participant.

    ``participants`` maps an AppRole name to "broker" or "client"; the AppRole's role_id is
    its name (as docker/vault-init.sh sets it). Each root mount gets ``least_privilege_roles``
    templated on the AppRole's ``role_name``; policy ``kafka-pki-<kind>`` allows ``sign`` on
    that kind's role only (and reading the CA chain). Returns name -> (role_id, secret_id).
    Works on the double (its Python API for policies and AppRoles) and on a real Vault.
    """
    mounts = tuple(mounts or target.mounts)
    client = target.client()
    auths = client.sys.list_auth_methods()["data"]
    if "approle/" not in auths:
        client.sys.enable_auth_method("approle")
        auths = client.sys.list_auth_methods()["data"]
    accessor = auths["approle/"]["accessor"]
    roles = least_privilege_roles(
        f"{{{{identity.entity.aliases.{accessor}.metadata.role_name}}}}"
    )
    for mount in mounts:
        for name, params in roles.items():
            client.secrets.pki.create_or_update_role(name, extra_params=params, mount_point=mount)
    credentials: dict[str, tuple[str, str]] = {}
    for kind, role in (("broker", BROKER_ROLE), ("client", CLIENT_ROLE)):
        paths = [f"{m}/sign/{role}" for m in mounts]
        reads = [f"{m}/{p}" for m in mounts for p in ("ca_chain", "ca/pem", "cert/ca_chain")]
        if target.double is not None:
            target.double.add_policy(f"kafka-pki-{kind}", paths + reads)
        else:
            hcl = "\n".join([f'path "{p}" {{ capabilities = ["update"] }}' for p in paths]
                            + [f'path "{p}" {{ capabilities = ["read"] }}' for p in reads])
            client.sys.create_or_update_policy(f"kafka-pki-{kind}", hcl)
    for name, kind in participants.items():
        policy = f"kafka-pki-{kind}"
        if target.double is not None:
            secret_id = f"secret-{name}"
            target.double.add_approle(name, secret_id, [policy], role_name=name)
        else:
            client.auth.approle.create_or_update_approle(name, token_policies=[policy])
            client.auth.approle.update_role_id(name, name)
            secret_id = client.auth.approle.generate_secret_id(name)["data"]["secret_id"]
        credentials[name] = (name, secret_id)
    return credentials


@dataclass
class VaultTarget:
    """A prepared Vault to test against: its address, a root token and the PKI layout."""

    url: str
    token: str
    mounts: tuple[str, ...] = DEFAULT_MOUNTS
    role: str = DEFAULT_ROLE
    double: VaultDouble | None = None
    _ca_cache: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def profile(self) -> VaultProfile:
        """What this Vault's version answers: the double's profile, or the one for the version
        a real Vault reports in ``sys/health``."""
        if self.double is not None:
            return self.double.profile
        return profile_for(str(self.client().sys.read_health_status(method="GET")["version"]))

    @property
    def is_double(self) -> bool:
        """True when the target is a ``VaultDouble`` (fault injection available)."""
        return self.double is not None

    def client(self, token: str | None = None, **kwargs: Any) -> hvac.Client:
        """An hvac client for the target (root token unless ``token`` is given)."""
        kwargs.setdefault("timeout", 10)
        return hvac.Client(url=self.url, token=self.token if token is None else token, **kwargs)

    def ca_pem(self, mount: str) -> str:
        """The root CA certificate of ``mount`` as PEM."""
        if self.double is not None:
            return self.double.ca_pem(mount)
        if mount not in self._ca_cache:
            self._ca_cache[mount] = self.client().secrets.pki.read_ca_certificate(mount_point=mount)
        return self._ca_cache[mount]

    def close(self) -> None:
        """Stop the double, if this target started one."""
        if self.double is not None:
            self.double.stop()

    def __enter__(self) -> VaultTarget:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _real_vault() -> bool:
    return bool(os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN"))


def vault_target(
    mounts: Sequence[str] = DEFAULT_MOUNTS, role: str = DEFAULT_ROLE, version: str = "1.17"
) -> VaultTarget:
    """A real Vault from ``VAULT_ADDR``/``VAULT_TOKEN`` (prepared), else a started double
    imitating ``version``.

    Close it (or use it as a context manager) to stop the double.
    """
    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if addr and token:
        target = VaultTarget(url=addr.rstrip("/"), token=token, mounts=tuple(mounts), role=role)
        prepare(target.client(), mounts, role)
        return target
    double = VaultDouble(mounts=mounts, role=role, version=version).start()
    return VaultTarget(
        url=double.url, token=double.root_token, mounts=tuple(mounts), role=role, double=double
    )


@pytest.fixture
def vault() -> Iterator[VaultTarget]:
    """A prepared Vault: real when VAULT_ADDR and VAULT_TOKEN are set, else a VaultDouble."""
    with vault_target() as target:
        yield target


@pytest.fixture
def vault_double() -> Iterator[VaultDouble]:
    """A fresh, prepared VaultDouble (for fault injection and auth-method tests)."""
    with VaultDouble() as double:
        yield double


@pytest.fixture(params=["server"] if _real_vault() else sorted(PROFILES))
def vault_versioned(request: pytest.FixtureRequest) -> Iterator[VaultTarget]:
    """The real Vault (VAULT_ADDR and VAULT_TOKEN set), else a double of each version."""
    with vault_target(version="1.17" if request.param == "server" else request.param) as target:
        yield target
