"""WAN federation: ``?dc=`` forwarding to another datacenter's double, and a link that can be cut.

A Consul agent answers a request for another datacenter by forwarding it (an RPC over the WAN)
to a server of that datacenter (agent/consul/rpc.go ``forward``/``forwardDC``); blocking
queries are forwarded whole and block in the remote datacenter, so its sessions, KV and indexes
are the remote ones. Each datacenter here is a ConsulDouble of its own; ``join_wan`` links two.
A failed forward is a 500 whose body is the RPC error (agent/http.go ``wrap``/``handleErr``):

* a datacenter nobody joined: ``No path to datacenter`` (``structs.ErrNoDCPath``, returned by
  ``forwardDC`` when the router has no such datacenter);
* a joined datacenter whose servers cannot be reached (the link is cut): ``Remote DC has no
  server currently reachable`` (``structs.ErrDCNotAvailable``: ``forwardDC`` when
  ``router.HasDatacenter`` but ``FindRoute`` finds no healthy server; agent/structs/errors.go.
  Releases before that error existed answer ``No path to datacenter`` here too);
* a forward in flight when the link goes: ``rpc error making call: EOF`` (the RPC's connection
  closed under it; ``forwardDC`` returns the connection pool's error as it is).

The link is modelled as already known to be down (serf marked the remote servers failed): a
request does not wait for a dial timeout first.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from tests.doubles.consul.wire import _Response, _text

NO_PATH = "No path to datacenter"
NOT_AVAILABLE = "Remote DC has no server currently reachable"
IN_FLIGHT_LOST = "rpc error making call: EOF"
#: Longer than any blocking query (10 min cap plus jitter): the remote side ends it.
FORWARD_TIMEOUT = 700.0


class WanLinks:
    """The datacenters this double forwards to, and the state of the link to each."""

    datacenter: str
    url: str

    def _init_wan(self) -> None:
        self._wan_lock = threading.Lock()
        self._wan_peers: dict[str, str] = {}
        self._wan_down: set[str] = set()
        self._wan_inflight: dict[str, set[http.client.HTTPConnection]] = {}
        #: Requests forwarded per datacenter (what crossed the WAN from here).
        self.wan_forwarded: dict[str, int] = {}

    def join_wan(self, other: WanLinks) -> None:
        """Federate with another datacenter's double (both ways), as ``consul join -wan``."""
        if other.datacenter == self.datacenter:
            raise ValueError(f"both doubles are datacenter {self.datacenter!r}")
        self._add_peer(other.datacenter, other.url)
        other._add_peer(self.datacenter, self.url)

    def _add_peer(self, datacenter: str, url: str) -> None:
        with self._wan_lock:
            self._wan_peers[datacenter] = url

    def set_wan_link(self, datacenter: str, up: bool) -> None:
        """Cut (``up=False``) or restore the link to ``datacenter``, from this side only; a
        partition cuts both sides (:func:`partition`)."""
        with self._wan_lock:
            if up:
                self._wan_down.discard(datacenter)
                return
            self._wan_down.add(datacenter)
            victims = list(self._wan_inflight.get(datacenter, ()))
        for conn in victims:
            with contextlib.suppress(OSError):
                if conn.sock is not None:
                    conn.sock.shutdown(2)

    def _forward(self, datacenter: str, method: str, path: str, query: dict[str, list[str]],
                 headers: dict[str, str], body: bytes) -> _Response:
        """Answer a request for another datacenter by sending it there without ``dc``."""
        with self._wan_lock:
            url = self._wan_peers.get(datacenter)
            if url is None:
                return _text(500, NO_PATH)
            if datacenter in self._wan_down:
                return _text(500, NOT_AVAILABLE)
            self.wan_forwarded[datacenter] = self.wan_forwarded.get(datacenter, 0) + 1
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                              timeout=FORWARD_TIMEOUT)
            self._wan_inflight.setdefault(datacenter, set()).add(conn)
        rest = [(k, v) for k, values in query.items() if k != "dc" for v in values]
        target = path + ("?" + urlencode(rest) if rest else "")
        keep = {k: v for k, v in headers.items()
                if k.lower() in ("x-consul-token", "content-type", "authorization")}
        try:
            conn.request(method, target, body=body or None, headers=keep)
            answer = conn.getresponse()
            data = answer.read()
            reply_headers: dict[str, Any] = {
                k: v for k, v in answer.getheaders()
                if k.lower() not in ("content-length", "date", "connection")}
            return _Response(answer.status, data, reply_headers)
        except (OSError, http.client.HTTPException):
            return _text(500, IN_FLIGHT_LOST)
        finally:
            with self._wan_lock:
                self._wan_inflight.get(datacenter, set()).discard(conn)
            conn.close()


def partition(a: WanLinks, b: WanLinks, cut: bool) -> None:
    """Cut (or restore) the WAN link between two datacenters, both ways."""
    a.set_wan_link(b.datacenter, not cut)
    b.set_wan_link(a.datacenter, not cut)
