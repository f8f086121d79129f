"""A Consul HTTP API test double: the KV store, sessions and blocking queries.

It follows the behaviour of a single-server Consul agent (checked against HashiCorp's API
docs and the Consul source, `agent/kvs_endpoint.go`, `agent/consul/state/kvs.go`,
`agent/consul/rpc.go` `blockingQuery`, `agent/session_endpoint.go`,
`agent/consul/session_ttl.go`), for the calls python-consul2 0.1.5 makes:

* KV: ``GET/PUT/DELETE /v1/kv/<key>`` with ``recurse``, ``keys``/``separator``, ``raw``,
  ``cas``, ``acquire``, ``release``, ``flags``.  Writes answer the literal ``true``/``false``.
* Indexes: one Raft-like index; every write that reaches Raft consumes one, even a failed CAS
  (so ModifyIndex values are not consecutive).  A single-key read reports the key's
  ModifyIndex, or, when the key is missing, the KV table index (last KV write or delete
  anywhere, never below 1).  A ``recurse``/``keys`` read reports the highest ModifyIndex or
  tombstone under the prefix.  Writing an identical value changes nothing (Consul >= 1.6).
* Blocking queries (``index`` + ``wait``): wait defaults to 5m, is capped at 10m (``0s`` means
  the default) and gets up to wait/16 of jitter; the query re-runs when a state change fires
  one of its watches and returns once its index exceeds ``index`` or the wait expires.
  Watches are scoped like memdb's per-radix-node watch channels (see :class:`_Waiter`): a GET
  of an existing key is woken only by writes to that key, a ``recurse``/``keys`` list by
  writes under its prefix, a missing key by writes under the radix node its lookup stopped
  at; session queries by any change.  :attr:`ConsulDouble.compute_reruns` counts re-runs.
  A client whose index is AHEAD of the server (after an agent restart wiped the data)
  therefore blocks for the whole wait and then gets a LOWER index: real Consul does not
  return early, the client must reset to 0.  A missing key is answered with the table index,
  so a write that fires its watch (any write under the radix node its lookup stopped at,
  e.g. ``<prefix>/nodes/x`` for a missing ``<prefix>/keeper``) returns it with no change to
  the key, a spurious wakeup as Consul 1.10 gives.
* Sessions: create (TTL 10s..24h unless ``session_ttl_min`` is lowered, Behavior
  release|delete, LockDelay default 15s, numbers below 1000 are seconds), renew (404
  ``Session id '<id>' not found``), destroy (idempotent ``true``), info (``[]`` if unknown),
  list, node.  A TTL session is invalidated 2x TTL after its last renewal; its keys are then
  released or deleted, and lock-delay (capped at 60s) blocks other sessions' ``acquire``
  (answered ``false``) on those keys.  Lock-delay lives in the leader's memory only, so an
  agent restart forgets it.
* Transactions: ``PUT /v1/txn`` with the KV verbs (set, cas, lock, unlock, get, get-tree,
  check-index, check-session, check-not-exists, delete, delete-cas, delete-tree), checked
  against agent/txn_endpoint.go ``Txn``/``convertOps``, agent/consul/txn_endpoint.go
  ``preCheck``/``Apply``/``Read``, agent/consul/state/txn.go ``txnKVS``/``txnDispatch``/
  ``TxnRW`` and agent/consul/state/kvs.go (``kvsCheckSessionTxn``, ``kvsCheckIndexTxn``,
  ``kvsLockTxn`` ...; their exact error texts): all or nothing under the double's lock, one
  index for a transaction with a write (consumed even when it rolls back; none for reads
  only), 200 ``{"Results": [...], "Errors": null}`` or 409 ``{"Results": null, "Errors":
  [{"OpIndex": i, "What": ...}]}`` listing every failed op, 400 ``Failed to parse body: ...``,
  413 past 64 operations (Consul 1.10 to 1.13; 128 since 1.14) or 512 KiB; its writes wake
  watchers like KV writes.  Node/Service/Check ops are not modelled (500).
* Optional ACL (default deny): ``acl_token`` is a management token, :meth:`create_token`
  makes tokens with HCL ``key``/``key_prefix``/``session``/``session_prefix`` rules, checked
  as Consul does (see ``tests.doubles.consul.acl``: exact beats prefix, longest prefix wins, lists
  filtered, txn ops checked one by one); no token is the anonymous token (denied), an
  unknown one 403 ``ACL not found``; ``GET /v1/acl/token/self`` describes the request's token;
  the management token can create and delete policies and tokens over HTTP as on a real Consul
  (``PUT /v1/acl/policy``, ``PUT /v1/acl/token``), so a double run as its own process serves
  the suite's token maker too.

* Datacenters (``wan``): each double is one datacenter (``datacenter``); :meth:`join_wan`
  federates two, ``?dc=`` forwards a request (blocking queries too) to the other one, and
  :meth:`set_wan_link` / :func:`partition` cut the link; a failed forward is answered as Consul
  does (500 ``No path to datacenter`` / ``Remote DC has no server currently reachable`` /
  ``rpc error making call: EOF``).

Test controls (thread safe): :meth:`restart`, :meth:`reset_index`, :meth:`drop_connections`,
:meth:`set_down`, :meth:`expire_session`, :meth:`spurious_wakeups`, :meth:`reap_tombstones`,
:attr:`request_log`.  Run standalone with ``python -m tests.doubles.consul --port 8500``.

One job per module; :class:`ConsulDouble` (here) builds the double from them and routes
requests:

* ``durations``: Go durations (``time.ParseDuration``, ``Duration.String``).
* ``wire``: the request log record, responses and the errors that cut one short.
* ``server``: the HTTP server and handler, connection tracking, ``set_down``.
* ``blocking``: blocking queries and their watch registrations (``blockingQuery``).
* ``acl``: HCL rules, tokens, 403s.
* ``kv``: the KV store, radix-node watch scoping, index rules, tombstones.
* ``sessions``: sessions, TTL reaper, lock-delay, ``/v1/session``.
* ``kv_endpoint``: ``/v1/kv``; ``txn_codec`` and ``txn``: ``/v1/txn``.
* ``wan``: ``?dc=`` forwarding to another datacenter's double, WAN link controls.
* ``__main__``: the standalone server.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from tests.doubles.consul.acl import AclToken, parse_acl_rules
from tests.doubles.consul.durations import NS_PER_S, format_go_duration, parse_go_duration
from tests.doubles.consul.kv_endpoint import KVEndpoint
from tests.doubles.consul.server import ServerControls, _Handler
from tests.doubles.consul.sessions import SESSION_TTL_MIN_NS, SESSION_TTL_MULTIPLIER
from tests.doubles.consul.txn import Transactions
from tests.doubles.consul.wan import WanLinks, partition
from tests.doubles.consul.wire import (
    RequestRecord,
    _first,
    _json_response,
    _Response,
    _RpcError,
    _text,
)

__all__ = [
    "AclToken",
    "ConsulDouble",
    "RequestRecord",
    "format_go_duration",
    "parse_acl_rules",
    "parse_go_duration",
    "partition",
]


class ConsulDouble(ServerControls, Transactions, KVEndpoint, WanLinks):
    """A Consul agent (single server, leader) on 127.0.0.1 speaking the HTTP API.

    Use as ``with ConsulDouble() as consul:``; the server is listening once constructed.
    This class holds the construction, the controls that span the whole state (restart,
    restore) and the routing of requests; each job is a base class in its own module.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        acl_token: str | None = None,
        acl_errors: str = "1.10",
        datacenter: str = "dc1",
        node_name: str = "consul-double",
        initial_index: int = 10,
        session_ttl_min: float = SESSION_TTL_MIN_NS / NS_PER_S,
    ) -> None:
        """Start serving; ``session_ttl_min`` mirrors Consul's ``session_ttl_min`` setting.

        ``acl_token``: ACLs on (default deny) with this management token; more tokens with
        :meth:`create_token`.  ``acl_errors``: ``"1.10"`` (403 ``Permission denied``) or
        ``"1.12"`` (the text naming the accessor and the missing permission).
        """
        if acl_errors not in ("1.10", "1.12"):
            raise ValueError("acl_errors must be '1.10' or '1.12'")
        if initial_index < 1:
            raise ValueError("initial_index must be at least 1")
        self.host = host
        self._port = port
        self.acl_errors = acl_errors
        self._tokens = {}
        self._acl_policies = {}
        self._acl_token = None
        self.acl_token = acl_token
        self.datacenter = datacenter
        self.node_name = node_name
        self.initial_index = initial_index
        self.session_ttl_min_ns = int(session_ttl_min * NS_PER_S)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # the session reaper waits on it
        self._waiters = set()
        self._leaf_watch = {}
        self._node_watch = {}
        self._any_watch = set()
        self._compute_runs = 0
        self._compute_reruns = 0
        self._server_lock = threading.Lock()
        self._server = None
        self._thread = None
        self._conns = set()
        self._inflight = set()
        self._log_entries = []
        self._spurious = False
        self._spurious_after = 0.05
        self._epoch = 0
        self._closed = False
        self._init_wan()
        self._wipe()
        self._start_server()
        self._reaper = threading.Thread(
            target=self._reap_sessions, daemon=True, name="consul-double-ttl"
        )
        self._reaper.start()

    # ----------------------------------------------------------------- public API

    @property
    def port(self) -> int:
        """The TCP port (fixed after the first bind, kept across set_down/restart)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self._port}"

    @property
    def index(self) -> int:
        """The current Raft-like index (the last one a write consumed)."""
        with self._cond:
            return self._raft_index
    def restart(self, keep_data: bool = True) -> None:
        """Simulate an agent restart: every open connection is dropped without a response.

        With ``keep_data=False`` (a dev-mode agent) KV, sessions and tombstones are wiped and
        the index starts again at ``initial_index``: a client's saved index is now ahead of the
        server.  With ``keep_data=True`` session TTL timers restart from now (as a new leader
        does) and lock-delays are forgotten (they live in the leader's memory only).
        """
        self.set_down(True)
        with self._cond:
            if keep_data:
                now = time.monotonic()
                for sess in self._sessions.values():
                    if sess.ttl_ns:
                        sess.deadline = now + SESSION_TTL_MULTIPLIER * sess.ttl_ns / NS_PER_S
                self._lock_delay.clear()
            else:
                self._wipe()
            self._epoch += 1
            self._broadcast()
        self.set_down(False)

    def reset_index(self, value: int) -> None:
        """Keep the data but rewrite every index to at most ``value`` (a snapshot restore).

        As after a real restore, blocked queries return at once with the lower index.
        """
        if value < 1:
            raise ValueError("index must be at least 1")
        with self._cond:
            self._raft_index = value
            for entry in self._kv.values():
                entry.create_index = min(entry.create_index, value)
                entry.modify_index = min(entry.modify_index, value)
            for key, idx in self._tombstones.items():
                self._tombstones[key] = min(idx, value)
            for sess in self._sessions.values():
                sess.create_index = min(sess.create_index, value)
                sess.modify_index = min(sess.modify_index, value)
            self._kvs_index = min(self._kvs_index, value)
            self._sessions_index = min(self._sessions_index, value)
            self._epoch += 1
            self._broadcast()

    def close(self) -> None:
        """Stop serving and drop every connection."""
        self.set_down(True)
        with self._cond:
            self._closed = True
            self._broadcast()
        self._reaper.join(timeout=5)

    def __enter__(self) -> ConsulDouble:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


    # ---------------------------------------------------------------- state store

    def _wipe(self) -> None:
        self._raft_index = self.initial_index
        self._kv = {}
        self._keys = []
        self._tombstones = {}
        self._kvs_index = 0
        self._sessions = {}
        self._sessions_index = 0
        self._lock_delay = {}

    # ------------------------------------------------------------------- requests

    def _handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
        handler: _Handler,
    ) -> _Response:
        if not path.startswith("/v1/"):
            return _Response(404)
        dc = _first(query, "dc")
        if dc and dc != self.datacenter:
            # The token goes along: the remote datacenter's servers resolve it.
            return self._forward(dc, method, path, query, headers, body)
        if path == "/v1/acl/token/self" and method == "GET":
            return self._token_self(query, headers)
        authz = self._resolve_token(query, headers)
        if isinstance(authz, _Response):
            return authz
        if path.startswith("/v1/acl/"):
            return self._acl_endpoint(method, path, body, authz)
        try:
            if path.startswith("/v1/kv/"):
                return self._kv_endpoint(
                    method, path[len("/v1/kv/") :], query, body, handler, authz
                )
            if path == "/v1/txn":
                return self._txn_endpoint(method, query, headers, body, authz)
            if path.startswith("/v1/session/"):
                return self._session_endpoint(
                    method, path[len("/v1/session/") :], query, body, handler, authz
                )
            if path == "/v1/status/leader":
                return _json_response(f"{self.host}:8300")
            if path == "/v1/status/peers":
                return _json_response([f"{self.host}:8300"])
            if path == "/v1/agent/self":
                if authz is not None and not authz.management:  # agent rules: not modelled
                    return self._denied(authz, "agent", "read", self.node_name)
                return _json_response(
                    {
                        "Config": {
                            "Datacenter": self.datacenter,
                            "NodeName": self.node_name,
                            "Server": True,
                            "Version": "1.10.0-double",
                        },
                        "Member": {"Name": self.node_name, "Addr": self.host, "Port": 8301},
                    }
                )
        except _RpcError as exc:
            return _text(500, str(exc))
        return _Response(404)
