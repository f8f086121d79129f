"""Prepare a Vault for the tests, and the pytest fixtures that provide one.

Every test talks to a real Vault API: the server at ``VAULT_ADDR`` with the root token
``VAULT_TOKEN`` when both are set, else an OpenBao dev server (``tests.openbao``) that the
session fixture ``vault_server`` starts once and stops at the end.

``prepare(client)`` idempotently leaves a Vault with the PKI layout the project expects
(one mount per root CA, each with the ``kafka`` role).

Fixtures (load with ``pytest_plugins = ["tests.vault_setup"]`` or import them):

* ``vault``: a prepared ``VaultTarget`` on that server.
* ``faulty_vault``: a prepared ``FaultyVault``: the same server behind the fault proxy
  (``tests.doubles.vault.VaultFaults``: outages, 5xx, hangs, bad certificates, the request
  log), plus the set-up a test needs on the server itself (mounts, issuers, policies,
  AppRoles, Kubernetes roles, tokens).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import hvac
import hvac.exceptions
import pytest
from cryptography import x509

from tests.doubles.vault import PROFILES, VaultFaults, VaultProfile, profile_for
from tests.kube_review import TokenReviewer
from tests.openbao import OpenBao

__all__ = [
    "BROKER_ROLE",
    "CLIENT_ROLE",
    "DEFAULT_MOUNTS",
    "DEFAULT_ROLE",
    "KAFKA_ROLE_PARAMS",
    "PROFILES",
    "FaultyVault",
    "VaultTarget",
    "faulty_vault",
    "least_privilege_roles",
    "prepare",
    "prepare_least_privilege",
    "server",
    "vault",
    "vault_server",
    "vault_target",
]

DEFAULT_MOUNTS: tuple[str, ...] = ("pki_root_a", "pki_root_b")
DEFAULT_ROLE = "kafka"
ROOT_CA_TTL = "87600h"
_ROOT_MAX_LEASE_TTL = 87600 * 3600
#: The ``kafka`` role every root mount gets. ``key_type=any``: it signs the sidecar's EC CSRs
#: (without it the role is rsa-only); it cannot ``issue`` (the server picks no key type).
KAFKA_ROLE_PARAMS: dict[str, Any] = {
    "allowed_domains": ["kafka.test", "localhost"],
    "allow_subdomains": True,
    "allow_localhost": True,
    "allow_ip_sans": True,
    "allow_bare_domains": True,
    "key_type": "any",
    "max_ttl": "72h",
    "ttl": "24h",
    "ou": ["kafka"],
    "organization": ["Example"],
}


def root_common_name(mount: str) -> str:
    """The CN of a mount's root CA: ``pki_root_a`` -> "Kafka Root A"."""
    if mount.startswith("pki_root_") and len(mount) > len("pki_root_"):
        return "Kafka Root " + mount[len("pki_root_") :].upper()
    return f"Kafka Root {mount}"


_shared: OpenBao | None = None


