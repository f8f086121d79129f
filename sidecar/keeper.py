"""The barrier keeper: one participant per cluster evaluates the rotation barrier.

Reading every participant's report is O(N); if every participant did it on every report the
fleet would pay O(N^2) per phase. So participants watch only the ``rotation`` key, and one of
them, the keeper, holds the session-bound lock key ``keeper`` (Consul's leader-election
pattern), watches the whole prefix at a bounded rate and advances the record by check-and-set.

Safety never depends on there being one keeper: a keeper whose session expired may decide once
more on what it read before it noticed, but the record only moves by check-and-set on the
ModifyIndex it read, in a transaction that also checks the lock is still held by the session it
read under (a fence), and the barrier counts a participant only once it reported acting on that
very record (:func:`sidecar.rotation.barrier`). Any participant may become keeper; when the
holder's session ends (crash, partition, shutdown) Consul deletes the key and the others, which
watch it, contend for it again.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sidecar.consul_store import (
    ConsulError,
    ConsulStore,
    Entry,
    KeyRead,
    Snapshot,
    error_backoff,
    next_index,
)
from sidecar.domain import (
    SUMMARY,
    Domain,
    advances,
    blocking_datacenters,
    remote_participants,
    summarize,
)
from sidecar.federation import RemoteWatches
from sidecar.metrics import AuthManagerMetrics
from sidecar.rotation import (
    Decision,
    NodeState,
    Policy,
    RotationInputError,
    RotationRecord,
    barrier,
    decide,
    parse_node,
    parse_record,
    parse_root_name,
)
from sidecar.vault import VaultError

ACTIVE_ROOT = "active-root"
ROTATION = "rotation"
KEEPER = "keeper"
NODES = "nodes/"

#: Reads of the whole prefix are at least this far apart, per registered participant (and
#: between the two bounds): a phase costs the keeper O(N) entries per read and a bounded number
#: of reads, however many reports arrive.
READ_SPACING_PER_NODE = 0.001
READ_SPACING_MIN = 0.05
READ_SPACING_MAX = 2.0
#: Contenders wait a random fraction of this before trying a free lock, so that a fleet does
#: not send one acquire each at the same instant (most see the new holder first).
CONTEND_SPREAD = 1.0
#: How soon the keeper reads again after it could not check the desired root in Vault.
RECHECK_SECONDS = 2.0


def read_spacing(participants: int) -> float:
    """Minimum seconds between two reads of the prefix by the keeper."""
    return min(READ_SPACING_MAX, max(READ_SPACING_MIN, participants * READ_SPACING_PER_NODE))


def keeper_value(node_id: str, role: str, now: float) -> bytes:
    """The lock key's value: who holds it, for ``kafka-pki status``."""
    return json.dumps({"node_id": node_id, "role": role, "since": now}, sort_keys=True).encode()


