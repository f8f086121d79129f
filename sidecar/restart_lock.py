"""The cluster's restart queue: a broker's auth manager holds its place for its monitor.

A KRaft broker restarts once per root rotation for its Raft client (``monitor.restart_gate``).
Two of three voters down is a cluster without a quorum, so restarts must never overlap,
whatever the timing. The monitor cannot reach Consul; it asks on the volume
(``restart_handoff``), and this thread queues for it in Consul, first come first served:

* it writes ``restart-queue/<node-id>`` with the participant's session (``?acquire``), once:
  the key's ModifyIndex is its place in line;
* the entry with the lowest ModifyIndex whose session lives is the holder: it may restart.
  Its auth manager writes the grant to the volume, and deletes its entry once the monitor
  withdraws the request (the broker is back and verified);
* a broker further back watches only the entry just ahead of its own (a blocking query on that
  one key), and looks at the queue again when that entry goes.

Sessions delete their keys when they end (``ConsulStore.create_session``), so a dead auth
manager leaves the queue by itself; the next broker's monitor still restarts only while Kafka's
Metadata shows every broker alive. Cost per broker and rotation: one write, one delete, a read
of the queue when it joins and each time the entry ahead goes (usually once), and one wakeup
when it does: linear in the brokers of the cluster. Idle, one ``stat`` of the request file per
poll and no Consul request. Clients never queue.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import restart_handoff
from sidecar.consul_store import ConsulError, ConsulStore, Snapshot, error_backoff
from sidecar.metrics import AuthManagerMetrics

RESTART_QUEUE = "restart-queue"


def queue_ahead(queue: Snapshot, node_id: str) -> str | None:
    """The live entry just ahead of ``node_id``'s in the queue (None: it is first). Raises
    KeyError if ``node_id`` has no live entry."""
    mine = queue.entries[node_id]
    if mine.session is None:
        raise KeyError(node_id)
    ahead = [(entry.modify_index, key) for key, entry in queue.entries.items()
             if entry.session is not None and entry.modify_index < mine.modify_index]
    return max(ahead)[1] if ahead else None


class RestartLock:
    """Holds this broker's place in ``restart-queue/`` while its monitor has a restart request
    on the volume, and grants the restart on the volume when the place is first."""

    def __init__(self, *, store: ConsulStore, session: Callable[[], str | None], node_id: str,
                 volume: Path, metrics: AuthManagerMetrics, log: Any, stop: threading.Event,
                 poll: float = 0.5, watch_wait: float = 60.0, verify_every: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue = store.child(RESTART_QUEUE)
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
        self.joined: str | None = None  # the session our entry was written with
        self.holding = False
        self._ahead: tuple[str, int] | None = None  # the entry watched, and its index
        self._verified_at = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="restart-queue", daemon=True)
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
                self.log.warning("restart_queue_consul_failed", error=str(exc),
                                 retry_in=round(delay, 2))
                self.stop.wait(delay)
            except Exception as exc:  # the volume (full, read-only): a dead thread would hold
                failures += 1        # the cluster's restarts for ever; give the place up
                delay = error_backoff(failures, self.rng)
                self.log.exception("restart_queue_failed", error=str(exc),
                                   retry_in=round(delay, 2))
                with contextlib.suppress(Exception):
                    self.release()
                self.stop.wait(delay)

    def step(self) -> None:
        """One look: leave the queue when the request is gone; while first, check now and
        then that the entry is still ours; else join, or wait for the entry ahead to go."""
        request = restart_handoff.read_request(self.volume)
        session = self.session()
        if request is None or session is None:
            if self.joined is not None:
                self.release()
            else:
                restart_handoff.remove_grant(self.volume)
            self.stop.wait(self.poll)
            return
        if self.joined is not None and self.joined != session:
            self._lost("this participant's session changed")
        if self.holding:
            if self.clock() - self._verified_at >= self.verify_every:
                self._verify(session)
            self.stop.wait(self.poll)
            return
        if self.joined is None:
            self._join(session, request.generation)
        elif self._ahead is not None:
            self._wait_ahead()
        else:
            self._look(session, request.generation)

    def release(self) -> None:
        """Leave the queue (the restart is done, or this process stops)."""
        joined, self.joined, self.holding, self._ahead = self.joined, None, False, None
        restart_handoff.remove_grant(self.volume)
        if joined is None:
            return
        try:
            self.queue.delete(self.node_id)
        except ConsulError as exc:  # the session's end removes it in any case
            self.log.warning("restart_queue_leave_failed", error=str(exc))
            return
        self.log.info("restart_queue_left", node_id=self.node_id)

    def _join(self, session: str, generation: int) -> None:
        value = json.dumps({"node_id": self.node_id, "generation": generation,
                            "at": round(self.clock(), 3)}).encode()
        if not self.queue.put(self.node_id, value, acquire=session):
            # Our entry is still held by this node's previous session (a restart of this
            # auth manager with a new session): it goes when that session ends.
            self.log.info("restart_queue_entry_held", node_id=self.node_id)
            self.stop.wait(self.poll)
            return
        self.joined = session
        self._look(session, generation)

    def _look(self, session: str, generation: int) -> None:
        """Read the queue: first, take the grant; else watch the entry just ahead."""
        try:
            ahead = queue_ahead(self.queue.read(), self.node_id)
        except KeyError:  # our entry went (its session ended): queue again
            self.joined = None
            return
        if ahead is None:
            self._took(session, generation)
            return
        read = self.queue.get(ahead)
        self._ahead = (ahead, read.index) if read.entry is not None else None
        if self._ahead is not None:
            self.log.info("restart_queue_waiting", node_id=self.node_id, ahead=ahead)

    def _wait_ahead(self) -> None:
        assert self._ahead is not None
        key, index = self._ahead
        read = self.queue.get(key, index, self.watch_wait)
        if read.index != index:
            self.metrics.watch_wakeups.labels(key=RESTART_QUEUE).inc()
        if read.entry is None or read.entry.session is None:
            self._ahead = None  # gone: look at the queue again
        else:
            self._ahead = (key, max(1, read.index))

    def _took(self, session: str, generation: int) -> None:
        self.holding = True
        self._verified_at = self.clock()
        restart_handoff.write_grant(self.volume, restart_handoff.RestartGrant(
            session=session, node_id=self.node_id,
            granted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))))
        self.log.info("restart_queue_first", node_id=self.node_id, generation=generation)

    def _verify(self, session: str) -> None:
        """Still ours? A session that ended (Consul lost it, the TTL ran out) took our entry
        with it: withdraw the grant so that the monitor does not restart without it."""
        entry = self.queue.get(self.node_id).entry
        self._verified_at = self.clock()
        if entry is None or entry.session != session:
            self._lost("the queue entry is no longer held by this session")

    def _lost(self, reason: str) -> None:
        self.joined, self.holding, self._ahead = None, False, None
        restart_handoff.remove_grant(self.volume)
        self.log.warning("restart_queue_lost", node_id=self.node_id, reason=reason)
