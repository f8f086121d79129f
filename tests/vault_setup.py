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
    "VaultTarget",
    "prepare",
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
