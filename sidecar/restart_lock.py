"""The cluster's restart lock, held by a broker's auth manager for its monitor.

A KRaft broker restarts once per root rotation for its Raft client (``monitor.restart_gate``).
Two of three voters down is a cluster without a quorum, so restarts must never overlap,
whatever the timing. The monitor cannot reach Consul; it asks on the volume
(``restart_handoff``), and this thread takes the Consul key ``restart-lock`` with the
participant's session (``?acquire``): Consul grants a lock to one session at a time. It writes
the grant to the volume, and releases the lock once the monitor withdraws its request (the
broker is back and verified). If this auth manager dies, its session ends and Consul releases
the lock after the session's lock-delay; the monitor of the next broker still restarts only
while Kafka's Metadata shows every broker alive.

Cost: idle, one ``stat`` of the request file per poll and no Consul request. While a broker
waits, it blocks on the lock key and wakes at each change of it (one acquire and one release per
restart of another broker of its cluster): a cluster of B brokers makes at most B*(B-1) such
wakeups per rotation, spread over its B restarts, and none for clients.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import restart_handoff
from sidecar.consul_store import ConsulError, ConsulStore, error_backoff, next_index
from sidecar.metrics import AuthManagerMetrics

RESTART_LOCK = "restart-lock"


class RestartLock:
    """Holds ``restart-lock`` while this broker's monitor has a restart request on the volume."""

    def __init__(self, *, store: ConsulStore, session: Callable[[], str | None], node_id: str,
                 volume: Path, metrics: AuthManagerMetrics, log: Any, stop: threading.Event,
                 poll: float = 0.5, watch_wait: float = 5.0, verify_every: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.session = session
        self.node_id = node_id
        self.volume = volume
        self.metrics = metrics
        self.log = log
        self.stop = stop
        self.poll = poll
        self.watch_wait = watch_wait
        self.verify_every = verify_every
        self.clock = clock
        self.rng = random.Random()
        self.holding: str | None = None  # the session it is held with
        self._index = 0
        self._verified_at = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="restart-lock", daemon=True)
            self._thread.start()

    def run(self) -> None:
        """Follow the monitor's request until stopped; Consul errors back off."""
        failures = 0
        while not self.stop.is_set():
            try:
                self.step()
                failures = 0
            except ConsulError as exc:
                failures += 1
                delay = error_backoff(failures, self.rng)
                self.metrics.consul_errors.labels(reason=exc.reason).inc()
                self.log.warning("restart_lock_consul_failed", error=str(exc),
                                 retry_in=round(delay, 2))
                self.stop.wait(delay)

    def step(self) -> None:
        """One look: release when the request is gone, keep checking the lock while held,
        else wait for the lock (a blocking read) and take it when free."""
        request = restart_handoff.read_request(self.volume)
        session = self.session()
        if request is None or session is None:
            if self.holding is not None:
                self.release()
            else:
                restart_handoff.remove_grant(self.volume)
            self._index = 0
            self.stop.wait(self.poll)
            return
        if self.holding == session:
            if self.clock() - self._verified_at >= self.verify_every:
                self._verify(session)
            self.stop.wait(self.poll)
            return
        if self.holding is not None:  # registered again: the old session's lock is gone
            self._lost("this participant's session changed")
        self._contend(session, request.generation)

    def release(self) -> None:
        """Give the lock up (the restart is done, or this process stops)."""
        session, self.holding = self.holding, None
        restart_handoff.remove_grant(self.volume)
        if session is None:
            return
        try:
            self.store.put(RESTART_LOCK, self._value(None), release=session)
        except ConsulError as exc:  # the session's end releases it in any case
            self.log.warning("restart_lock_release_failed", error=str(exc))
            return
        self.log.info("restart_lock_released", node_id=self.node_id)

    def _contend(self, session: str, generation: int) -> None:
        read = self.store.get(RESTART_LOCK, self._index,
                              self.watch_wait if self._index else None)
        if self._index:
            self.metrics.watch_wakeups.labels(key=RESTART_LOCK).inc()
        self._index = next_index(self._index, read.index)
        holder = read.entry.session if read.entry is not None else None
        if holder == session:
            self._took(session, "resumed", generation)  # a restart of ours left it to us
        elif holder is None and self.store.put(RESTART_LOCK, self._value(generation),
                                               acquire=session):
            self._took(session, "acquired", generation)
        elif holder is not None:
            self.log.info("restart_lock_waiting", node_id=self.node_id, holder=holder)

    def _took(self, session: str, how: str, generation: int) -> None:
        self.holding = session
        self._verified_at = self.clock()
        restart_handoff.write_grant(self.volume, restart_handoff.RestartGrant(
            session=session, node_id=self.node_id,
            granted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))))
        self.log.info("restart_lock_acquired", node_id=self.node_id, how=how,
                      generation=generation)

    def _verify(self, session: str) -> None:
        """Still ours? A session that ended (Consul lost it, the TTL ran out) lost the lock:
        withdraw the grant so that the monitor does not restart without it."""
        entry = self.store.get(RESTART_LOCK).entry
        self._verified_at = self.clock()
        if entry is None or entry.session != session:
            self._lost("the lock is no longer held by this session")

    def _lost(self, reason: str) -> None:
        self.holding = None
        restart_handoff.remove_grant(self.volume)
        self.log.warning("restart_lock_lost", node_id=self.node_id, reason=reason)

    def _value(self, generation: int | None) -> bytes:
        return json.dumps({"node_id": self.node_id, "generation": generation,
                           "at": round(self.clock(), 3)}).encode()
