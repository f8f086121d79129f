"""All Consul access, through python-consul2, with timeouts and Consul's index semantics.

python-consul2 sets no HTTP timeout and emits two DeprecationWarnings on construction
(FIELD-NOTES); both are handled here. It also lets ``CONSUL_HTTP_ADDR``/``CONSUL_HTTP_TOKEN``
silently override its arguments, so the address and token are set explicitly after
construction. Use one ConsulStore per thread (a requests session is not thread safe).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import time
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import consul
import requests

T = TypeVar("T")

#: Consul adds up to wait/16 of jitter to a blocking query; the client allows that plus this.
TIMEOUT_MARGIN = 5.0


#: Where the sidecar's Consul ACL policy is shown (the 403 message points there): a template,
#: one policy per participant.
SIDECAR_POLICY = "docker/consul/kafka-pki-sidecar.policy.hcl"
#: The operator's (``kafka-pki``) policy.
OPERATOR_POLICY = "docker/consul/kafka-pki-operator.policy.hcl"
#: The rule a session call needs (sessions are made on the local agent's node).
SESSION_RULE = 'session_prefix "" write (or session "<agent node name>" write)'


class ConsulError(Exception):
    """A Consul request failed; ``reason`` labels it for metrics (``forbidden``: ACL 403,
    ``unavailable``, ``timeout``, ``not_found``, ``error`` for other answers, ...)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def permanent(self) -> bool:
        """An ACL refusal (403 "Permission denied" / "ACL not found"): retrying with the same
        token cannot help until someone fixes the token or its policy."""
        return self.reason == "forbidden"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One KV entry under the prefix (``key`` is relative to it)."""

    key: str
    value: bytes | None
    modify_index: int
    session: str | None = None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The prefix's entries at a Consul index."""

    index: int
    entries: Mapping[str, Entry]

    def value(self, key: str) -> bytes | None:
        entry = self.entries.get(key)
        return entry.value if entry else None

    def modify_index(self, key: str) -> int:
        """ModifyIndex for check-and-set; 0 when absent (create-only)."""
        entry = self.entries.get(key)
        return entry.modify_index if entry else 0

    def content(self) -> dict[str, bytes | None]:
        return {key: entry.value for key, entry in self.entries.items()}


@dataclasses.dataclass(frozen=True)
class KeyRead:
    """One key at a Consul index (``entry`` None: the key is absent)."""

    index: int
    entry: Entry | None

    def content(self) -> tuple[bytes | None, str | None] | None:
        """What a watcher compares: value and lock holder."""
        return None if self.entry is None else (self.entry.value, self.entry.session)


def next_index(previous: int, returned: int) -> int:
    """The index for the next blocking query, per Consul's documented client rules.

    If the index went backwards (Consul restarted, snapshot restored) reset to 0 so the next
    read is a plain read; never block on an index below 1 (it would return at once forever).
    """
    if returned < previous:
        return 0
    return max(1, returned)


def jittered_wait(wait_seconds: float, rng: random.Random) -> float:
    """Spread blocking queries of a fleet: the wait varies by up to 10% either way."""
    return max(1.0, wait_seconds * (0.9 + 0.2 * rng.random()))


