"""``/v1/kv/<key>``: agent/kvs_endpoint.go and the KV operations of state/kvs.go it applies
(set, cas, acquire/lock, release/unlock, delete, delete-cas, delete-tree)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from tests.doubles.consul.acl import AclToken
from tests.doubles.consul.blocking import _Waiter
from tests.doubles.consul.kv import KV_MAX_VALUE_SIZE, _Entry
from tests.doubles.consul.sessions import Sessions
from tests.doubles.consul.wire import (
    _first,
    _json_response,
    _parse_uint,
    _Response,
    _RpcError,
    _text,
)

if TYPE_CHECKING:
    from tests.doubles.consul.server import _Handler


class KVEndpoint(Sessions):
    """GET/PUT/DELETE of keys (acquire and release need the session table)."""

    def _kv_endpoint(
        self,
        method: str,
        key: str,
        query: dict[str, list[str]],
        body: bytes,
        handler: _Handler,
        authz: AclToken | None = None,
    ) -> _Response:
        """kvs_endpoint.go: a single-key read needs ``key:read`` (403), lists are filtered to
        the readable keys (``FilterDirEnt``; 404 when nothing is left), a write or delete
        needs ``key:write`` on the key, a recursive delete ``KeyWritePrefix``
        (``kvsPreApply``)."""
        if authz is not None and method in ("PUT", "DELETE"):
            if method == "DELETE" and "recurse" in query:
                if not authz.allows_write_prefix(key):
                    return self._denied(authz, "key", "write", key)
            elif not authz.allows("key", key, "write"):
                return self._denied(authz, "key", "write", key)
        if method == "GET":
            return self._kv_get(key, query, handler, authz)
        if method == "PUT":
            return self._kv_put(key, query, body)
        if method == "DELETE":
            return self._kv_delete(key, query)
        return _Response(405, headers={"Allow": "GET, PUT, DELETE"})

    def _kv_get(
        self,
        key: str,
        query: dict[str, list[str]],
        handler: _Handler,
        authz: AclToken | None = None,
    ) -> _Response:
        opts = self._query_options(query)
        if isinstance(opts, _Response):
            return opts
        min_index, wait_s = opts
        if "keys" in query:
            sep = _first(query, "separator") or _first(query, "seperator")

            def compute_keys(ws: _Waiter | None) -> tuple[int, Any]:
                self._watch_prefix(ws, key)
                entries = self._prefixed(key)
                index = self._list_index(key, entries)  # the index is taken before filtering
                if authz is not None:
                    entries = [e for e in entries if authz.allows("key", e.key, "read")]
                keys: dict[str, None] = {}  # ordered set
                for e in entries:
                    cut = e.key[len(key) :].find(sep) if sep else -1
                    keys[e.key[: len(key) + cut + len(sep)] if cut > -1 else e.key] = None
                return index, list(keys)

            index, keys = self._block(min_index, wait_s, compute_keys, handler)
            if not keys and key:
                return _Response(404, headers=self._meta(index))
            return _json_response(keys, headers=self._meta(index))
        if "recurse" in query:

            def compute_list(ws: _Waiter | None) -> tuple[int, Any]:
                self._watch_prefix(ws, key)
                entries = self._prefixed(key)
                index = self._list_index(key, entries)
                if authz is not None:
                    entries = [e for e in entries if authz.allows("key", e.key, "read")]
                return index, [e.to_json() for e in entries]

            index, items = self._block(min_index, wait_s, compute_list, handler)
            if not items:
                return _Response(404, headers=self._meta(index))
            return _json_response(items, headers=self._meta(index))
        if not key:
            return _text(400, "Missing key name")
        if authz is not None and not authz.allows("key", key, "read"):
            return self._denied(authz, "key", "read", key)

        def compute_one(ws: _Waiter | None) -> tuple[int, Any]:
            self._watch_key(ws, key)
            entry = self._kv.get(key)
            if entry is None:
                return max(self._kvs_index, 1), None
            return entry.modify_index, (entry.to_json(), entry.value)

        index, found = self._block(min_index, wait_s, compute_one, handler)
        if found is None:
            return _Response(404, headers=self._meta(index))
        if "raw" in query:
            headers = self._meta(index)
            headers.update(
                {
                    "Content-Type": "text/plain",
                    "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "sandbox",
                }
            )
            return _Response(200, found[1] or b"", headers)
        return _json_response([found[0]], headers=self._meta(index))

    def _kv_put(self, key: str, query: dict[str, list[str]], body: bytes) -> _Response:
        if not key:
            return _text(400, "Missing key name")
        if sum(1 for f in ("cas", "acquire", "release") if f in query) > 1:
            return _text(400, f"Conflicting flags: {urlencode(query, doseq=True)}\n")
        flags = 0
        if "flags" in query:
            flags = _parse_uint(_first(query, "flags"))
        if len(body) > KV_MAX_VALUE_SIZE:
            return _text(
                413,
                f"Request body({len(body)} bytes) too large, max size: "
                f"{KV_MAX_VALUE_SIZE} bytes. See "
                "https://www.consul.io/docs/agent/options.html#kv_max_value_size.",
            )
        value = body or None
        with self._cond:
            if "cas" in query:
                ok = self._kv_cas(key, value, flags, _parse_uint(_first(query, "cas")))
            elif "acquire" in query:
                ok = self._kv_lock(key, value, flags, _first(query, "acquire"))
            elif "release" in query:
                ok = self._kv_unlock(key, value, flags, _first(query, "release"))
            else:
                self._write_entry(
                    _Entry(key, value, flags, session=self._session_of(key)), self._next_index()
                )
                ok = True
        return _json_response(ok)

    def _session_of(self, key: str) -> str:
        existing = self._kv.get(key)
        return existing.session if existing is not None else ""

    def _kv_cas(self, key: str, value: bytes | None, flags: int, cas: int) -> bool:
        idx = self._next_index()
        existing = self._kv.get(key)
        if cas == 0 and existing is not None:
            return False
        if cas != 0 and (existing is None or existing.modify_index != cas):
            return False
        self._write_entry(_Entry(key, value, flags, session=self._session_of(key)), idx)
        return True

    def _kv_lock(self, key: str, value: bytes | None, flags: int, session_id: str) -> bool:
        expires = self._lock_delay.get(key)
        if expires is not None:
            if expires > time.monotonic():
                return False  # rejected before Raft: no index consumed
            del self._lock_delay[key]
        idx = self._next_index()
        if not session_id:
            raise _RpcError("missing session")
        if session_id not in self._sessions:
            raise _RpcError(f'invalid session "{session_id}"')
        existing = self._kv.get(key)
        if existing is None:
            lock_index = 1
        elif existing.session == session_id:
            lock_index = existing.lock_index
        elif existing.session:
            return False
        else:
            lock_index = existing.lock_index + 1
        self._write_entry(_Entry(key, value, flags, lock_index=lock_index, session=session_id), idx)
        return True

    def _kv_unlock(self, key: str, value: bytes | None, flags: int, session_id: str) -> bool:
        idx = self._next_index()
        if not session_id:
            raise _RpcError("missing session")
        existing = self._kv.get(key)
        if existing is None or existing.session != session_id:
            return False
        self._write_entry(_Entry(key, value, flags, lock_index=existing.lock_index), idx)
        return True

    def _kv_delete(self, key: str, query: dict[str, list[str]]) -> _Response:
        if "recurse" in query and "cas" in query:
            return _text(400, f"Conflicting flags: {urlencode(query, doseq=True)}\n")
        if "recurse" not in query and not key:
            return _text(400, "Missing key name")
        with self._cond:
            idx = self._next_index()
            if "recurse" in query:
                self._delete_tree(key, idx)
                return _json_response(True)
            if "cas" in query:
                cas = _parse_uint(_first(query, "cas"))
                existing = self._kv.get(key)
                if existing is None:
                    return _json_response(True)
                if existing.modify_index != cas:
                    return _json_response(False)
            self._delete_entry(key, idx)
        return _json_response(True)
