"""All Consul access, through python-consul2, with timeouts and Consul's index semantics.

python-consul2 sets no HTTP timeout and emits two DeprecationWarnings on construction
(FIELD-NOTES); both are handled here. It also lets ``CONSUL_HTTP_ADDR``/``CONSUL_HTTP_TOKEN``
silently override its arguments, so the address and token are set explicitly after
construction. Use one ConsulStore per thread (a requests session is not thread safe).
"""

from __future__ import annotations

import dataclasses
import random
import time
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import consul
import requests

T = TypeVar("T")

#: Consul adds up to wait/16 of jitter to a blocking query; the client allows that plus this.
TIMEOUT_MARGIN = 5.0


class ConsulError(Exception):
    """A Consul request failed; ``reason`` labels it for metrics."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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
                 request_timeout: float = 10.0, verify: bool | str = True) -> None:
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

    def clone(self) -> ConsulStore:
        """Another store on the same Consul and prefix, for use by another thread."""
        return ConsulStore(self.addr, self.prefix, self._token,
                           request_timeout=self.request_timeout, verify=self._verify)

    def _call(self, what: str, call: Callable[[], T], timeout: float | None = None) -> T:
        self._client.http.timeout = timeout or self.request_timeout
        try:
            return call()
        except requests.exceptions.Timeout:
            raise ConsulError(f"Consul {what}: timed out ({self.addr})", "timeout") from None
        except requests.exceptions.ConnectionError:
            raise ConsulError(f"Consul {what}: cannot connect to {self.addr}",
                              "unavailable") from None
        except consul.ACLPermissionDenied as exc:
            raise ConsulError(f"Consul {what}: permission denied ({exc}); check "
                              "CONSUL_HTTP_TOKEN's policy", "forbidden") from None
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
        """Every entry under the prefix; blocks until the index passes ``index`` when > 0."""
        wait = f"{int(wait_seconds)}s" if (index > 0 and wait_seconds) else None
        timeout = ((wait_seconds or 0) * 17 / 16 + TIMEOUT_MARGIN) if wait else None
        new_index, items = self._call(
            "watch" if wait else "read",
            lambda: self._client.kv.get(self.prefix, index=index or None, recurse=True,
                                        wait=wait), timeout)
        entries: dict[str, Entry] = {}
        for item in items or []:
            key = str(item["Key"])[len(self.prefix):]
            value = item.get("Value")
            entries[key] = Entry(key=key, value=value if value is None else bytes(value),
                                 modify_index=int(item["ModifyIndex"]),
                                 session=item.get("Session"))
        return Snapshot(index=int(new_index or 0), entries=entries)

    def put(self, key: str, value: bytes, *, cas: int | None = None,
            acquire: str | None = None) -> bool:
        """Write; with ``cas`` only if ModifyIndex matches (0: only if absent)."""
        return bool(self._call(
            f"write {key}",
            lambda: self._client.kv.put(self.prefix + key, value, cas=cas, acquire=acquire)))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self._client.kv.delete(self.prefix + key))

    def create_session(self, name: str, ttl_seconds: int) -> str:
        """A TTL session whose keys are deleted when it dies, with no lock-delay."""
        session_id = self._call("create session", lambda: self._client.session.create(
            name=name, ttl=ttl_seconds, behavior="delete", lock_delay=0))
        return str(session_id)

    def renew_session(self, session_id: str) -> bool:
        """Renew; False if Consul no longer knows the session (it expired)."""
        try:
            self._call("renew session", lambda: self._client.session.renew(session_id))
        except ConsulError as exc:
            if exc.reason == "not_found":
                return False
            raise
        return True

    def destroy_session(self, session_id: str) -> None:
        self._call("destroy session", lambda: self._client.session.destroy(session_id))


def watch_loop(store: ConsulStore, wait_seconds: float, on_snapshot: Callable[[Snapshot], None],
               on_error: Callable[[ConsulError, float], None],
               stopped: Callable[[], bool], rng: random.Random | None = None,
               sleep: Callable[[float], Any] = time.sleep) -> None:
    """Long-poll the prefix until ``stopped()``; call ``on_snapshot`` with each new content.

    Same index or same content counts as no change; backs off (capped at 30 s, jittered)
    after errors and reports each one with the delay it will wait.
    """
    rng = rng or random.Random()
    index, last_content, failures = 0, None, 0
    while not stopped():
        try:
            snapshot = store.read(index, jittered_wait(wait_seconds, rng) if index else None)
        except ConsulError as exc:
            index = 0  # continuity is unknown after a failure (restart?): plain read next
            failures += 1
            delay = min(30.0, 0.2 * 2 ** min(failures, 8)) * (0.5 + rng.random() / 2)
            on_error(exc, delay)
            sleep(delay)
            continue
        failures = 0
        index = next_index(index, snapshot.index)
        content = snapshot.content()
        if content != last_content:
            last_content = content
            on_snapshot(snapshot)