def keeper_holder(entry: Entry | None) -> dict[str, Any] | None:
    """The holder described by the lock key, or None when no session holds it."""
    if entry is None or not entry.session:
        return None
    try:
        data = json.loads(entry.value or b"{}")
    except (ValueError, UnicodeDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {"node_id": data.get("node_id") if isinstance(data.get("node_id"), str) else None,
            "role": data.get("role") if isinstance(data.get("role"), str) else None,
            "since": data.get("since") if isinstance(data.get("since"), int | float) else None,
            "session": entry.session}


def registered_nodes(snapshot: Snapshot, on_bad: Callable[[str], None]) -> dict[str, NodeState]:
    """Every ``nodes/<id>`` held by a live session (a malformed report counts, serving
    nothing known, so the barrier waits for it)."""
    nodes: dict[str, NodeState] = {}
    for key, entry in snapshot.entries.items():
        if not key.startswith(NODES) or entry.session is None:
            continue
        node_id = key[len(NODES):]
        try:
            nodes[node_id] = parse_node(node_id, entry.value)
        except RotationInputError as exc:
            on_bad(str(exc))
            nodes[node_id] = NodeState(node_id)
    return nodes


class BarrierKeeper:
    """Contends for the ``keeper`` lock with this participant's session; while holding it,
    advances the rotation record when the barrier allows. Runs in a thread of its own."""

    def __init__(self, *, store: ConsulStore, session: Callable[[], str | None], node_id: str,
                 role: str, policy: Policy, watch_wait: float, metrics: AuthManagerMetrics,
                 log: Any, stop: threading.Event, check_root: Callable[[str], None],
                 on_bad_input: Callable[[str, str], None],
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 datacenters: tuple[str, ...] = ()) -> None:
        """``datacenters``: the rotation domain's datacenters, the primary first (empty: this
        datacenter only; see :mod:`sidecar.domain`)."""
        self.store = store
        self.session = session
        self.node_id = node_id
        self.role = role
        self.policy = policy
        self.watch_wait = watch_wait
        self.metrics = metrics
        self.log = log
        self.stop = stop
        self.check_root = check_root
        self.on_bad_input = on_bad_input
        self.clock = clock
        self.rng = rng or random.Random()
        self.holding = False
        self._last_record: RotationRecord | None = None
        self._recheck_soon = False
        self._deferred_logged: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None
        self.datacenters = datacenters
        self.domain: Domain | None = None
        self._remote: RemoteWatches | None = None
        self._term = 0  # counts lock holdings: a holding's WAN watches end with it
        self._summary_written: bytes | None = None
        self._waiting_logged: tuple[str, ...] = ()
        # The keeper thread and its WAN watches decide one at a time.
        self._evaluating = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="barrier-keeper", daemon=True)
            self._thread.start()

    def run(self) -> None:
        """Contend, then keep, until stopped; Consul errors back off and start over."""
        failures = 0
        while not self.stop.is_set():
            try:
                if self.holding:
                    self._keep()
                else:
                    self._contend()
                failures = 0
            except ConsulError as exc:
                failures += 1
                delay = error_backoff(failures, self.rng)
                self.metrics.consul_errors.labels(reason=exc.reason).inc()
                self.log.warning("keeper_consul_failed", error=str(exc),
                                 retry_in=round(delay, 2))
                self._step_down("consul error")  # still ours if the session lives: resumed
                self.stop.wait(delay)
            except Exception as exc:  # a keeper that dies holding the lock stalls the cluster
                failures += 1
                delay = error_backoff(failures, self.rng)
                self.log.exception("keeper_failed", error=str(exc), retry_in=round(delay, 2))
                self.release()
                self.stop.wait(delay)

    def release(self) -> None:
        """Give the lock up (a clean shutdown that keeps its session, e.g. ``--once``)."""
        session = self.session()
        if self.holding and session is not None:
            try:
                self.store.put(KEEPER, keeper_value(self.node_id, self.role, self.clock()),
                               release=session)
            except ConsulError as exc:
                self.log.warning("keeper_release_failed", error=str(exc))
        self._step_down("released")

    # -- contending ----------------------------------------------------------------------------

    def _contend(self) -> None:
        """Wait until no session holds the lock (or ours does), then try to take it."""
        index = 0
        while not self.stop.is_set():
            read = self.store.get(KEEPER, index, self.watch_wait if index else None)
            if index:
                self.metrics.watch_wakeups.labels(key=KEEPER).inc()
            index = next_index(index, read.index)
            session = self.session()
            if session is None:
                self.stop.wait(0.2)  # not registered (yet, or again): nothing to hold it with
                index = 0
                continue
            holder = read.entry.session if read.entry is not None else None
            if holder and holder != session:
                continue
            if not holder and self.stop.wait(self.rng.random() * CONTEND_SPREAD):
                return
            # Ours already: this read says so. Free: read again after the pause, someone else
            # may have taken it meanwhile.
            if self._try_acquire(session, read if holder else self.store.get(KEEPER)):
                return

    def _try_acquire(self, session: str, fresh: KeyRead) -> bool:
        """Take the lock unless ``fresh`` (a recent read of it) shows another session holds it;
        if it shows ours, carry on holding it."""
        holder = fresh.entry.session if fresh.entry is not None else None
        if holder == session:
            self._took(session, "resumed")  # a --once run or a restart left it to us
            return True
        if holder:
            return False  # someone else was quicker
        if self.store.put(KEEPER, keeper_value(self.node_id, self.role, self.clock()),
                          acquire=session):
            self._took(session, "acquired")
            return True
        return False

    def _held_by(self, session: str) -> bool:
        entry = self.store.get(KEEPER).entry
        return entry is not None and entry.session == session

    def pass_once(self) -> bool:
        """One synchronous pass without waiting: take the lock if it is free, and if we hold
        it decide on a fresh read. True if this participant is keeper. (For step-by-step tests;
        the thread does the same continuously.)"""
        session = self.session()
        if session is None:
            self._step_down("not registered")
            return False
        if self.holding and not self._held_by(session):
            self._step_down("lock no longer held by this participant's session")
        if not self.holding and not self._try_acquire(session, self.store.get(KEEPER)):
            return False
        snapshot = self.store.read()
        holder = snapshot.entries.get(KEEPER)
        if holder is None or holder.session != session:
            self._step_down("lock no longer held by this participant's session")
            return False
        self._evaluate(snapshot, session)
        return True

    def _took(self, session: str, how: str) -> None:
        self.holding = True
        self._term += 1
        self._summary_written = None
        self.metrics.keeper.set(1)
        self.metrics.keeper_acquisitions.inc()
        self.log.info("keeper_acquired", node_id=self.node_id, session=session, how=how)

    def _step_down(self, reason: str) -> None:
        if self.holding:
            self.holding = False
            self.metrics.keeper.set(0)
            self.metrics.rotation_waiting.set(0)
            if reason == "released" or self.stop.is_set():
                self.log.info("keeper_released", node_id=self.node_id)
            else:
                self.log.warning("keeper_lost", node_id=self.node_id, reason=reason)

    # -- keeping -------------------------------------------------------------------------------

    def _keep(self) -> None:
        """Read the prefix at a bounded rate while we hold the lock; decide on every read."""
        self._watch_datacenters()
        index, last_read = 0, 0.0
        while not self.stop.is_set() and self.holding:
            wait = self.watch_wait
            dwell = self._dwell_left()
            if dwell is not None:
                wait = max(1.0, min(wait, dwell))
            if self._recheck_soon:
                wait = min(wait, RECHECK_SECONDS)
            snapshot = self.store.read(index, wait if index else None)
            if index:
                self.metrics.watch_wakeups.labels(key="prefix").inc()
            index = next_index(index, snapshot.index)
            last_read = time.monotonic()
            session = self.session()
            holder = snapshot.entries.get(KEEPER)
            if session is None or holder is None or holder.session != session:
                self._step_down("lock no longer held by this participant's session")
                return
            nodes = self._evaluate(snapshot, session)
            # Reports arrive one by one; reading the prefix on each would cost O(N) per report.
            spacing = read_spacing(len(nodes))
            self.stop.wait(max(0.0, last_read + spacing - time.monotonic()))

    def _evaluate(self, snapshot: Snapshot, session: str,
                  writer: ConsulStore | None = None) -> dict[str, NodeState]:
        """Decide on one read (made while ``session`` held the lock) and write the record if
        the decision says so: check-and-set, fenced by that session still holding the lock.
        In a domain's other datacenters: mirror the primary's record instead. ``writer``: the
        calling thread's store."""
        with self._evaluating:
            return self._evaluate_read(snapshot, session, writer or self.store)

    def _evaluate_read(self, snapshot: Snapshot, session: str,
                       writer: ConsulStore) -> dict[str, NodeState]:
        nodes = registered_nodes(snapshot, lambda message: self.on_bad_input("nodes", message))
        try:
            record = self._record(snapshot)
        except RotationInputError:
            return nodes  # a malformed record is left for the operator; nothing advances
        now = self.clock()
        if self.domain is not None and not self.domain.is_primary:
            record = self._mirror(snapshot, record, session, writer)
        else:
            record = self._decide(snapshot, record, nodes, session, writer, now)
        self._last_record = record
        if self.domain is not None:
            self._publish_summary(self.domain, record, nodes, now, session, writer)
        waiting = barrier(record, nodes, now, self.policy).waiting_on if record else ()
        self.metrics.rotation_waiting.set(len(waiting))
        self.metrics.keeper_participants.set(len(nodes))
        return nodes

    def _decide(self, snapshot: Snapshot, record: RotationRecord | None,
                nodes: dict[str, NodeState], session: str, writer: ConsulStore,
                now: float) -> RotationRecord | None:
        desired_root = self._desired_root(snapshot)
        summaries = self._remote.summaries() if self._remote is not None else {}
        # A record lost in the primary is rebuilt from what every datacenter serves.
        voters = {**remote_participants(summaries), **nodes} if record is None else nodes
        decision = decide(record, desired_root, voters, now, self.policy,
                          new_id=uuid.uuid4().hex[:12])
        if decision.record is not None and record is not None and self.domain is not None \
                and advances(record, decision.record):
            blocked = blocking_datacenters(record, summaries, self.domain.others)
            if blocked:
                if blocked != self._waiting_logged:
                    self._waiting_logged = blocked
                    self.log.info("rotation_waiting_for_datacenters", keeper=self.node_id,
                                  rotation_id=record.id, phase=record.phase,
                                  datacenters=list(blocked))
                return record
        self._waiting_logged = ()
        if decision.record is None:
            self._log_events(decision, record)
            return record
        # A plain check-and-set is not enough: a keeper that paused after its read may
        # write after Consul lost its data, when index 0 matches again (the rotation model
        # found it). Sessions die with the data, so the fence refuses that write.
        if writer.put_if_locked(ROTATION, decision.record.to_json(),
                                cas=snapshot.modify_index(ROTATION), lock_key=KEEPER,
                                session=session):
            self._log_events(decision, record)
            return decision.record
        self.metrics.cas_conflicts.inc()  # the next read shows who won
        return record

    # -- across datacenters ------------------------------------------------------------------

    def _watch_datacenters(self) -> None:
        """On taking the lock in a domain: learn this agent's datacenter (once) and watch the
        other datacenters for as long as this holding lasts."""
        if not self.datacenters:
            return
        if self.domain is None:
            self.domain = Domain(self.datacenters, self.store.local_datacenter())
        term = self._term
        self._remote = RemoteWatches(
            store=self.store, domain=self.domain, watch_wait=self.watch_wait,
            on_change=self._remote_changed, log=self.log, metrics=self.metrics,
            stopped=lambda: self.stop.is_set() or not self.holding or self._term != term)
        self._remote.start()

    def _remote_changed(self, local: ConsulStore) -> None:
        """Another datacenter's key changed (or became unknown): decide again on a fresh read
        of our own prefix (one that shows the lock still ours)."""
        session = self.session()
        if not self.holding or session is None:
            return
        snapshot = local.read()
        holder = snapshot.entries.get(KEEPER)
        if holder is not None and holder.session == session:
            self._evaluate(snapshot, session, local)

    def _mirror(self, snapshot: Snapshot, record: RotationRecord | None, session: str,
                writer: ConsulStore) -> RotationRecord | None:
        """Copy the primary's record into this datacenter's ``rotation`` key (fenced
        check-and-set); an absent or unknown primary record leaves ours as it is."""
        remote = self._remote.primary_record() if self._remote is not None else None
        raw = remote.entry.value if remote is not None and remote.entry is not None else None
        if raw is None or raw == snapshot.value(ROTATION):
            return record
        try:
            primary = parse_record(raw)
        except RotationInputError as exc:
            self.on_bad_input(ROTATION, f"the primary datacenter's record: {exc}")
            return record
        if writer.put_if_locked(ROTATION, raw, cas=snapshot.modify_index(ROTATION),
                                lock_key=KEEPER, session=session):
            self.log.info("rotation_mirrored", keeper=self.node_id, rotation_id=primary.id,
                          phase=primary.phase, stable=primary.stable)
            return primary
        self.metrics.cas_conflicts.inc()
        return record

    def _publish_summary(self, domain: Domain, record: RotationRecord | None,
                         nodes: dict[str, NodeState], now: float, session: str,
                         writer: ConsulStore) -> None:
        """This datacenter's ``summary`` for the primary's keeper (and ``kafka-pki status``),
        written when it changes: a few times per phase, whatever the participants' count."""
        raw = summarize(domain.local, record, nodes, now, self.policy).to_json()
        if raw != self._summary_written and writer.put_if_locked(
                SUMMARY, raw, cas=None, lock_key=KEEPER, session=session):
            self._summary_written = raw

    def _record(self, snapshot: Snapshot) -> RotationRecord | None:
        raw = snapshot.value(ROTATION)
        if raw is None:
            return None
        try:
            return parse_record(raw)
        except RotationInputError as exc:
            self.on_bad_input(ROTATION, str(exc))
            raise

    def _desired_root(self, snapshot: Snapshot) -> str | None:
        try:
            root = parse_root_name(snapshot.value(ACTIVE_ROOT))
            self.check_root(root)
        except RotationInputError as exc:
            self.on_bad_input(ACTIVE_ROOT, str(exc))
            return None
        except VaultError as exc:
            # Unknown for now (Vault unreachable): the current rotation still advances, and the
            # next read comes soon rather than at the end of a quiet watch.
            self.log.warning("keeper_root_check_failed", root=root, error=str(exc))
            self._recheck_soon = True
            return None
        self._recheck_soon = False
        return root

    def _dwell_left(self) -> float | None:
        record = self._last_record
        if record is None or self.policy.min_dwell <= 0 or record.stable:
            return None
        return record.phase_since + self.policy.min_dwell - self.clock() + 0.05

    def _log_events(self, decision: Decision, record: RotationRecord | None) -> None:
        for event in decision.events:
            if event.name == "rotation_deferred":
                key = (str(event.fields.get("requested")), record.id if record else "")
                if key in self._deferred_logged:
                    continue
                self._deferred_logged.add(key)
                self.log.warning(event.name, keeper=self.node_id, **dict(event.fields))
            else:
                self.log.info(event.name, keeper=self.node_id, **dict(event.fields))
