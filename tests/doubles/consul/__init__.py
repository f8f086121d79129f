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
  as Consul does (see the ACL section below: exact beats prefix, longest prefix wins, lists
  filtered, txn ops checked one by one); no token is the anonymous token (denied), an
  unknown one 403 ``ACL not found``.

Test controls (thread safe): :meth:`restart`, :meth:`reset_index`, :meth:`drop_connections`,
:meth:`set_down`, :meth:`expire_session`, :meth:`spurious_wakeups`, :meth:`reap_tombstones`,
:attr:`request_log`.  Run standalone with ``python -m tests.doubles.consul --port 8500``.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

__all__ = ["ConsulDouble", "RequestRecord", "format_go_duration", "parse_go_duration"]

NS_PER_S = 1_000_000_000
DEFAULT_QUERY_TIME_S = 300.0
MAX_QUERY_TIME_S = 600.0
JITTER_FRACTION = 16
SESSION_TTL_MIN_NS = 10 * NS_PER_S
SESSION_TTL_MAX_NS = 24 * 3600 * NS_PER_S
SESSION_TTL_MULTIPLIER = 2
DEFAULT_LOCK_DELAY_NS = 15 * NS_PER_S
MAX_LOCK_DELAY_NS = 60 * NS_PER_S
LOCK_DELAY_MIN_THRESHOLD = 1000
KV_MAX_VALUE_SIZE = 512 * 1024
#: agent/txn_endpoint.go ``maxTxnOps`` (Consul 1.10; later versions raised it to 128).
MAX_TXN_OPS = 64
#: agent/txn_endpoint.go ``isWrite``: a transaction with one of these goes through Raft.
_TXN_WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock",
                              "unlock"})
SERF_CHECK = "serfHealth"

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")


