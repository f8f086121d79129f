"""Sessions: create, renew, destroy, info, list and node (agent/session_endpoint.go), TTL
expiry (agent/consul/session_ttl.go) and what invalidation does to a session's keys (release
or delete, then lock-delay).  Lock-delay lives in the leader's memory only."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.doubles.consul.acl import AclChecks, AclToken
from tests.doubles.consul.blocking import _Waiter
from tests.doubles.consul.durations import NS_PER_S, format_go_duration, parse_go_duration
from tests.doubles.consul.kv import KVStore, _Entry
from tests.doubles.consul.wire import _json_response, _Response, _RpcError, _text

if TYPE_CHECKING:
    from tests.doubles.consul.server import _Handler

SESSION_TTL_MIN_NS = 10 * NS_PER_S
SESSION_TTL_MAX_NS = 24 * 3600 * NS_PER_S
SESSION_TTL_MULTIPLIER = 2
DEFAULT_LOCK_DELAY_NS = 15 * NS_PER_S
MAX_LOCK_DELAY_NS = 60 * NS_PER_S
LOCK_DELAY_MIN_THRESHOLD = 1000
SERF_CHECK = "serfHealth"


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



class Sessions(KVStore, AclChecks):
    """The session table, its TTL reaper, lock-delays and the session endpoints."""

    node_name: str
    session_ttl_min_ns: int
    _closed: bool
    _sessions: dict[str, _Session]
    _sessions_index: int
    _lock_delay: dict[str, float]  # key -> monotonic time its lock-delay ends

    def session_ids(self) -> list[str]:
        """IDs of the live sessions."""
        with self._cond:
            return sorted(self._sessions)

    def expire_session(self, session_id: str) -> bool:
        """Invalidate a session now, as a TTL expiry would; False if it does not exist."""
        with self._cond:
            sess = self._sessions.get(session_id)
            if sess is None:
                return False
            self._invalidate(sess, self._next_index())
            return True

    def _changed(self) -> None:
        """A session change: wake the reaper and the queries watching everything."""
        self._cond.notify_all()
        self._fire(set(self._any_watch))

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


def _lock_delay_ns(raw: Any) -> int:
    """FixupLockDelay: strings are Go durations, numbers nanoseconds; below 1000 means seconds."""
    if isinstance(raw, str):
        dur = parse_go_duration(raw)
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        dur = int(raw)
    else:
        raise TypeError(f"invalid LockDelay {raw!r}")
    return dur * NS_PER_S if dur < LOCK_DELAY_MIN_THRESHOLD else dur