def error_backoff(failures: int, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` Consul errors in a row: doubling from 0.2 s, capped
    at 30 s, jittered down to half so a fleet that failed together does not retry together."""
    return float(min(30.0, 0.2 * 2 ** min(failures, 8)) * (0.5 + rng.random() / 2))


def parse_address(addr: str) -> tuple[str, str, int]:
    """``http://host:8500``, ``https://host``, or ``host:port`` -> (scheme, host, port)."""
    if "://" not in addr:
        addr = "http://" + addr
    parsed = urllib.parse.urlsplit(addr)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"invalid Consul address {addr!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 8500)
    return parsed.scheme, parsed.hostname, port


class ConsulStore:
    """KV reads/writes and sessions under one prefix (e.g. ``kafka-pki/prod/``)."""

    def __init__(self, addr: str, prefix: str, token: str | None = None, *,
                 request_timeout: float = 10.0, verify: bool | str = True,
                 policy: str = SIDECAR_POLICY,
                 token_source: str = "CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE)",
                 datacenter: str | None = None) -> None:
        """``policy``: the example policy a 403 message points to; ``token_source``: where the
        token came from, as a 403 message names it. ``datacenter``: KV reads and writes go to
        that datacenter (``?dc=``, forwarded by the local agent over the WAN; None: the
        agent's own)."""
        scheme, host, port = parse_address(addr)
        self.addr = addr
        self.prefix = prefix.strip("/") + "/"
        self.request_timeout = request_timeout
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self._client = consul.Consul(host=host, port=port, scheme=scheme, verify=verify)
        # The library prefers the environment over its arguments; undo that.
        self._client.http = self._client.http_connect(host, port, scheme, verify, None,
                                                      timeout=request_timeout)
        self._client.token = token
        self._token = token
        self._verify = verify
        self.policy = policy
        self.token_source = token_source
        self.datacenter = datacenter

    def clone(self, datacenter: str | None = None) -> ConsulStore:
        """Another store on the same Consul and prefix, for use by another thread (in another
        datacenter if ``datacenter`` is given)."""
        return ConsulStore(self.addr, self.prefix, self._token,
                           request_timeout=self.request_timeout, verify=self._verify,
                           policy=self.policy, token_source=self.token_source,
                           datacenter=datacenter or self.datacenter)

    def local_datacenter(self) -> str:
        """The datacenter of the agent this store talks to (``/v1/agent/self``)."""
        info = self._call("read agent", lambda: self._client.agent.self(),
                          need='agent_prefix "" read')
        return str(info["Config"]["Datacenter"])

    def rule(self, key: str | None, access: str) -> str:
        """The Consul ACL rule an operation needs: ``key "<prefix><key>" write``, or on the
        whole prefix for ``key`` None."""
        if key is None:
            return f'key_prefix "{self.prefix}" {access}'
        return f'key "{self.prefix}{key}" {access}'

    def forbidden(self, what: str, detail: str, need: str | None) -> ConsulError:
        """The error for an ACL refusal: the operation, the prefix, Consul's words, the rule
        the token lacks (Consul 1.10 does not say; 1.12+ does) and where the policy is."""
        message = f"Consul {what} under {self.prefix}: permission denied ({detail})"
        if "ACL not found" in detail:
            message += "; Consul does not know this token (revoked, or a typo)"
        elif need:
            message += f"; the token needs {need}"
        return ConsulError(f"{message}; token from {self.token_source}: check it and its "
                           f"policy (see {self.policy})", "forbidden")

    def _call(self, what: str, call: Callable[[], T], timeout: float | None = None,
              need: str | None = None) -> T:
        """Run one client call; ``need`` is the ACL rule it requires (named on a 403)."""
        self._client.http.timeout = timeout or self.request_timeout
        try:
            return call()
        except requests.exceptions.Timeout:
            raise ConsulError(f"Consul {what}: timed out ({self.addr})", "timeout") from None
        except requests.exceptions.ConnectionError:
            raise ConsulError(f"Consul {what}: cannot connect to {self.addr}",
                              "unavailable") from None
        except consul.ACLPermissionDenied as exc:
            raise self.forbidden(what, str(exc).strip(), need) from None
        except consul.NotFound as exc:
            raise ConsulError(f"Consul {what}: not found ({exc})", "not_found") from None
        except consul.ConsulException as exc:
            raise ConsulError(f"Consul {what}: {type(exc).__name__}: {exc}", "error") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConsulError(f"Consul {what}: unexpected response ({exc})",
                              "bad_response") from None
        except requests.exceptions.RequestException as exc:
            raise ConsulError(f"Consul {what}: {exc}", "unavailable") from None

    def read(self, index: int = 0, wait_seconds: float | None = None) -> Snapshot:
        """Every entry under the prefix; blocks until the index passes ``index`` when > 0.

        O(entries under the prefix) per call: only the barrier keeper and ``kafka-pki status``
        read the whole prefix; participants read single keys (:meth:`get`).
        """
        wait, timeout = self._blocking(index, wait_seconds)
        new_index, items = self._call(
            "watch" if wait else "read",
            lambda: self._client.kv.get(self.prefix, index=index or None, recurse=True,
                                        wait=wait, dc=self.datacenter), timeout,
            self.rule(None, "read"))
        entries = {entry.key: entry for entry in map(self._entry, items or [])}
        return Snapshot(index=int(new_index or 0), entries=entries)

    def get(self, key: str, index: int = 0, wait_seconds: float | None = None) -> KeyRead:
        """One key (None if absent); blocks until the key changes past ``index`` when > 0.

        Consul answers a single-key blocking query with the key's own ModifyIndex and wakes it
        only when that key changes (kvs_endpoint.go ``Get``), so writes elsewhere under the
        prefix cost its watchers nothing.
        """
        wait, timeout = self._blocking(index, wait_seconds)
        new_index, item = self._call(
            f"watch {key}" if wait else f"read {key}",
            lambda: self._client.kv.get(self.prefix + key, index=index or None, wait=wait,
                                        dc=self.datacenter),
            timeout, self.rule(key, "read"))
        return KeyRead(index=int(new_index or 0), entry=self._entry(item) if item else None)

    @staticmethod
    def _blocking(index: int, wait_seconds: float | None) -> tuple[str | None, float | None]:
        """Consul's ``wait`` parameter and the client timeout for a (blocking) read."""
        if not (index > 0 and wait_seconds):
            return None, None
        return f"{int(wait_seconds)}s", wait_seconds * 17 / 16 + TIMEOUT_MARGIN

    def _entry(self, item: Mapping[str, Any]) -> Entry:
        value = item.get("Value")
        return Entry(key=str(item["Key"])[len(self.prefix):],
                     value=value if value is None else bytes(value),
                     modify_index=int(item["ModifyIndex"]), session=item.get("Session"))

    def token_self(self) -> dict[str, Any] | None:
        """What Consul knows of this store's token (``GET /v1/acl/token/self``: AccessorID,
        Description, Policies), or None when ACLs are off (401). A token Consul does not know,
        or none at all, is a ``forbidden`` ConsulError (403 ``ACL not found``)."""
        def fetch() -> dict[str, Any] | None:
            try:
                data = self._client.acl.tokens.self()
            except consul.ACLDisabled:
                return None
            return dict(data) if isinstance(data, dict) else None
        return self._call("read its token", fetch)

    def put(self, key: str, value: bytes, *, cas: int | None = None,
            acquire: str | None = None, release: str | None = None) -> bool:
        """Write; with ``cas`` only if ModifyIndex matches (0: only if absent); with
        ``acquire``/``release`` as a session lock (False: another session holds it)."""
        return bool(self._call(
            f"write {key}",
            lambda: self._client.kv.put(self.prefix + key, value, cas=cas, acquire=acquire,
                                        release=release, dc=self.datacenter),
            need=self.rule(key, "write")))

    def put_if_locked(self, key: str, value: bytes, *, cas: int | None, lock_key: str,
                      session: str) -> bool:
        """Write ``key`` only if ``lock_key`` is held by ``session`` and the key's ModifyIndex
        is ``cas`` (0: only if absent; None: whatever it is), in one Consul transaction
        (``PUT /v1/txn``: ``check-session`` then ``cas`` or ``set``), in the local datacenter.
        False: rolled back (the lock is not held by this session, absent, or the session is
        gone; or the index is stale).

        A keeper that paused between its read and its write and lost its session meanwhile
        cannot write on its old read any more: sessions do not survive an expiry or a Consul
        data loss, while a check-and-set on index 0 would succeed again after a data loss.
        """
        payload = [
            {"KV": {"Verb": "check-session", "Key": self.prefix + lock_key,
                    "Session": session}},
            {"KV": {"Verb": "set", "Key": self.prefix + key,
                    "Value": base64.b64encode(value).decode("ascii")} if cas is None else
             {"Verb": "cas", "Key": self.prefix + key, "Index": cas,
              "Value": base64.b64encode(value).decode("ascii")}},
        ]

        def transact() -> bool:
            try:
                reply = self._client.txn.put(payload)
            except consul.base.ClientError as exc:
                # python-consul2 0.1.5 raises ClientError("409 <body>") for a transaction
                # Consul rolled back (agent/txn_endpoint.go answers 409 with its Errors).
                status, _, body = str(exc).partition(" ")
                if status != "409":
                    raise
                errors = json.loads(body).get("Errors")
                if not errors:
                    raise ValueError(f"409 without Errors: {body[:200]}") from None
                # An ACL refusal is one of the transaction's errors, not a 403
                # (agent/consul/txn_endpoint.go preCheck): it must not read as "rolled back".
                for error in errors:
                    if str(error.get("What", "")).startswith("Permission denied"):
                        op_key, access = ((lock_key, "read") if error.get("OpIndex") == 0
                                          else (key, "write"))
                        raise self.forbidden(f"write {key} (holding {lock_key})",
                                             str(error["What"]),
                                             self.rule(op_key, access)) from None
                return False
            if not isinstance(reply, dict) or reply.get("Errors"):
                raise ValueError(f"transaction reply {str(reply)[:200]}")
            return True

        return self._call(f"write {key} (holding {lock_key})", transact)

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self._client.kv.delete(self.prefix + key),
                   need=self.rule(key, "write"))

    def child(self, sub: str) -> ConsulStore:
        """A store for the keys under ``<prefix><sub>`` (reads of that part of the prefix
        only), on the same Consul, for use by another thread."""
        store = self.clone()
        store.prefix = self.prefix + sub.strip("/") + "/"
        return store

    def create_session(self, name: str, ttl_seconds: int) -> str:
        """A TTL session whose keys are deleted when it dies, with no lock-delay."""
        session_id = self._call("create session", lambda: self._client.session.create(
            name=name, ttl=ttl_seconds, behavior="delete", lock_delay=0), need=SESSION_RULE)
        return str(session_id)

    def renew_session(self, session_id: str) -> bool:
        """Renew; False if Consul no longer knows the session (it expired)."""
        try:
            self._call("renew session", lambda: self._client.session.renew(session_id),
                       need=SESSION_RULE)
        except ConsulError as exc:
            if exc.reason == "not_found":
                return False
            raise
        return True

    def destroy_session(self, session_id: str) -> None:
        self._call("destroy session", lambda: self._client.session.destroy(session_id),
                   need=SESSION_RULE)


class Read(Protocol):
    """What a blocking read returns: the index to pass next and something to compare."""

    @property
    def index(self) -> int: ...

    def content(self) -> object: ...


R = TypeVar("R", bound=Read)


def watch(fetch: Callable[[int, float | None], R], wait_seconds: float,
          on_change: Callable[[R], None], on_error: Callable[[ConsulError, float], None],
          stopped: Callable[[], bool], rng: random.Random | None = None,
          sleep: Callable[[float], Any] = time.sleep,
          on_wake: Callable[[], None] | None = None) -> None:
    """Long-poll ``fetch(index, wait)`` until ``stopped()``; call ``on_change`` with each new
    content (``on_wake`` on every blocking return, changed or not).

    Same index or same content counts as no change; backs off (capped at 30 s, jittered)
    after errors and reports each one with the delay it will wait.
    """
    rng = rng or random.Random()
    index, last_content, failures = 0, None, 0
    while not stopped():
        try:
            result = fetch(index, jittered_wait(wait_seconds, rng) if index else None)
        except ConsulError as exc:
            index = 0  # continuity is unknown after a failure (restart?): plain read next
            failures += 1
            delay = error_backoff(failures, rng)
            on_error(exc, delay)
            sleep(delay)
            continue
        if index and on_wake is not None:
            on_wake()
        failures = 0
        index = next_index(index, result.index)
        content = result.content()
        if content != last_content:
            last_content = content
            on_change(result)


def watch_loop(store: ConsulStore, wait_seconds: float, on_snapshot: Callable[[Snapshot], None],
               on_error: Callable[[ConsulError, float], None],
               stopped: Callable[[], bool], rng: random.Random | None = None,
               sleep: Callable[[float], Any] = time.sleep) -> None:
    """Long-poll the whole prefix (see :func:`watch`)."""
    watch(store.read, wait_seconds, on_snapshot, on_error, stopped, rng, sleep)
