"""``PUT /v1/txn``: KV transactions, all or nothing (agent/txn_endpoint.go,
agent/consul/txn_endpoint.go, agent/consul/state/txn.go)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from tests.doubles.consul.acl import AclToken
from tests.doubles.consul.kv import KV_MAX_VALUE_SIZE, _Entry, _radix_key
from tests.doubles.consul.sessions import Sessions
from tests.doubles.consul.txn_codec import _decode_txn_ops, _go_quote, _TxnKVOp
from tests.doubles.consul.wire import _json_response, _Response, _RpcError, _text

#: agent/txn_endpoint.go ``maxTxnOps`` (Consul 1.10; later versions raised it to 128).
MAX_TXN_OPS = 64
#: agent/txn_endpoint.go ``isWrite``: a transaction with one of these goes through Raft.
_TXN_WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock",
                              "unlock"})



class Transactions(Sessions):
    """The transaction endpoint: pre-checks, dispatch on a copy of the KV table, commit."""

    def _txn_endpoint(
        self,
        method: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
        authz: AclToken | None = None,
    ) -> _Response:
        """``PUT /v1/txn``: agent/txn_endpoint.go ``Txn`` and ``convertOps``.

        The body is decoded and checked first (400/413, nothing applied), then every KV op is
        pre-checked (agent/consul/txn_endpoint.go ``preCheck`` -> kvs_endpoint.go
        ``kvsPreApply``: a missing key, lock-delay; 409 before Raft, no index consumed).  A
        transaction with a write goes through Raft (``Txn.Apply``): it consumes one index
        whether it commits or rolls back; one with reads only is answered from the state store
        (``Txn.Read``) with no index.  Every op runs in order against the transaction's own
        view (agent/consul/state/txn.go ``txnDispatch``: errors are collected for every op,
        the run goes on), and the changes are committed only if none failed (``TxnRW``).
        Only KV ops are modelled: an op naming Node, Service or Check is a 500 of the double.

        ACLs are checked per op in ``preCheck`` (kvs_endpoint.go ``kvsPreApply``): delete-tree
        needs ``KeyWritePrefix``, check-session and check-index ``key:read``, get and
        get-tree nothing (their results are filtered to readable keys), every other verb
        (check-not-exists too) ``key:write``.  A refusal is not a 403: it is one of the
        transaction's errors (409, ``What`` the ACL error text).
        """
        if method != "PUT":
            return _text(405, f"method {method} not allowed")
        # convertOps: the request may not exceed txn_max_req_len (default: kv_max_value_size).
        if len(body) > KV_MAX_VALUE_SIZE:
            return _text(413, f"Request body too large, max size: {KV_MAX_VALUE_SIZE} bytes")
        ops = _decode_txn_ops(body)
        if isinstance(ops, _Response):
            return ops
        if len(ops) > MAX_TXN_OPS:
            return _text(
                413, f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})"
            )
        kv_ops: list[tuple[int, _TxnKVOp]] = []
        writes = 0
        for i, op in enumerate(ops):
            if op is None:
                continue  # convertOps has no default case: an op of no known kind is dropped
            if not isinstance(op, _TxnKVOp):
                raise _RpcError(f"consul double: {op} operations in /v1/txn are not modelled")
            if len(op.value or b"") > KV_MAX_VALUE_SIZE:
                return _text(
                    413,
                    f"Value for key {_go_quote(op.key)} is too large "
                    f"({len(op.value or b'')} > {KV_MAX_VALUE_SIZE} bytes)",
                )
            writes += op.verb in _TXN_WRITE_VERBS
            kv_ops.append((i, op))
        # Txn.Apply/Txn.Read -> preCheck, before Raft (OpIndex counts the ops as converted).
        errors: list[dict[str, Any]] = []
        with self._cond:
            for i, (_, op) in enumerate(kv_ops):
                if op.key == "" and op.verb != "delete-tree":
                    errors.append({"OpIndex": i, "What": "Must provide key"})
                elif authz is not None and (refusal := self._txn_acl(authz, op)):
                    errors.append({"OpIndex": i, "What": refusal})
                elif op.verb == "lock" and op.key in self._lock_delay:
                    if self._lock_delay[op.key] <= time.monotonic():
                        del self._lock_delay[op.key]
                    else:
                        errors.append(
                            {
                                "OpIndex": i,
                                "What": f"failed to lock key {_go_quote(op.key)} due to lock delay",
                            }
                        )
            if not errors:
                idx = self._next_index() if writes else 0
                results, errors, changes = self._txn_dispatch([op for _, op in kv_ops], idx)
                if not errors:
                    # TxnRW: commit.  Replaying the changes through the ordinary write paths
                    # gives the same entries and fires the same watches as a KV write would
                    # (memdb closes the channels of every node the transaction copied).
                    for change in changes:
                        if change[0] == "set":
                            entry = change[1]
                            assert isinstance(entry, _Entry)
                            self._write_entry(replace(entry), idx)
                        elif change[0] == "delete":
                            self._delete_entry(str(change[1]), idx)
                        else:
                            self._delete_tree(str(change[1]), idx)
        if authz is not None and not errors:
            results = [r for r in results if authz.allows("key", r["KV"]["Key"], "read")]
        status = 409 if errors else 200
        reply: dict[str, Any] = {
            "Results": None if errors else results,
            "Errors": errors or None,
        }
        hdrs = {}
        if not writes:
            # Txn.Read: structs.TxnReadResponse embeds QueryMeta (its fields appear in the
            # body) and the handler sets X-Consul-LastContact / X-Consul-KnownLeader.
            reply.update({"Index": 0, "LastContact": 0, "KnownLeader": True,
                          "ConsistencyLevel": ""})
            hdrs = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        return _json_response(reply, status, hdrs)

    def _txn_acl(self, authz: AclToken, op: _TxnKVOp) -> str | None:
        """kvsPreApply's ACL switch for one op: the refusal text, or None."""
        if op.verb == "delete-tree":
            ok = authz.allows_write_prefix(op.key)
            access = "write"
        elif op.verb in ("get", "get-tree"):
            return None
        else:
            access = "read" if op.verb in ("check-session", "check-index") else "write"
            ok = authz.allows("key", op.key, access)
        return None if ok else self._denial(authz, "key", access, op.key)

    def _txn_dispatch(
        self, ops: list[_TxnKVOp], idx: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, Any]]]:
        """state/txn.go ``txnDispatch`` + ``txnKVS`` on a copy of the KV table: the results,
        the errors (one per failed op, in order) and the changes to commit."""
        work = dict(self._kv)
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        changes: list[tuple[str, Any]] = []

        def store(entry: _Entry, update_session: bool) -> _Entry:
            """kvsSetTxn: keep CreateIndex (and the session unless locking), skip identical."""
            existing = work.get(entry.key)
            entry.create_index = existing.create_index if existing is not None else idx
            if not update_session:
                entry.session = existing.session if existing is not None else ""
            if existing is not None and existing.same_content(entry):
                entry.modify_index = existing.modify_index
                return entry
            entry.modify_index = idx
            work[entry.key] = entry
            changes.append(("set", entry))
            return entry

        def delete(key: str) -> None:
            if work.pop(key, None) is not None:
                changes.append(("delete", key))

        for op_index, op in enumerate(ops):
            key, verb = op.key, op.verb
            existing = work.get(key)
            qkey = _go_quote(key)
            error: str | None = None
            result: _Entry | None = None
            with_value = False
            if verb == "set":
                result = store(_Entry(key, op.value, op.flags), False)
            elif verb == "cas":
                if (op.index == 0 and existing is not None) or (
                    op.index != 0 and (existing is None or existing.modify_index != op.index)
                ):
                    error = f"failed to set key {qkey}, index is stale"
                else:
                    result = store(_Entry(key, op.value, op.flags), False)
            elif verb == "lock":
                if not op.session:
                    error = "missing session"
                elif op.session not in self._sessions:
                    error = f"invalid session {_go_quote(op.session)}"
                elif existing is not None and existing.session not in ("", op.session):
                    error = f"failed to lock key {qkey}, lock is already held"
                else:
                    if existing is None:
                        lock_index = 1
                    elif existing.session == op.session:
                        lock_index = existing.lock_index
                    else:
                        lock_index = existing.lock_index + 1
                    result = store(
                        _Entry(key, op.value, op.flags, lock_index=lock_index, session=op.session),
                        True,
                    )
            elif verb == "unlock":
                if not op.session:
                    error = "missing session"
                elif existing is None or existing.session != op.session:
                    error = (
                        f"failed to unlock key {qkey}, lock isn't held, or is held by another "
                        "session"
                    )
                else:
                    result = store(
                        _Entry(key, op.value, op.flags, lock_index=existing.lock_index), True
                    )
            elif verb == "get":
                if existing is None:
                    error = f"key {qkey} doesn't exist"
                result, with_value = existing, True
            elif verb == "get-tree":
                for name in sorted((k for k in work if k.startswith(key)), key=_radix_key):
                    results.append({"KV": work[name].to_json()})
            elif verb == "check-session":
                if existing is None:
                    error = f"failed to check session, key {qkey} doesn't exist"
                elif existing.session != op.session:
                    error = (
                        f"failed session check for key {qkey}, current session "
                        f"{_go_quote(existing.session)} != {_go_quote(op.session)}"
                    )
                result = existing
            elif verb == "check-index":
                if existing is None:
                    error = f"failed to check index, key {qkey} doesn't exist"
                elif existing.modify_index != op.index:
                    error = (
                        f"failed index check for key {qkey}, current modify index "
                        f"{existing.modify_index} != {op.index}"
                    )
                result = existing
            elif verb == "check-not-exists":
                if existing is not None:
                    error = f"key {qkey} exists"
            elif verb == "delete":
                delete(key)
            elif verb == "delete-cas":
                if existing is not None and existing.modify_index != op.index:
                    error = f"failed to delete key {qkey}, index is stale"
                else:
                    delete(key)
            elif verb == "delete-tree":
                victims = [k for k in work if k.startswith(key)]
                for name in victims:
                    del work[name]
                if victims:
                    changes.append(("delete-tree", key))
            else:
                error = f"unknown KV verb {_go_quote(verb)}"
            if error is not None:
                errors.append({"OpIndex": op_index, "What": error})
            elif result is not None:
                # txnKVS: a get keeps the value, every other verb returns a copy without it.
                out = result.to_json()
                if not with_value:
                    out["Value"] = None
                results.append({"KV": out})
        return results, errors, changes