def server() -> tuple[str, str]:
    """The Vault the tests use: (address, root token). ``VAULT_ADDR``/``VAULT_TOKEN`` when
    set, else one OpenBao dev server for the process (started now if needed; stopped by the
    ``vault_server`` fixture, or at exit)."""
    global _shared
    addr, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if addr and token:
        return addr.rstrip("/"), token
    if _shared is None:
        _shared = OpenBao().start()
        atexit.register(_shared.stop)
    return _shared.url, _shared.root_token


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
        _write_role(client, mount, role)


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
        hcl = "\n".join([f'path "{p}" {{ capabilities = ["update"] }}' for p in paths]
                        + [f'path "{p}" {{ capabilities = ["read"] }}' for p in reads])
        client.sys.create_or_update_policy(f"kafka-pki-{kind}", hcl)
    for name, kind in participants.items():
        client.auth.approle.create_or_update_approle(name, token_policies=[f"kafka-pki-{kind}"])
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
    #: The fault proxy and set-up helpers, when the target is one (``url`` is the proxy's).
    faults: FaultyVault | None = None
    _ca_cache: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def profile(self) -> VaultProfile:
        """The texts this server's version answers with (from ``sys/health``)."""
        return profile_for(str(self.client().sys.read_health_status(method="GET")["version"]))

    def client(self, token: str | None = None, **kwargs: Any) -> hvac.Client:
        """An hvac client for the target (root token unless ``token`` is given)."""
        kwargs.setdefault("timeout", 10)
        return hvac.Client(url=self.url, token=self.token if token is None else token, **kwargs)

    def ca_pem(self, mount: str) -> str:
        """The root CA certificate of ``mount`` as PEM."""
        if mount not in self._ca_cache:
            self._ca_cache[mount] = self.client().secrets.pki.read_ca_certificate(mount_point=mount)
        return self._ca_cache[mount]

    def close(self) -> None:
        """Stop the fault proxy, if this target has one."""
        if self.faults is not None:
            self.faults.stop()

    def __enter__(self) -> VaultTarget:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class FaultyVault(VaultFaults):
    """The tests' Vault behind the fault proxy (``url`` is the proxy's), with the set-up
    helpers tests need on the server itself; ``start()`` prepares ``mounts``."""

    def __init__(self, upstream: str, root_token: str, mounts: Sequence[str] = DEFAULT_MOUNTS,
                 role: str = DEFAULT_ROLE) -> None:
        super().__init__(upstream)
        self.root_token, self.role, self.mounts = root_token, role, list(mounts)
        self._reviewer: TokenReviewer | None = None

    def start(self) -> FaultyVault:
        prepare(self.admin(), self.mounts, self.role)
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        if self._reviewer is not None:
            self._reviewer.stop()
            self._reviewer = None

    def __enter__(self) -> FaultyVault:
        return self.start()

    def target(self, mounts: Sequence[str] | None = None) -> VaultTarget:
        """A ``VaultTarget`` through the proxy (the mounts prepared here unless given)."""
        return VaultTarget(url=self.url, token=self.root_token,
                           mounts=tuple(self.mounts if mounts is None else mounts),
                           role=self.role, faults=self)

    def admin(self) -> hvac.Client:
        """A root client straight to the server (not logged, no faults)."""
        return hvac.Client(url=self.upstream, token=self.root_token, timeout=30)

    def ca_cert(self, ref: str) -> x509.Certificate:
        """The root of a mount (``pki_root_a``) or of an issuer (``pki:root-a``)."""
        mount, _, issuer = ref.partition(":")
        path = f"{mount}/issuer/{issuer}/json" if issuer else f"{mount}/cert/ca"
        pem = self.admin().read(path)["data"]["certificate"]
        return x509.load_pem_x509_certificate(pem.encode())

    def ca_pem(self, ref: str) -> str:
        return self.admin().secrets.pki.read_ca_certificate(mount_point=ref)

    def add_mount(self, mount: str, *, with_root: bool = True) -> None:
        """A fresh PKI mount (one left by an earlier test is removed first) with the role;
        with its own root unless ``with_root=False`` (then add issuers)."""
        admin = self.admin()
        if f"{mount}/" in admin.sys.list_mounted_secrets_engines()["data"]:
            admin.sys.disable_secrets_engine(mount)
        if with_root:
            prepare(admin, (mount,), self.role)
        else:
            admin.sys.enable_secrets_engine("pki", path=mount,
                                            config={"max_lease_ttl": ROOT_CA_TTL})
            _write_role(admin, mount, self.role)
        if mount not in self.mounts:
            self.mounts.append(mount)

    def add_issuer(self, mount: str, name: str, *, common_name: str | None = None) -> str:
        """A new root issuer ``name`` in ``mount`` (the mount's first becomes its default)."""
        answer = self.admin().write_data(f"{mount}/issuers/generate/root/internal", data={
            "common_name": common_name or f"Kafka Root {name}", "issuer_name": name,
            "ttl": ROOT_CA_TTL, "key_type": "ec", "key_bits": 256})
        return str(answer["data"]["issuer_id"])

    def set_default_issuer(self, mount: str, ref: str) -> None:
        self.admin().write_data(f"{mount}/config/issuers", data={"default": ref})

    def add_policy(self, name: str, paths: Sequence[str]) -> None:
        """A policy allowing every capability on ``paths`` (globs as Vault has them)."""
        hcl = "\n".join(f'path "{p}" {{ capabilities = ["create", "read", "update", "list"] }}'
                        for p in paths)
        self.admin().sys.create_or_update_policy(name, hcl)

    def _enable_auth(self, method: str) -> None:
        admin = self.admin()
        if f"{method}/" not in admin.sys.list_auth_methods()["data"]:
            admin.sys.enable_auth_method(method)

    def add_approle(self, role_id: str, secret_id: str, policies: Sequence[str] = (),
                    token_ttl: str = "1h", *, role_name: str | None = None) -> None:
        """An AppRole (named ``role_name``, else ``role_id``) logging in with this pair."""
        self._enable_auth("approle")
        name, approle = role_name or role_id, self.admin().auth.approle
        approle.delete_role(name)  # with its secret_ids: an earlier run's would clash
        approle.create_or_update_approle(name, token_policies=list(policies),
                                         token_ttl=token_ttl)
        approle.update_role_id(name, role_id)
        self.admin().write_data(f"auth/approle/role/{name}/custom-secret-id",
                                data={"secret_id": secret_id})

    def add_kubernetes_role(self, role: str, jwt_file: Path, policies: Sequence[str] = (),
                            token_ttl: str = "1h") -> None:
        """Kubernetes auth through a TokenReview stand-in that accepts the service-account
        token it writes to ``jwt_file`` (account kafka/kafka-pki-sidecar)."""
        if self._reviewer is None:
            self._reviewer = TokenReviewer().start()
        self._enable_auth("kubernetes")
        admin = self.admin()
        admin.write_data("auth/kubernetes/config", data={
            "kubernetes_host": self._reviewer.url, "disable_local_ca_jwt": True,
            "kubernetes_ca_cert": self._reviewer.ca_pem})
        admin.write_data(f"auth/kubernetes/role/{role}", data={
            "bound_service_account_names": ["kafka-pki-sidecar"],
            "bound_service_account_namespaces": ["kafka"],
            "token_policies": list(policies), "token_ttl": token_ttl})
        jwt_file.write_text(self._reviewer.token("kafka", "kafka-pki-sidecar"))

    def create_token(self, policies: Sequence[str] = ("default",), ttl: str = "1h", *,
                     renewable: bool = True) -> str:
        """A new orphan token from root."""
        answer = self.admin().auth.token.create_orphan(policies=list(policies), ttl=ttl,
                                                       renewable=renewable)
        return str(answer["auth"]["client_token"])

    def revoke_token(self, token: str) -> None:
        self.admin().auth.token.revoke(token)


