"""Telling an empty cluster from a token that may not see it.

Consul filters what a recursive KV read returns down to the keys the token may read
(agent/kvs_endpoint.go, ``FilterDirEnt``) and answers 404 when nothing is left, so a missing,
unknown or under-privileged token sees an empty prefix, exactly like a cluster where nothing
is set yet. A direct read of one key is checked instead: 403 when the token may not read it.
``GET /v1/acl/token/self`` then says what the token is (403 ``ACL not found``: Consul knows no
such token, or none was sent).
"""

from __future__ import annotations

from pathlib import Path

from sidecar.consul_store import ConsulError, ConsulStore
from sidecar.keeper import ACTIVE_ROOT

#: What a 403 names when no token was configured.
NO_TOKEN = ("nowhere (neither CONSUL_HTTP_TOKEN nor CONSUL_HTTP_TOKEN_FILE is set, so Consul "
            "uses its anonymous token)")


def token_source(token_set: bool, token_file: str | Path | None,
                 token_name: str = "CONSUL_HTTP_TOKEN") -> str:
    """Where the token comes from, as the consul CLI resolves it: the variable (or setting)
    ``token_name``, else CONSUL_HTTP_TOKEN_FILE's file, else none."""
    if token_set:
        return token_name
    if token_file:
        return f"CONSUL_HTTP_TOKEN_FILE ({token_file})"
    return NO_TOKEN


class AccessRefused(Exception):
    """The token may not read the prefix; the message is one line for the operator."""


def check_read_access(store: ConsulStore) -> None:
    """Read ``active-root`` directly; raise :class:`AccessRefused` (one line naming the
    token's source, what Consul says it is, and the rule it needs) on a 403. Other Consul
    errors propagate as ConsulError."""
    try:
        store.get(ACTIVE_ROOT)
    except ConsulError as exc:
        if exc.reason != "forbidden":
            raise
        raise AccessRefused(refusal(store)) from None


def refusal(store: ConsulStore) -> str:
    """The one line for a token refused a read of ``store``'s prefix."""
    need = f"{store.rule(None, 'read')} (see {store.policy})"
    source = store.token_source
    try:
        info = store.token_self()
    except ConsulError as exc:
        if exc.reason != "forbidden":
            raise
        if source == NO_TOKEN:
            return (f"Consul refuses a read of {store.prefix}: token from {source}; give a "
                    f"token with {need}")
        return (f"Consul does not know the token from {source} (ACL not found: revoked, "
                f"expired or a typo); give a token with {need}")
    what = ""
    if info:
        policies = ", ".join(str(p.get("Name") or p.get("ID")) for p in info.get("Policies") or []
                             if isinstance(p, dict)) or "none"
        what = (f" (AccessorID {info.get('AccessorID')}, "
                f"description {str(info.get('Description') or '')!r}, policies: {policies})")
    return (f"Consul refuses the token from {source}{what} a read of {store.prefix}: the token "
            f"needs {need}")