def parse_go_duration(text: str) -> int:
    """Parse a Go duration ("15s", "1m30s", "250ms") into nanoseconds, like time.ParseDuration."""
    invalid = ValueError(f'time: invalid duration "{text}"')
    rest, sign = text, 1
    if rest[:1] in ("+", "-"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = Decimal(0)
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:
            raise invalid
        number, unit = match.groups()
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _UNITS_NS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        try:
            total += Decimal(number) * _UNITS_NS[unit]
        except InvalidOperation as exc:
            raise invalid from exc
        pos = match.end()
    return sign * int(total)


def format_go_duration(ns: int) -> str:
    """Format nanoseconds the way Go's time.Duration.String does ("10s", "24h0m0s", "1.5ms")."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < NS_PER_S:
        for unit, size in (("ms", 1_000_000), ("\u00b5s", 1_000)):
            if ns >= size:
                return sign + _trim(Decimal(ns) / size) + unit
        return f"{sign}{ns}ns"
    hours, rem = divmod(ns, 3600 * NS_PER_S)
    minutes, rem = divmod(rem, 60 * NS_PER_S)
    seconds = _trim(Decimal(rem) / NS_PER_S) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _trim(value: Decimal) -> str:
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class RequestRecord(NamedTuple):
    """One request seen by the double; status is None when the connection was dropped."""

    method: str
    path: str
    query: dict[str, str]
    status: int | None


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


@dataclass
class _Session:
    id: str
    name: str
    node: str
    lock_delay_ns: int
    behavior: str
    ttl: str
    ttl_ns: int
    node_checks: list[str]
    service_checks: list[Any] | None
    create_index: int
    modify_index: int
    deadline: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay_ns,
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": self.node_checks,
            "ServiceChecks": self.service_checks,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


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


@dataclass(frozen=True)
class _TxnKVOp:
    """api.KVTxnOp as convertOps passes it on (LockIndex, CreateIndex ... are not taken)."""

    verb: str
    key: str
    value: bytes | None
    flags: int
    index: int
    session: str


_GO_KINDS = {dict: "object", list: "array", str: "string", bool: "bool", int: "number",
             float: "number"}
_KV_FIELDS: dict[str, tuple[str, type]] = {
    "verb": ("Verb", str), "key": ("Key", str), "value": ("Value", bytes),
    "flags": ("Flags", int), "index": ("Index", int), "session": ("Session", str),
    "namespace": ("Namespace", str)}
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class _BadBody(Exception):
    """encoding/json refused the body: convertOps answers 400 ``Failed to parse body: ...``."""


def _go_quote(text: str) -> str:
    """Go's %q for the printable strings Consul quotes in its errors."""
    return json.dumps(text, ensure_ascii=False)


def _go_kind(value: Any) -> str:
    return _GO_KINDS.get(type(value), "null")


def _decode_txn_ops(body: bytes) -> list[_TxnKVOp | str | None] | _Response:
    """convertOps' ``decodeBody`` into api.TxnOps (encoding/json: field names match case
    insensitively, unknown fields are ignored, []byte is base64).  Per op: a _TxnKVOp, the
    name of another kind (Node, Service, Check), or None (no kind set: convertOps skips it).
    The 400 texts follow encoding/json's; syntax errors are worded by Python's json."""
    try:
        if not body.strip():
            raise _BadBody("EOF")
        try:
            raw = json.loads(body)
        except ValueError as exc:
            raise _BadBody(str(exc)) from exc
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise _BadBody(f"json: cannot unmarshal {_go_kind(raw)} into Go value of type "
                           "api.TxnOps")
        return [_decode_txn_op(item) for item in raw]
    except _BadBody as exc:
        return _text(400, f"Failed to parse body: {exc}")


def _decode_txn_op(item: Any) -> _TxnKVOp | str | None:
    if item is None:
        # A nil *TxnOp: convertOps dereferences it and panics; net/http drops the connection.
        raise _Aborted
    if not isinstance(item, dict):
        raise _BadBody(f"json: cannot unmarshal {_go_kind(item)} into Go value of type "
                       "api.TxnOp")
    fields = {k.lower(): v for k, v in item.items()}
    kv = fields.get("kv")
    if kv is None:
        for kind in ("node", "service", "check"):
            if fields.get(kind) is not None:
                return kind.capitalize()
        return None
    if not isinstance(kv, dict):
        raise _BadBody(f"json: cannot unmarshal {_go_kind(kv)} into Go struct field TxnOp.KV "
                       "of type api.KVTxnOp")
    out: dict[str, Any] = {"verb": "", "key": "", "value": None, "flags": 0, "index": 0,
                           "session": ""}
    for name, value in kv.items():
        known = _KV_FIELDS.get(name.lower())
        if known is None or value is None:
            continue  # unknown fields are ignored, null leaves the zero value
        field_name, ftype = known
        where = f"Go struct field KVTxnOp.KV.{field_name}"
        if ftype is str:
            if not isinstance(value, str):
                raise _BadBody(f"json: cannot unmarshal {_go_kind(value)} into {where} of "
                               "type string")
            if field_name != "Namespace":  # Enterprise only: the OSS agent ignores it
                out[name.lower()] = value
        elif ftype is int:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _BadBody(f"json: cannot unmarshal {_go_kind(value)} into {where} of "
                               "type uint64")
            if not isinstance(value, int) or not 0 <= value < 2**64:
                raise _BadBody(f"json: cannot unmarshal number {value} into {where} of "
                               "type uint64")
            out[name.lower()] = value
        else:
            if not isinstance(value, str):
                raise _BadBody(f"json: cannot unmarshal {_go_kind(value)} into {where} of "
                               "type []uint8")
            valid = _B64.match(value)
            if valid is None or valid.end() != len(value) or len(value) % 4:
                at = valid.end() if valid is not None else 0
                raise _BadBody(f"illegal base64 data at input byte {at}")
            # An empty value is stored as no value, like a KV PUT with an empty body.
            out["value"] = base64.b64decode(value) or None
    return _TxnKVOp(**out)


def _radix_key(key: str) -> bytes:
    """The bytes memdb indexes a KV key under: UTF-8 plus the NUL that StringFieldIndex adds."""
    return key.encode("utf-8", "surrogatepass") + b"\0"


def _lcp(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# ------------------------------------------------------------------------------ ACL
#
# Consul's ACL rules for KV and sessions, as acl/policy_authorizer.go and acl/policy.go
# enforce them: ``key "<k>"`` and ``session "<n>"`` are exact-match rules, ``key_prefix`` and
# ``session_prefix`` prefix rules, kept in one radix tree per resource.  ``getPolicy`` walks
# the tree down the path of the name: an exact rule for the whole name wins, else the last
# (longest) prefix rule seen on the way.  ``write`` grants read and write, ``read`` read,
# ``deny`` nothing; no rule falls to the default policy (deny here).  ``KeyWritePrefix``
# (delete of a tree) needs the longest prefix rule on the path to grant write AND no rule
# (exact or prefix) under the prefix that does not.  Several policies on one token merge
# per name with deny over write over read (acl/policy_merger.go).
#
# Error texts (acl/errors.go): Consul 1.10 and 1.11 answer 403 ``Permission denied``; from
# 1.12 (hashicorp/consul#12620, #10830) ``Permission denied: token with AccessorID '<id>'
# lacks permission 'key:write' on "<key>"`` (the anonymous token: ``Permission denied:
# anonymous token lacks ... The anonymous token is used implicitly when a request does not
# specify a token.``).  An unknown token is 403 ``ACL not found`` in every version.

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_ACL_LEVELS = {"deny": 0, "read": 1, "write": 2}
_MERGE_RANK = {"read": 1, "write": 2, "deny": 3}  # policy_merger.go: deny wins
_ACL_RULE = re.compile(
    r'(key|key_prefix|session|session_prefix|[a-z_]+)\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"\s*\}'
)


def parse_acl_rules(text: str) -> dict[tuple[str, str], str]:
    """The key and session rules of an HCL policy: {(kind, name): policy}.

    Only the block form (``key_prefix "a/" { policy = "write" }``) is understood; rules for
    other resources (node, service, ...) are parsed and ignored.  Repeated names merge with
    deny > write > read (policy_merger.go).
    """
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    rules: dict[tuple[str, str], str] = {}
    for kind, name, policy in _ACL_RULE.findall(text):
        if policy not in _ACL_LEVELS:
            raise ValueError(f"Invalid {kind} policy: {policy!r}")
        if kind not in ("key", "key_prefix", "session", "session_prefix"):
            continue
        old = rules.get((kind, name))
        if old is None or _MERGE_RANK[policy] > _MERGE_RANK[old]:
            rules[(kind, name)] = policy
    return rules


@dataclass(frozen=True)
class AclToken:
    """A token of the double: its accessor (shown in 1.12+ errors) and its rules."""

    accessor_id: str
    rules: dict[tuple[str, str], str]
    management: bool = False

    def policy_for(self, resource: str, name: str) -> str | None:
        """getPolicy: the exact rule for ``name``, else the longest prefix rule."""
        exact = self.rules.get((resource, name))
        return exact if exact is not None else self._longest_prefix(resource, name)

    def _longest_prefix(self, resource: str, name: str) -> str | None:
        """The policy of the longest ``<resource>_prefix`` rule that ``name`` starts with."""
        found = [(len(prefix), policy) for (kind, prefix), policy in self.rules.items()
                 if kind == resource + "_prefix" and name.startswith(prefix)]
        return max(found)[1] if found else None

    def allows(self, resource: str, name: str, access: str) -> bool:
        if self.management:
            return True
        policy = self.policy_for(resource, name)
        return policy is not None and _ACL_LEVELS[policy] >= _ACL_LEVELS[access]

    def allows_write_prefix(self, prefix: str) -> bool:
        """KeyWritePrefix: write by the longest prefix rule on the path, and by every rule
        (exact or prefix) at or under the prefix."""
        if self.management:
            return True
        if self._longest_prefix("key", prefix) != "write":
            return False
        return all(policy == "write" for (kind, name), policy in self.rules.items()
                   if kind in ("key", "key_prefix") and name.startswith(prefix))


_MANAGEMENT_ACCESSOR = "00000000-0000-0000-0000-000000000001"


class _Aborted(Exception):
    """The connection was dropped on purpose: answer nothing."""


class _RpcError(Exception):
    """An error Consul's HTTP layer turns into a 500 with the message as body."""


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    return _Response(status, json.dumps(obj).encode(), hdrs)


def _text(status: int, text: str) -> _Response:
    return _Response(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})


def _first(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    return values[0] if values else ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # A fleet simulation opens thousands of long-poll connections at once: a deep listen
    # backlog (capped by net.core.somaxconn) keeps a connect burst from being refused.
    request_queue_size = 4096

    def __init__(self, addr: tuple[str, int], double: ConsulDouble) -> None:
        self.double = double
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about connections that the client or a test control cut."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Like Go's net/http: no Nagle, or header and body writes wait on delayed ACKs.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._register_conn(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.double._unregister_conn(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        double = self.server.double
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        flat = {k: v[0] for k, v in query.items()}
        try:
            body = self._read_body()
            resp = double._handle(self.command, path, query, dict(self.headers), body, self)
        except (_Aborted, OSError):
            self.close_connection = True
            double._log(RequestRecord(self.command, path, flat, None))
            return
        except Exception as exc:  # a bug in the double: answer 500 and show it
            traceback.print_exc()
            resp = _text(500, f"consul double internal error: {exc!r}")
        double._log(RequestRecord(self.command, path, flat, resp.status))
        try:
            self.send_response_only(resp.status)
            self.send_header("Date", formatdate(usegmt=True))
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
        except OSError:
            self.close_connection = True


class ConsulDouble:
    """A Consul agent (single server, leader) on 127.0.0.1 speaking the HTTP API.

    Use as ``with ConsulDouble() as consul:``; the server is listening once constructed.
    """

    _raft_index: int
    _kv: dict[str, _Entry]
    _tombstones: dict[str, int]
    _kvs_index: int
    _sessions: dict[str, _Session]
    _sessions_index: int
    _lock_delay: dict[str, float]

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
        self._tokens: dict[str, AclToken] = {}
        self._acl_token: str | None = None
        self.acl_token = acl_token
        self.datacenter = datacenter
        self.node_name = node_name
        self.initial_index = initial_index
        self.session_ttl_min_ns = int(session_ttl_min * NS_PER_S)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)  # the session reaper waits on it
        self._waiters: set[_Waiter] = set()
        self._leaf_watch: dict[bytes, set[_Waiter]] = {}
        self._node_watch: dict[bytes, set[_Waiter]] = {}
        self._any_watch: set[_Waiter] = set()
        self._compute_runs = 0
        self._compute_reruns = 0
        self._server_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._inflight: set[_InFlight] = set()
        self._log_entries: list[RequestRecord] = []
        self._spurious = False
        self._spurious_after = 0.05
        self._epoch = 0
        self._closed = False
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

    @property
    def request_log(self) -> list[RequestRecord]:
        """A copy of every request seen so far (method, path, query, status)."""
        with self._cond:
            return list(self._log_entries)

    def clear_request_log(self) -> None:
        """Forget the requests logged so far."""
        with self._cond:
            self._log_entries.clear()

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

    def kv_snapshot(self) -> dict[str, bytes | None]:
        """The KV store as ``{key: value}``, for assertions."""
        with self._cond:
            return {k: e.value for k, e in sorted(self._kv.items())}

    def session_ids(self) -> list[str]:
        """IDs of the live sessions."""
        with self._cond:
            return sorted(self._sessions)

    @property
    def acl_token(self) -> str | None:
        """The management token (None: none; ACLs are on once any token exists)."""
        return self._acl_token

    @acl_token.setter
    def acl_token(self, secret: str | None) -> None:
        """Set (or replace) the management token; may be set on a running double."""
        if self._acl_token is not None:
            self._tokens.pop(self._acl_token, None)
        self._acl_token = secret
        if secret is not None:
            self._tokens[secret] = AclToken(_MANAGEMENT_ACCESSOR, {}, management=True)

    @property
    def acl_enabled(self) -> bool:
        return bool(self._tokens)

    def create_token(self, rules: str, *, secret: str | None = None,
                     accessor_id: str | None = None) -> str:
        """A client token with these HCL rules (see :func:`parse_acl_rules`); its SecretID.

        The first token turns ACLs on (default deny) if ``acl_token`` did not.
        """
        secret = secret or str(uuid.uuid4())
        token = AclToken(accessor_id or str(uuid.uuid4()), parse_acl_rules(rules))
        with self._lock:
            self._tokens[secret] = token
        return secret

    def accessor_of(self, secret: str) -> str:
        """The AccessorID of a token (what Consul 1.12+ names in a 403)."""
        return self._tokens[secret].accessor_id

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

    def reap_tombstones(self) -> None:
        """Forget delete tombstones (Consul reaps them after tombstone_ttl): list indexes of a
        prefix whose newest key was deleted may then go backwards."""
        with self._cond:
            self._tombstones.clear()

    def drop_connections(self) -> int:
        """Abort every in-flight blocking query by closing its socket without a response.

        Returns how many were aborted.
        """
        with self._cond:
            victims = list(self._inflight)
            for item in victims:
                item.aborted = True
                _shutdown(item.conn)
            self._broadcast()
            return len(victims)

    def set_down(self, down: bool) -> None:
        """Close (True) or reopen (False) the listening socket on the same port.

        Going down also drops every open connection, as a dead agent would.
        """
        with self._server_lock:
            if down and self._server is not None:
                server, self._server = self._server, None
                server.shutdown()
                server.server_close()
                if self._thread is not None:
                    self._thread.join(timeout=5)
                self._drop_all()
            elif not down and self._server is None and not self._closed:
                self._start_server()

    @property
    def is_down(self) -> bool:
        """Whether the listening socket is closed."""
        return self._server is None

    def expire_session(self, session_id: str) -> bool:
        """Invalidate a session now, as a TTL expiry would; False if it does not exist."""
        with self._cond:
            sess = self._sessions.get(session_id)
            if sess is None:
                return False
            self._invalidate(sess, self._next_index())
            return True

    def spurious_wakeups(self, enabled: bool, after: float = 0.05) -> None:
        """When enabled, blocked queries return after ``after`` seconds with NO change."""
        with self._cond:
            self._spurious = enabled
            self._spurious_after = after
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

    # ------------------------------------------------------------ server plumbing

    def _start_server(self) -> None:
        server = _Server((self.host, self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"consul-double-{self._port}",
        )
        self._thread.start()

    def _register_conn(self, conn: socket.socket) -> None:
        with self._cond:
            self._conns.add(conn)

    def _unregister_conn(self, conn: socket.socket) -> None:
        with self._cond:
            self._conns.discard(conn)

    def _drop_all(self) -> None:
        with self._cond:
            for item in self._inflight:
                item.aborted = True
            for conn in list(self._conns):
                _shutdown(conn)
            self._broadcast()

    def _log(self, record: RequestRecord) -> None:
        with self._cond:
            self._log_entries.append(record)

    # ---------------------------------------------------------------- state store

    def _wipe(self) -> None:
        self._raft_index = self.initial_index
        self._kv = {}
        self._keys: list[bytes] = []  # sorted _radix_key of every key: the memdb radix tree
        self._tombstones = {}
        self._kvs_index = 0
        self._sessions = {}
        self._sessions_index = 0
        self._lock_delay = {}

    def _next_index(self) -> int:
        self._raft_index += 1
        return self._raft_index

    def _changed(self) -> None:
        """A session change: wake the reaper and the queries watching everything."""
        self._cond.notify_all()
        self._fire(set(self._any_watch))

    # ------------------------------------------------- watches (memdb channels)

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

    def _invalidate(self, sess: _Session, idx: int) -> None:
        """Destroy a session: release or delete its keys and start their lock-delay."""
        del self._sessions[sess.id]
        self._sessions_index = idx
        delay_s = min(sess.lock_delay_ns, MAX_LOCK_DELAY_NS) / NS_PER_S
        now = time.monotonic()
        for entry in [e for e in self._kv.values() if e.session == sess.id]:
            if sess.behavior == "delete":
                self._delete_entry(entry.key, idx)
            else:
                released = _Entry(entry.key, entry.value, entry.flags, lock_index=entry.lock_index)
                self._write_entry(released, idx)
            if delay_s > 0:
                self._lock_delay[entry.key] = now + delay_s
        self._changed()

    def _reap_sessions(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for sess in list(self._sessions.values()):
                    if sess.deadline is not None and sess.deadline <= now:
                        self._invalidate(sess, self._next_index())
                deadlines = [s.deadline for s in self._sessions.values() if s.deadline is not None]
                timeout = min(deadlines) - now if deadlines else 1.0
                self._cond.wait(max(0.005, min(timeout, 1.0)))

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
        authz = self._resolve_token(query, headers)
        if isinstance(authz, _Response):
            return authz
        dc = _first(query, "dc")
        if dc and dc != self.datacenter:
            return _text(500, "No path to datacenter")
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

    def _resolve_token(
        self, query: dict[str, list[str]], headers: dict[str, str]
    ) -> AclToken | _Response | None:
        """The request's token (None: ACLs off); no token is the anonymous token (no rules:
        default deny); an unknown one is 403 ``ACL not found`` (acl/errors.go)."""
        if not self._tokens:
            return None
        lower = {k.lower(): v for k, v in headers.items()}
        secret = _first(query, "token") or lower.get("x-consul-token", "")
        auth = lower.get("authorization", "")
        if not secret and auth.lower().startswith("bearer "):
            secret = auth[7:].strip()
        if not secret:
            return AclToken(ANONYMOUS_ACCESSOR, {})
        with self._lock:
            token = self._tokens.get(secret)
        return token if token is not None else _text(403, "ACL not found")

    def _denial(self, authz: AclToken, resource: str, access: str, name: str) -> str:
        """acl/errors.go ``PermissionDeniedError.Error`` for this version."""
        if self.acl_errors == "1.10":
            return "Permission denied"
        who = ("anonymous token" if authz.accessor_id == ANONYMOUS_ACCESSOR
               else f"token with AccessorID '{authz.accessor_id}'")
        text = f"Permission denied: {who} lacks permission '{resource}:{access}' on \"{name}\""
        if authz.accessor_id == ANONYMOUS_ACCESSOR:
            text += (". The anonymous token is used implicitly when a request does not "
                     "specify a token.")
        return text

    def _denied(self, authz: AclToken, resource: str, access: str, name: str) -> _Response:
        return _text(403, self._denial(authz, resource, access, name))

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

    # ------------------------------------------------------------------------- KV

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

    # ------------------------------------------------------------------------ txn

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

    # ------------------------------------------------------------------- sessions

    def _session_endpoint(
        self,
        method: str,
        rest: str,
        query: dict[str, list[str]],
        body: bytes,
        handler: _Handler,
        authz: AclToken | None = None,
    ) -> _Response:
        """session_endpoint.go: create, renew and destroy need ``session:write`` on the
        session's node; info, list and node answers are filtered to ``session:read``."""
        verb, _, arg = rest.partition("/")
        if verb in ("create", "destroy", "renew") and method != "PUT":
            return _text(405, f"method {method} not allowed")
        if verb in ("info", "list", "node") and method != "GET":
            return _text(405, f"method {method} not allowed")
        def readable(sess: _Session) -> bool:
            return authz is None or authz.allows("session", sess.node, "read")

        if verb == "create" and not arg:
            return self._session_create(body, authz)
        if verb == "list" and not arg:
            return self._session_query(query, handler, readable)
        if verb not in ("destroy", "renew", "info", "node"):
            return _Response(404)
        if not arg:
            return _text(400, "Missing node name" if verb == "node" else "Missing session")
        if verb in ("destroy", "renew") and authz is not None:
            with self._cond:
                known = self._sessions.get(arg)
            if known is not None and not authz.allows("session", known.node, "write"):
                return self._denied(authz, "session", "write", known.node)
        if verb == "destroy":
            with self._cond:
                idx = self._next_index()
                sess = self._sessions.get(arg)
                if sess is not None:
                    self._invalidate(sess, idx)
            return _json_response(True)
        if verb == "renew":
            with self._cond:
                sess = self._sessions.get(arg)
                if sess is None:
                    return _text(404, f"Session id '{arg}' not found")
                if sess.ttl_ns:
                    sess.deadline = (
                        time.monotonic() + SESSION_TTL_MULTIPLIER * sess.ttl_ns / NS_PER_S
                    )
                    self._changed()
                return _json_response([sess.to_json()])
        if verb == "info":
            return self._session_query(query, handler, lambda s: s.id == arg and readable(s))
        return self._session_query(query, handler, lambda s: s.node == arg and readable(s))

    def _session_query(
        self,
        query: dict[str, list[str]],
        handler: _Handler,
        keep: Callable[[_Session], bool],
    ) -> _Response:
        opts = self._query_options(query)
        if isinstance(opts, _Response):
            return opts

        def compute(ws: _Waiter | None) -> tuple[int, Any]:
            self._add_watch(ws, None)  # session queries: woken by any change
            found = [s.to_json() for s in self._sessions.values() if keep(s)]
            return max(self._sessions_index, 1), found

        index, found = self._block(opts[0], opts[1], compute, handler)
        return _json_response(found, headers=self._meta(index))

    def _session_create(self, body: bytes, authz: AclToken | None = None) -> _Response:
        fields: dict[str, Any] = {}
        if body.strip():
            try:
                raw = json.loads(body)
            except ValueError as exc:
                return _text(400, f"Request decode failed: {exc}")
            if not isinstance(raw, dict):
                return _text(400, "Request decode failed: expected a JSON object")
            fields = {k.lower(): v for k, v in raw.items()}
        try:
            lock_delay = _lock_delay_ns(fields.get("lockdelay", DEFAULT_LOCK_DELAY_NS))
        except (ValueError, TypeError) as exc:
            return _text(400, f"Request decode failed: {exc}")
        behavior = fields.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise _RpcError(f"Invalid Behavior setting '{behavior}'")
        ttl = str(fields.get("ttl") or "")
        ttl_ns = 0
        if ttl:
            try:
                ttl_ns = parse_go_duration(ttl)
            except ValueError as exc:
                raise _RpcError(f"Session TTL '{ttl}' invalid: {exc}") from exc
            if ttl_ns != 0 and not self.session_ttl_min_ns <= ttl_ns <= SESSION_TTL_MAX_NS:
                raise _RpcError(
                    f"Invalid Session TTL '{ttl_ns}', must be between "
                    f"[{format_go_duration(self.session_ttl_min_ns)}="
                    f"{format_go_duration(SESSION_TTL_MAX_NS)}]"
                )
        node = fields.get("node") or self.node_name
        if authz is not None and not authz.allows("session", node, "write"):
            return self._denied(authz, "session", "write", node)
        checks = fields.get("nodechecks", fields.get("checks", [SERF_CHECK]))
        checks = list(checks or [])
        with self._cond:
            idx = self._next_index()
            if node != self.node_name:
                raise _RpcError("Missing node registration")
            for check in checks:
                if check != SERF_CHECK:
                    raise _RpcError(f"Missing check '{check}' registration")
            sess = _Session(
                id=str(uuid.uuid4()),
                name=str(fields.get("name") or ""),
                node=node,
                lock_delay_ns=lock_delay,
                behavior=behavior,
                ttl=ttl,
                ttl_ns=ttl_ns,
                node_checks=checks,
                service_checks=fields.get("servicechecks"),
                create_index=idx,
                modify_index=idx,
            )
            if ttl_ns:
                sess.deadline = time.monotonic() + SESSION_TTL_MULTIPLIER * ttl_ns / NS_PER_S
            self._sessions[sess.id] = sess
            self._sessions_index = idx
            self._changed()
        return _json_response({"ID": sess.id})


def _parse_uint(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**64:
        raise _RpcError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(text)


def _lock_delay_ns(raw: Any) -> int:
    """FixupLockDelay: strings are Go durations, numbers nanoseconds; below 1000 means seconds."""
    if isinstance(raw, str):
        dur = parse_go_duration(raw)
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        dur = int(raw)
    else:
        raise TypeError(f"invalid LockDelay {raw!r}")
    return dur * NS_PER_S if dur < LOCK_DELAY_MIN_THRESHOLD else dur


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def main(argv: list[str] | None = None) -> int:
    """Serve until killed, after printing one JSON line with the url."""
    parser = argparse.ArgumentParser(description="Consul HTTP API test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--acl-token", default=None)
    parser.add_argument("--session-ttl-min", type=float, default=SESSION_TTL_MIN_NS / NS_PER_S)
    args = parser.parse_args(argv)
    double = ConsulDouble(
        args.host, args.port, acl_token=args.acl_token, session_ttl_min=args.session_ttl_min
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps({"url": double.url, "host": double.host, "port": double.port}), flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
