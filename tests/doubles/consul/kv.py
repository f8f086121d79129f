"""The KV store: entries, the radix tree memdb keeps them in, watch scoping, index rules and
tombstones (agent/consul/state/kvs.go, go-immutable-radix).

:class:`KVStore` holds the one Raft-like index every write consumes, the KV table index (the
last KV write or delete anywhere), the tombstones of deleted keys and, in ``_keys``, the
sorted radix keys that stand in for memdb's tree: which node's channel a read watches and
which channels a write closes are derived from them (see ``_Waiter`` in
``tests.doubles.consul.blocking``).
"""

from __future__ import annotations

import base64
import bisect
from dataclasses import dataclass
from typing import Any

from tests.doubles.consul.blocking import BlockingQueries, _Waiter

KV_MAX_VALUE_SIZE = 512 * 1024


@dataclass
class _Entry:
    key: str
    value: bytes | None
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0
    session: str = ""

    def same_content(self, other: _Entry) -> bool:
        return (
            self.value == other.value
            and self.flags == other.flags
            and self.lock_index == other.lock_index
            and self.session == other.session
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value is not None else None,
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


def _radix_key(key: str) -> bytes:
    """The bytes memdb indexes a KV key under: UTF-8 plus the NUL that StringFieldIndex adds."""
    return key.encode("utf-8", "surrogatepass") + b"\0"


def _lcp(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i



class KVStore(BlockingQueries):
    """The KV table and the Raft index, with write primitives that fire what memdb would."""

    _raft_index: int
    _kv: dict[str, _Entry]
    _keys: list[bytes]  # sorted _radix_key of every key: the memdb radix tree
    _tombstones: dict[str, int]
    _kvs_index: int
    _leaf_watch: dict[bytes, set[_Waiter]]  # a found key's leaf channel
    _node_watch: dict[bytes, set[_Waiter]]  # the channel of the radix node at a path

    def kv_snapshot(self) -> dict[str, bytes | None]:
        """The KV store as ``{key: value}``, for assertions."""
        with self._cond:
            return {k: e.value for k, e in sorted(self._kv.items())}

    def reap_tombstones(self) -> None:
        """Forget delete tombstones (Consul reaps them after tombstone_ttl): list indexes of a
        prefix whose newest key was deleted may then go backwards."""
        with self._cond:
            self._tombstones.clear()

    def _next_index(self) -> int:
        self._raft_index += 1
        return self._raft_index

    def _watch_key(self, ws: _Waiter | None, key: str) -> None:
        """kvsGetTxn's ``firstWatchWithTxn`` -> go-immutable-radix ``Node.GetWatch``.

        A found key gives its leaf's channel.  A missing key gives the channel of the last
        radix node the search visited (``watch = n.mutateCh`` as it descends).
        """
        kb = _radix_key(key)
        if key in self._kv:
            self._add_watch(ws, self._leaf_watch, kb)
        else:
            self._add_watch(ws, self._node_watch, self._radix_watch(kb, exact=True))

    def _watch_prefix(self, ws: _Waiter | None, prefix: str) -> None:
        """kvsListEntriesTxn / KVSListKeys: ``tx.Get(kvs, id_prefix)`` + ``ws.Add(WatchCh())``,
        i.e. go-immutable-radix ``Node.SeekPrefixWatch``."""
        pb = prefix.encode("utf-8", "surrogatepass")
        self._add_watch(ws, self._node_watch, self._radix_watch(pb, exact=False))

    def _radix_watch(self, q: bytes, *, exact: bool) -> bytes:
        """The path of the radix node whose channel GetWatch/SeekPrefixWatch returns for q.

        The tree's nodes are the root, one leaf node per key and one node at each branch
        point (the common prefix of two neighbouring keys).  A prefix search that reaches
        keys stops at the node of their common prefix (or the root for an empty prefix).
        Otherwise the search stops, having matched m bytes at most: at the root if m == 0,
        else at the node covering the keys that share those m bytes (the node at q[:m] when
        it is a branch point, else the child whose edge label diverges from q).
        """
        keys = self._keys
        if not exact:
            if not q:
                return b""
            found = self._subtree_root(q)
            if found is not None:
                return found
        m = self._neighbour_lcp(q, bisect.bisect_left(keys, q))
        if m == 0:
            return b""
        root = self._subtree_root(q[:m])
        assert root is not None
        return root

    def _subtree_root(self, prefix: bytes) -> bytes | None:
        """The path of the node whose subtree is exactly the keys starting with prefix."""
        keys = self._keys
        lo = bisect.bisect_left(keys, prefix)
        if lo == len(keys) or not keys[lo].startswith(prefix):
            return None
        hi = bisect.bisect_left(keys, prefix + b"\xff", lo)  # no UTF-8 byte is 0xff
        first, last = keys[lo], keys[hi - 1]
        return first[: _lcp(first, last)]

    def _neighbour_lcp(self, q: bytes, pos: int) -> int:
        """Longest common prefix of q with any key, q being absent and sorting at pos."""
        keys = self._keys
        m = _lcp(q, keys[pos - 1]) if pos > 0 else 0
        if pos < len(keys):
            m = max(m, _lcp(q, keys[pos]))
        return m

    def _path_watchers(self, kb: bytes, into: set[_Waiter]) -> None:
        """Watchers of nodes on kb's path: ``writeNode`` copies each of them."""
        watch = self._node_watch
        if not watch:
            return
        for i in range(len(kb) + 1):
            bucket = watch.get(kb[:i])
            if bucket:
                into |= bucket

    def _kv_set_key(self, key: str) -> None:
        """Insert or update key in the radix tree and fire the channels memdb would close."""
        kb = _radix_key(key)
        keys = self._keys
        fired = set(self._any_watch)
        self._path_watchers(kb, fired)
        fired |= self._leaf_watch.get(kb, set())
        pos = bisect.bisect_left(keys, kb)
        if pos == len(keys) or keys[pos] != kb:
            # iradix insert: a new key whose path leaves an edge part-way splits that edge's
            # child node, which writeNode copies (its channel closes).
            m = self._neighbour_lcp(kb, pos)
            if m:
                child = self._subtree_root(kb[:m])
                if child is not None and len(child) > m:
                    fired |= self._node_watch.get(child, set())
            keys.insert(pos, kb)
        self._fire(fired)

    def _kv_delete_keys(self, prefix: bytes, exact: bool) -> None:
        """Remove one key (exact) or every key under prefix, firing what memdb would close.

        iradix delete/deletePrefix copy the nodes on the path and the whole deleted subtree;
        a parent left with one child and no leaf is merged with that child (``mergeChild``),
        which the double counts as a change of the child as well.
        """
        keys = self._keys
        fired = set(self._any_watch)
        self._path_watchers(prefix, fired)
        lo = bisect.bisect_left(keys, prefix)
        if exact:
            hi = lo + 1 if lo < len(keys) and keys[lo] == prefix else lo
            fired |= self._leaf_watch.get(prefix, set())
            fired |= self._node_watch.get(prefix, set())
        else:
            hi = bisect.bisect_left(keys, prefix + b"\xff", lo)
            for registry in (self._node_watch, self._leaf_watch):
                for path, bucket in registry.items():
                    if path.startswith(prefix):
                        fired |= bucket
        if hi == lo:
            return
        del keys[lo:hi]
        m = self._neighbour_lcp(prefix, lo)
        if m:
            child = self._subtree_root(prefix[:m])
            if child is not None and len(child) > m:
                fired |= self._node_watch.get(child, set())
        self._fire(fired)

    # ------------------------------------------------------------------- KV writes

    def _write_entry(self, new: _Entry, idx: int) -> None:
        """kvsSetTxn: keep CreateIndex, skip identical writes, bump the table index."""
        existing = self._kv.get(new.key)
        if existing is not None:
            new.create_index = existing.create_index
            if existing.same_content(new):
                new.modify_index = existing.modify_index
                return
        else:
            new.create_index = idx
        new.modify_index = idx
        self._kv[new.key] = new
        self._kvs_index = idx
        self._kv_set_key(new.key)

    def _delete_entry(self, key: str, idx: int) -> bool:
        if self._kv.pop(key, None) is None:
            return False
        self._tombstones[key] = idx
        self._kvs_index = idx
        self._kv_delete_keys(_radix_key(key), exact=True)
        return True

    def _list_index(self, prefix: str, entries: list[_Entry]) -> int:
        """kvsListTxn: newest entry or tombstone under the prefix, else the table index."""
        lindex = max((e.modify_index for e in entries), default=0)
        if prefix:
            tomb = max((i for k, i in self._tombstones.items() if k.startswith(prefix)), default=0)
            lindex = max(lindex, tomb)
        else:
            lindex = self._kvs_index
        return max(lindex or self._kvs_index, 1)

    def _prefixed(self, prefix: str) -> list[_Entry]:
        pb = prefix.encode("utf-8", "surrogatepass")
        keys = self._keys
        lo = bisect.bisect_left(keys, pb)
        hi = bisect.bisect_left(keys, pb + b"\xff", lo)
        return [self._kv[kb[:-1].decode("utf-8", "surrogatepass")] for kb in keys[lo:hi]]

    def _delete_tree(self, prefix: str, idx: int) -> None:
        """kvsDeleteTreeTxn: delete every key under prefix, one tombstone for the prefix."""
        victims = [e.key for e in self._prefixed(prefix)]
        for name in victims:
            del self._kv[name]
        if victims:
            self._tombstones[prefix] = idx
            self._kvs_index = idx
            # one memdb DeletePrefix on the id index
            self._kv_delete_keys(prefix.encode("utf-8", "surrogatepass"), exact=False)
