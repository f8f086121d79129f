"""Blocking queries: Consul's ``blockingQuery`` (agent/consul/rpc.go) over memdb's watch
channels.

A query with ``index`` re-runs its state read whenever a watch it registered fires, until its
index passes ``index`` or the wait runs out (default 5m, capped at 10m, plus up to wait/16 of
jitter).  :class:`BlockingQueries` owns the double's lock, the blocked queries and their
registrations; which registry a read watches and which a write fires is the KV store's
business (``tests.doubles.consul.kv``); session reads watch everything.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.doubles.consul.durations import NS_PER_S, parse_go_duration
from tests.doubles.consul.wire import _Aborted, _first, _Response, _text

if TYPE_CHECKING:
    from tests.doubles.consul.server import _Handler

DEFAULT_QUERY_TIME_S = 300.0
MAX_QUERY_TIME_S = 600.0
JITTER_FRACTION = 16


@dataclass(eq=False)
class _InFlight:
    conn: socket.socket
    aborted: bool = False


@dataclass(eq=False)
class _Waiter:
    """One blocked query: its own condition (on the double's lock) and its watch set.

    Consul's ``blockingQuery`` (agent/consul/rpc.go) builds a fresh ``memdb.WatchSet`` on each
    run of the query function and sleeps until one channel in it closes (or the state store is
    abandoned by a snapshot restore, or the wait ends).  The channels come from go-memdb's
    radix tree (go-immutable-radix ``Node.GetWatch``/``SeekPrefixWatch``): a found key gives
    its leaf's channel, closed only when that key is rewritten or deleted; a missing key or a
    prefix gives the channel of the radix node the lookup stopped at, closed whenever the
    transaction copies that node (``Txn.writeNode``: every node on the path of a written key,
    the child split by an insert, the child merged by a delete).  ``registrations`` holds the
    double's equivalent of those channels: (registry, key) pairs, dropped once fired.
    """

    cond: threading.Condition
    registrations: list[tuple[dict[bytes, set[_Waiter]] | None, bytes]] = field(
        default_factory=list
    )



class BlockingQueries:
    """The lock every state change holds, the blocked queries and their watch registrations."""

    _lock: threading.RLock
    _cond: threading.Condition  # on _lock; the session reaper waits on it
    _waiters: set[_Waiter]
    _any_watch: set[_Waiter]
    _inflight: set[_InFlight]
    _compute_runs: int
    _compute_reruns: int
    _spurious: bool
    _spurious_after: float
    _epoch: int  # bumped by restart/restore: blocked queries return at once

    @property
    def compute_runs(self) -> int:
        """How many times a blocking query's state read ran (first runs and re-runs)."""
        with self._lock:
            return self._compute_runs

    @property
    def compute_reruns(self) -> int:
        """How many times a blocked query re-ran its state read after a wake-up or timeout."""
        with self._lock:
            return self._compute_reruns

    @property
    def blocked_queries(self) -> int:
        """How many blocking queries are waiting right now."""
        with self._lock:
            return len(self._waiters)

    def spurious_wakeups(self, enabled: bool, after: float = 0.05) -> None:
        """When enabled, blocked queries return after ``after`` seconds with NO change."""
        with self._cond:
            self._spurious = enabled
            self._spurious_after = after
            self._broadcast()

    def _broadcast(self) -> None:
        """Wake every blocked query (restart, restore, dropped connections, test controls)."""
        for waiter in self._waiters:
            waiter.cond.notify()
        self._cond.notify_all()

    def _fire(self, waiters: set[_Waiter]) -> None:
        """Close these waiters' channels: memdb channels fire once, the query re-registers."""
        for waiter in waiters:
            self._unwatch(waiter)
            waiter.cond.notify()

    def _unwatch(self, waiter: _Waiter) -> None:
        for registry, key in waiter.registrations:
            if registry is None:
                self._any_watch.discard(waiter)
                continue
            bucket = registry.get(key)
            if bucket is not None:
                bucket.discard(waiter)
                if not bucket:
                    del registry[key]
        waiter.registrations.clear()

    def _add_watch(
        self, ws: _Waiter | None, registry: dict[bytes, set[_Waiter]] | None, key: bytes = b""
    ) -> None:
        if ws is None:  # not a blocking query: memdb is given no WatchSet
            return
        if registry is None:
            self._any_watch.add(ws)
        else:
            registry.setdefault(key, set()).add(ws)
        ws.registrations.append((registry, key))

    def _meta(self, index: int) -> dict[str, str]:
        return {
            "X-Consul-Index": str(index),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }

    def _query_options(self, query: dict[str, list[str]]) -> tuple[int, float] | _Response:
        """parseWait/parseConsistency: (min index, wait seconds) or a 400."""
        wait_s = 0.0
        wait = _first(query, "wait")
        if wait:
            try:
                wait_s = parse_go_duration(wait) / NS_PER_S
            except ValueError:
                return _text(400, "Invalid wait time")
        min_index = 0
        idx = _first(query, "index")
        if idx:
            if not idx.isdigit() or int(idx) >= 2**64:
                return _text(400, "Invalid index")
            min_index = int(idx)
        if "stale" in query and "consistent" in query:
            return _text(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        return min_index, wait_s

    def _block(
        self,
        min_index: int,
        wait_s: float,
        compute: Callable[[_Waiter | None], tuple[int, Any]],
        handler: _Handler,
    ) -> tuple[int, Any]:
        """blockingQuery: re-run ``compute`` when a watch it set fires, until its index >
        min_index.  ``compute(ws)`` reads the state and registers its watches on ``ws`` (None
        for a non-blocking read), like the ``fn(ws, state)`` of Consul's blockingQuery."""
        if min_index == 0:
            with self._lock:
                return compute(None)
        timeout = min(wait_s, MAX_QUERY_TIME_S) if wait_s > 0 else DEFAULT_QUERY_TIME_S
        timeout += random.uniform(0, timeout / JITTER_FRACTION)
        deadline = time.monotonic() + timeout
        token = _InFlight(handler.connection)
        waiter = _Waiter(threading.Condition(self._lock))
        with self._lock:
            self._inflight.add(token)
            self._waiters.add(waiter)
            epoch = self._epoch
            spurious_at: float | None = None
            first = True
            try:
                while True:
                    if token.aborted:
                        raise _Aborted
                    self._unwatch(waiter)  # a fresh WatchSet for every run
                    self._compute_runs += 1
                    if not first:
                        self._compute_reruns += 1
                    first = False
                    index, payload = compute(waiter)
                    if index > min_index or self._epoch != epoch:
                        return index, payload
                    now = time.monotonic()
                    if now >= deadline:
                        return index, payload
                    wake = deadline
                    if self._spurious:
                        if spurious_at is None:
                            spurious_at = now + self._spurious_after
                        if now >= spurious_at:
                            return index, payload
                        wake = min(wake, spurious_at)
                    waiter.cond.wait(wake - now)
            finally:
                self._unwatch(waiter)
                self._waiters.discard(waiter)
                self._inflight.discard(token)