def _write_role(client: hvac.Client, mount: str, role: str) -> None:
    """Written whole: a role write replaces the role (so a test's changes do not last)."""
    params = {k: (list(v) if isinstance(v, list) else v) for k, v in KAFKA_ROLE_PARAMS.items()}
    client.secrets.pki.create_or_update_role(role, extra_params=params, mount_point=mount)


def vault_target(mounts: Sequence[str] = DEFAULT_MOUNTS, role: str = DEFAULT_ROLE) -> VaultTarget:
    """The tests' Vault (``server()``), prepared with ``mounts`` and ``role``."""
    url, token = server()
    target = VaultTarget(url=url, token=token, mounts=tuple(mounts), role=role)
    prepare(target.client(), mounts, role)
    return target


@pytest.fixture(scope="session")
def vault_server() -> Iterator[tuple[str, str]]:
    """The session's Vault: (address, root token); an OpenBao it started is stopped at the end."""
    yield server()
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture
def vault(vault_server: tuple[str, str]) -> Iterator[VaultTarget]:
    """The tests' Vault, prepared."""
    with vault_target() as target:
        yield target


@pytest.fixture
def faulty_vault(vault_server: tuple[str, str]) -> Iterator[FaultyVault]:
    """The tests' Vault, prepared, behind a fresh fault proxy."""
    with FaultyVault(*vault_server) as proxy:
        yield proxy
