"""Pytest fixtures for Consul: the test double, or a real Consul when CONSUL_HTTP_ADDR is set.

PYTEST_DONT_REWRITE (plain fixtures, no asserts; test modules import it directly).

Use with ``pytest_plugins = ["tests.consul_setup"]``.

* ``consul`` (function scope): a :class:`ConsulTarget` with ``url``, ``host``, ``port``,
  ``scheme``, ``token``, ``prefix`` (unique per test, e.g. ``kafka-pki-test/<uuid>/``) and
  ``double`` (the :class:`ConsulDouble`, or None against a real Consul).  Against a real
  Consul the prefix is deleted at teardown, and so are sessions whose Name starts with it.
  Tests using it must pass unchanged against a real Consul: keep every key under ``prefix``.
* ``consul_double`` (function scope): always a fresh :class:`ConsulDouble`, for fault
  injection (restart, drop_connections, expire_session, spurious wakeups ...).
* ``consul_acl`` (function scope): :class:`AclTokens`, to make tokens with HCL rules.  Against
  the real Consul when CONSUL_HTTP_ADDR is set and CONSUL_HTTP_TOKEN is a management token
  (policies and tokens made with the ACL API, deleted at teardown); otherwise against a
  double with ACLs on (default deny): never skipped.

python-consul2 reads CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN itself and lets them override the
host, port and token it is given, which would point a client meant for the double at the real
Consul.  Build clients with :func:`consul_client` (or ``ConsulTarget.client()``), which hides
those variables during construction, filters the two DeprecationWarnings and sets a timeout.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import consul as consul_lib
import pytest
import requests

from tests.doubles.consul import ConsulDouble

__all__ = ["AclTokens", "ConsulTarget", "consul_client", "operator_rules", "participant_rules",
           "real_consul_target"]

_ENV_VARS = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL", "CONSUL_HTTP_SSL_VERIFY")
_env_lock = threading.Lock()


def consul_client(
    host: str,
    port: int,
    *,
    token: str | None = None,
    scheme: str = "http",
    verify: bool | str = True,
    timeout: float | None = 30.0,
) -> Any:
    """A python-consul2 client for exactly this address, whatever the CONSUL_HTTP_* variables.

    ``timeout`` (seconds) is passed to requests; keep it above any blocking ``wait`` + wait/16.
    """
    with _env_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        saved = {name: os.environ.pop(name) for name in _ENV_VARS if name in os.environ}
        try:
            return consul_lib.Consul(
                host=host, port=port, token=token, scheme=scheme, verify=verify, timeout=timeout
            )
        finally:
            os.environ.update(saved)


@dataclass
class ConsulTarget:
    """Where a test's Consul is, and the KV prefix that test owns."""

    url: str
    host: str
    port: int
    scheme: str
    token: str | None
    prefix: str
    double: ConsulDouble | None
    verify: bool | str = True

    def key(self, name: str) -> str:
        """The full key for ``name`` under this test's prefix."""
        return self.prefix + name

    def client(self, timeout: float | None = 30.0) -> Any:
        """A python-consul2 client for this target (see :func:`consul_client`)."""
        return consul_client(
            self.host,
            self.port,
            token=self.token,
            scheme=self.scheme,
            verify=self.verify,
            timeout=timeout,
        )

    @property
    def headers(self) -> dict[str, str]:
        """Headers for raw HTTP requests (the ACL token, if any)."""
        return {"X-Consul-Token": self.token} if self.token else {}


def _new_prefix() -> str:
    return f"kafka-pki-test/{uuid.uuid4()}/"


def real_consul_target(addr: str) -> ConsulTarget:
    """A target for the Consul at ``addr`` (CONSUL_HTTP_ADDR syntax), read from the env too."""
    scheme = "https" if os.environ.get("CONSUL_HTTP_SSL", "").lower() == "true" else "http"
    if "://" not in addr:
        addr = f"{scheme}://{addr}"
    parts = urlsplit(addr)
    scheme = parts.scheme or scheme
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (8501 if scheme == "https" else 8500)
    verify: bool | str = True
    if os.environ.get("CONSUL_HTTP_SSL_VERIFY", "").lower() == "false":
        verify = False
    elif os.environ.get("CONSUL_CACERT"):
        verify = os.environ["CONSUL_CACERT"]
    return ConsulTarget(
        url=f"{scheme}://{host}:{port}",
        host=host,
        port=port,
        scheme=scheme,
        token=os.environ.get("CONSUL_HTTP_TOKEN") or None,
        prefix=_new_prefix(),
        double=None,
        verify=verify,
    )


def _cleanup_real(target: ConsulTarget) -> None:
    client = target.client(timeout=10.0)
    with contextlib.suppress(Exception):
        _, sessions = client.session.list()
        for sess in sessions or []:
            if str(sess.get("Name", "")).startswith(target.prefix):
                client.session.destroy(sess["ID"])
    client.kv.delete(target.prefix, recurse=True)


@pytest.fixture
def consul_double() -> Iterator[ConsulDouble]:
    """A fresh Consul double on 127.0.0.1 (random port), closed after the test."""
    with ConsulDouble() as double:
        yield double


@pytest.fixture
def consul(request: pytest.FixtureRequest) -> Iterator[ConsulTarget]:
    """The real Consul at CONSUL_HTTP_ADDR if set, else the double; a unique KV prefix."""
    addr = os.environ.get("CONSUL_HTTP_ADDR")
    if addr:
        target = real_consul_target(addr)
        try:
            yield target
        finally:
            _cleanup_real(target)
        return
    double: ConsulDouble = request.getfixturevalue("consul_double")
    yield ConsulTarget(
        url=double.url,
        host=double.host,
        port=double.port,
        scheme="http",
        token=double.acl_token,
        prefix=_new_prefix(),
        double=double,
    )


#: The built-in global-management policy (acl/acl.go ``ACLPolicyGlobalManagementID``).
GLOBAL_MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"


@dataclass
class AclTokens:
    """Makes Consul tokens with HCL rules on ``base`` (whose own token is a management one)."""

    base: ConsulTarget
    real: bool
    _made: list[tuple[str, str]] = field(default_factory=list)  # (policy id, accessor id)

    def token(self, rules: str) -> str:
        """A new token holding one policy with ``rules``; its SecretID."""
        name = f"kafka-pki-test-{uuid.uuid4()}"
        if self.base.double is not None:
            return self.base.double.create_token(rules, description=name, policy_name=name)
        policy = self._api("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
        token = self._api("PUT", "/v1/acl/token",
                          {"Description": name, "Policies": [{"ID": policy["ID"]}]})
        self._made.append((policy["ID"], token["AccessorID"]))
        return str(token["SecretID"])

    def target(self, token: str | None) -> ConsulTarget:
        """The base target (same prefix) used with another token."""
        return replace(self.base, token=token)

    def cleanup(self) -> None:
        for policy_id, accessor in self._made:
            with contextlib.suppress(Exception):
                self._api("DELETE", f"/v1/acl/token/{accessor}")
                self._api("DELETE", f"/v1/acl/policy/{policy_id}")

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        resp = requests.request(method, self.base.url + path, json=body,
                                headers=self.base.headers, verify=self.base.verify, timeout=10)
        resp.raise_for_status()
        return resp.json()


def _is_management(target: ConsulTarget) -> bool:
    if not target.token:
        return False
    try:
        resp = requests.get(target.url + "/v1/acl/token/self", headers=target.headers,
                            verify=target.verify, timeout=10)
    except requests.RequestException:
        return False
    if resp.status_code != 200:
        return False
    return any(p.get("ID") == GLOBAL_MANAGEMENT_POLICY_ID
               for p in resp.json().get("Policies") or [])


@pytest.fixture
def consul_acl() -> Iterator[AclTokens]:
    """Token maker: the real Consul if it has ACLs and a management token, else a double."""
    addr = os.environ.get("CONSUL_HTTP_ADDR")
    if addr:
        target = real_consul_target(addr)
        if _is_management(target):
            tokens = AclTokens(target, real=True)
            try:
                yield tokens
            finally:
                tokens.cleanup()
                _cleanup_real(target)
            return
    management = str(uuid.uuid4())
    with ConsulDouble(acl_token=management) as double:
        yield AclTokens(ConsulTarget(url=double.url, host=double.host, port=double.port,
                                     scheme="http", token=management, prefix=_new_prefix(),
                                     double=double), real=False)


_POLICIES = Path(__file__).resolve().parent.parent / "docker" / "consul"


def participant_rules(prefix: str, node_id: str) -> str:
    """The shipped participant policy (docker/consul/kafka-pki-sidecar.policy.hcl) rendered as
    docker/consul-acl-init.sh renders it."""
    text = (_POLICIES / "kafka-pki-sidecar.policy.hcl").read_text()
    return text.replace("{{prefix}}", prefix).replace("{{node_id}}", node_id)


def operator_rules(prefix: str, *, read_only: bool = False) -> str:
    """The shipped operator policy; ``read_only`` drops its write rule (the on-call variant)."""
    text = (_POLICIES / "kafka-pki-operator.policy.hcl").read_text().replace("{{prefix}}", prefix)
    if read_only:
        text = text[: text.index('key "')]
    return text
