"""A participant in the Consul-coordinated root rotation (the auth manager's desired source).

Protocol per pass: register (session + ``nodes/<id>``), read the ``rotation`` record (one key),
install that phase's material and report what the broker or app verifiably serves. The
participant watches only the ``rotation`` key, so other participants' reports never wake it;
the barrier is evaluated by the keeper (:mod:`sidecar.keeper`), a role any participant may
take, which this participant contends for in the background.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import layout
from sidecar.config import AuthManagerConfig, consul_token
from sidecar.consul_access import token_source
from sidecar.consul_store import ConsulError, ConsulStore, KeyRead, watch
from sidecar.domain import parse_datacenters
from sidecar.keeper import ACTIVE_ROOT, KEEPER, NODES, ROTATION, BarrierKeeper
from sidecar.manager import AuthManager
from sidecar.manifest import Acknowledgement, Manifest, ManifestError
from sidecar.metrics import AuthManagerMetrics
from sidecar.renewal import Desired
from sidecar.restart_lock import RestartLock
from sidecar.rotation import (
    NodeState,
    PhaseMaterial,
    Policy,
    RotationInputError,
    RotationRecord,
    install_step,
    parse_record,
)
from sidecar.vault import VaultError
from sidecar.volume import Volume

SESSION_FILE = ".consul-session"


def served_by_ack(volume: Volume, manifest: Manifest | None, ack: Acknowledgement | None
                  ) -> Manifest | None:
    """The manifest of the generation the monitor verified as served, if still on disk."""
    if ack is None:
        return None
    if manifest is not None and ack.generation == manifest.generation:
        return manifest if ack.serial == manifest.serial else None
    directory = layout.generation_dir(volume.root, ack.generation)
    try:
        old = Manifest.from_json((directory / layout.MANIFEST).read_bytes())
    except (OSError, ManifestError):
        return None
    return old if old.serial == ack.serial else None


def published_state(node_id: str, role: str, served: Manifest | None,
                    installed: Manifest | None, acted: Desired | None, now: float) -> NodeState:
    """What a participant publishes under ``nodes/<id>``: the generation its monitor verified as
    served (``served``), given the volume's latest generation (``installed``) and what the last
    record read asked of it (``acted``).

    The barrier counts a participant only once it acted on the current record: that is the
    record it last read, if what it serves is what that record asked of it and nothing newer is
    installed; otherwise the id the served generation's manifest carries. A newer generation
    the monitor has not served yet may be of a lower phase of that record (its monitor may
    serve any of them next), so it would not bound what the participant serves.

    Before the monitor verified anything, the installed material is published without a
    rotation id or serial: the barrier does not count it, but a record rebuilt after Consul
    lost its data accounts for what the monitor is about to serve.
    """
    if served is None:
        if installed is None:
            return NodeState(node_id, role=role, updated_at=now)
        return NodeState(node_id, role=role, trust=frozenset(installed.trust),
                         signer=installed.signer, updated_at=now)
    latest = installed is not None and (installed.generation, installed.serial) == (
        served.generation, served.serial)
    rotation_id, phase = served.rotation_id, None
    if latest and acted is not None and acted == (
            Desired(served.signer, tuple(served.trust), acted.rotation_id, acted.phase)):
        rotation_id, phase = acted.rotation_id, acted.phase
    return NodeState(node_id, role=role, trust=frozenset(served.trust), signer=served.signer,
                     serial=served.serial, issuer=served.issuer, not_after=served.not_after,
                     rotation_id=rotation_id, phase=phase, updated_at=now)


class Registration:
    """This participant's Consul session and ``nodes/<id>`` key, renewed in the background.

    The session id is kept on the volume so that a restarted auth manager (or the long
    running one after the ``--once`` init run) continues the same registration without a gap.
    """

    def __init__(self, store: ConsulStore, node_id: str, ttl: int, session_file: Path,
                 log: Any, on_lost: Callable[[], None]) -> None:
        self.store = store
        self.node_id = node_id
        self.ttl = ttl
        self.session_file = session_file
        self.log = log
        self.on_lost = on_lost
        self.session_id: str | None = None
        self.published: bytes | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return NODES + self.node_id

    def current_session(self) -> str | None:
        """The live session once this participant's report is published under it (None while
        unregistered): the keeper lock is taken with it, so a keeper always counts itself."""
        with self._lock:
            return self.session_id if self.published is not None else None

    def ensure(self, state: NodeState) -> None:
        """Hold a live session and the node key; (re)register if either was lost."""
        with self._lock:
            if self.session_id is None:
                self.session_id = self._resume_or_create()
                self.published = None
            self._publish(state)
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                            name="consul-session")
            self._thread.start()

    def publish(self, state: NodeState) -> None:
        with self._lock:
            if self.session_id is not None:
                self._publish(state)

    def _publish(self, state: NodeState) -> None:
        # Compare without the timestamp: rewriting an unchanged state would wake every
        # participant's watch, whose pass would rewrite its own state, and so on forever.
        unchanged = dataclasses.replace(state, updated_at=None).to_json()
        if unchanged == self.published:
            return
        assert self.session_id is not None
        if not self.store.put(self.key, state.to_json(), acquire=self.session_id):
            raise ConsulError(f"Consul refused {self.key} to session {self.session_id}: another "
                              "live session holds it (duplicate node_id?)", "conflict")
        self.published = unchanged

    def _resume_or_create(self) -> str:
        with contextlib.suppress(OSError):
            saved = self.session_file.read_text().strip()
            if saved and self.store.renew_session(saved):
                self.log.info("consul_session_resumed", session=saved, node_id=self.node_id)
                return saved
        session_id = self.store.create_session(self.store.prefix + self.node_id, self.ttl)
        self._save(session_id)
        self.log.info("consul_session_created", session=session_id, node_id=self.node_id)
        return session_id

    def _save(self, session_id: str) -> None:
        tmp = self.session_file.with_name(self.session_file.name + ".tmp")
        try:
            self.session_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(session_id)
            os.replace(tmp, self.session_file)
        except OSError as exc:  # the volume may be read-only: registration still works
            self.log.warning("consul_session_not_saved", error=str(exc))

    def _renew_loop(self) -> None:
        renew_store = self.store.clone()
        while not self._stop.wait(self.ttl / 3):
            session_id = self.session_id
            if session_id is None:
                continue
            try:
                alive = renew_store.renew_session(session_id)
            except ConsulError as exc:
                self.log.warning("consul_session_renew_failed", error=str(exc))
                continue
            if not alive:
                with self._lock:
                    if self.session_id == session_id:
                        self.session_id = None
                self.log.error("consul_session_lost", session=session_id,
                               node_id=self.node_id,
                               detail="session expired: re-registering")
                self.on_lost()

    def close(self, destroy: bool) -> None:
        self._stop.set()
        if destroy and self.session_id is not None:
            with contextlib.suppress(ConsulError):
                self.store.destroy_session(self.session_id)
            with contextlib.suppress(OSError):
                self.session_file.unlink()


class RotationParticipant:
    """DesiredSource for coordinated mode: the rotation record decides signer and trust set."""

    def __init__(self, *, store: ConsulStore, watch_store: ConsulStore, manager: AuthManager,
                 metrics: AuthManagerMetrics, log: Any, node_id: str, role: str,
                 policy: Policy, session_ttl: int, watch_wait: float,
                 require_ack: bool, stop: threading.Event,
                 clock: Callable[[], float] = time.time,
                 keeper_store: ConsulStore | None = None,
                 record_wait: float = 10.0, keeper_thread: bool = True,
                 ack_poll: float = 0.25, datacenters: tuple[str, ...] = ()) -> None:
        self.store = store
        self.watch_store = watch_store
        self.manager = manager
        self.metrics = metrics
        self.log = log
        self.node_id = node_id
        self.role = role
        self.policy = policy
        self.watch_wait = watch_wait
        self.require_ack = require_ack
        self.stop = stop
        self.clock = clock
        self.record_wait = record_wait
        self.keeper_thread = keeper_thread
        self.ack_poll = ack_poll
        #: Read the record at every pass even while the watch is live (step-by-step tests).
        self.fresh_reads = False
        self.changed = threading.Event()
        self.registration = Registration(store, node_id, session_ttl,
                                         manager.volume.root / SESSION_FILE, log,
                                         on_lost=self.changed.set)
        self.keeper = BarrierKeeper(
            store=keeper_store or store.clone(), session=self.registration.current_session,
            node_id=node_id, role=role, policy=policy, watch_wait=watch_wait, metrics=metrics,
            log=log, stop=stop, check_root=self._check_root_exists,
            on_bad_input=self._bad_input, clock=clock, datacenters=datacenters)
        self.restart_lock = RestartLock(
            store=store.clone(), session=self.registration.current_session, node_id=node_id,
            volume=manager.volume.root, metrics=metrics, log=log, stop=stop)
        self._watcher: threading.Thread | None = None
        self._watched: KeyRead | None = None
        self._used: KeyRead | None = None  # the read the last pass decided on
        self._watched_lock = threading.Lock()
        self._watch_live = False
        self._known_roots: set[str] = set()
        self._reported_bad: set[str] = set()
        self._record: RotationRecord | None = None
        self._ack_stamp = self._ack_mtime()  # an acknowledgement from before is no news
        self._acted: Desired | None = None  # what the last record read asked of us
        self._served: NodeState | None = None  # what we last reported as verifiably served
        metrics.rotation_min_dwell.set(policy.min_dwell)
        # Computed at scrape time against the record as last seen: the "participant behind"
        # alert compares it with pki_rotation_phase, which moves without a pass of ours.
        metrics.rotation_served_phase.set_function(self._served_phase)

    @classmethod
    def from_config(cls, config: AuthManagerConfig, manager: AuthManager,
                    metrics: AuthManagerMetrics, log: Any,
                    stop: threading.Event) -> RotationParticipant:
        assert config.consul_addr is not None
        prefix = f"{config.consul_prefix.strip('/')}/{config.cluster}/"
        store = ConsulStore(config.consul_addr, prefix, consul_token(config),
                            token_source=token_source(bool(config.consul_token),
                                                      config.consul_token_file))
        return cls(store=store, watch_store=store.clone(), manager=manager, metrics=metrics,
                   log=log, node_id=config.participant_id, role=config.node_role,
                   policy=Policy(config.min_dwell, config.expected_members),
                   session_ttl=config.session_ttl, watch_wait=config.watch_wait,
                   require_ack=config.require_ack, stop=stop,
                   datacenters=parse_datacenters(config.datacenters))

    # -- watching ---------------------------------------------------------------------------

    def _start_background(self) -> None:
        if self._watcher is not None:
            return

        def on_change(read: KeyRead) -> None:
            with self._watched_lock:
                self._watched = read
                used = self._used
            # Only news wakes the loop: the watch's first answer is the record the first pass
            # reads itself, and waking for it ran that pass (a refused Vault attempt) again.
            if used is not None and used.content() != read.content():
                self.changed.set()

        def on_error(exc: ConsulError, delay: float) -> None:
            self._watch_live = False
            self.metrics.consul_errors.labels(reason=exc.reason).inc()
            self.log.warning("consul_watch_failed", error=str(exc), retry_in=round(delay, 2))

        def fetch(index: int, wait: float | None) -> KeyRead:
            read = self.watch_store.get(ROTATION, index, wait)
            self._watch_live = True
            return read

        self._watcher = threading.Thread(
            target=watch, name="consul-watch", daemon=True,
            args=(fetch, self.watch_wait, on_change, on_error, self.stop.is_set),
            kwargs={"on_wake": self.metrics.watch_wakeups.labels(key=ROTATION).inc})
        self._watcher.start()
        if self.keeper_thread:
            self.keeper.start()
        if self.role == "broker":  # only a broker's monitor asks for restarts
            self.restart_lock.start()

    def _read_record(self) -> KeyRead:
        """The record: as the live watch last delivered it (Consul would have answered the
        watch had it changed since; a pass per phase then costs no read), else read now."""
        with self._watched_lock:
            if self._watch_live and self._watched is not None and not self.fresh_reads:
                self._used = self._watched
                return self._watched
        read = self.store.get(ROTATION)
        with self._watched_lock:
            if self._watched is None or read.index >= self._watched.index:
                self._watched = read
            self._used = self._watched
            return self._watched

    # -- DesiredSource ----------------------------------------------------------------------

    def node_state(self, manifest: Manifest | None, ack: Acknowledgement | None) -> NodeState:
        """What this participant verifiably serves, given the volume's current manifest and
        the monitor's acknowledgement."""
        served = manifest if not self.require_ack else served_by_ack(
            self.manager.volume, manifest, ack)
        return published_state(self.node_id, self.role, served, manifest, self._acted,
                               self.clock())

    def desired(self) -> Desired:
        """Register, read the record, and return this participant's target material."""
        try:
            return self._desired()
        except ConsulError as exc:
            self.metrics.consul_errors.labels(reason=exc.reason).inc()
            raise RotationConsulError(str(exc), exc.reason) from exc

    def _desired(self) -> Desired:
        installed = self.manager.current_manifest()
        me = self.node_state(installed, self.manager.volume.read_ack())
        self.registration.ensure(me)
        self._start_background()
        record = self._parse_record(self._await_record())
        if record is None:
            raise RotationInputError(
                f"no rotation record at {self.store.prefix}{ROTATION} yet: the barrier keeper "
                f"creates it from {self.store.prefix}{ACTIVE_ROOT} (is that key set? "
                "`kafka-pki init --root <mount>` sets it after checking the mount with Vault; "
                "`kafka-pki status` shows it and the keeper)")
        self._observe(record)
        phase, material = install_step(record, None if installed is None else PhaseMaterial(
            frozenset(installed.trust), installed.signer))
        for root in material.trust:
            self._check_root_exists(root)
        self._acted = Desired(signer=material.signer, trust=tuple(material.trust),
                              rotation_id=record.id, phase=phase)
        return self._acted

    def _await_record(self) -> KeyRead:
        """The record; when there is none yet (a new cluster), wait a little for the keeper
        (perhaps this very participant) to create it."""
        read = self._read_record()
        deadline = time.monotonic() + self.record_wait
        while read.entry is None and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.changed.wait(min(left, 0.25))
            self.changed.clear()
            with self._watched_lock:
                read = self._used = self._watched or read
        return read

    def report(self, manifest: Manifest | None, ack: Acknowledgement | None) -> None:
        """Publish what is served now (after the monitor acknowledged it)."""
        state = self.node_state(manifest, ack)
        self._served = state
        try:
            self.registration.publish(state)
        except ConsulError as exc:
            self.metrics.consul_errors.labels(reason=exc.reason).inc()
            self.log.warning("report_failed", error=str(exc))

    def wait(self, timeout: float) -> None:
        """Sleep until the record changes, the monitor acknowledges, or timeout."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.changed.wait(min(left, self.ack_poll)):
                self.changed.clear()
                return
            if self._ack_changed():
                return

    def close(self, destroy: bool = True) -> None:
        """Stop; destroy the session (its keys and the keeper lock go at once) or keep it for
        the next process (``--once``), giving the keeper lock up either way."""
        if not destroy:
            self.keeper.release()
        self.restart_lock.release()
        self.stop.set()
        self.registration.close(destroy=destroy)

    # -- helpers ----------------------------------------------------------------------------

    def _ack_mtime(self) -> float | None:
        try:
            return os.stat(layout.ack_path(self.manager.volume.root)).st_mtime
        except OSError:
            return None

    def _ack_changed(self) -> bool:
        stamp = self._ack_mtime()
        changed = stamp != self._ack_stamp
        self._ack_stamp = stamp
        return changed

    def _bad_input(self, key: str, message: str) -> None:
        self.metrics.rotation_input_errors.labels(key=key).inc()
        if message not in self._reported_bad:
            self._reported_bad.add(message)
            self.log.error("rotation_input_invalid", key=key, error=message,
                           action="ignored; nothing rotates on this value")

    def _check_root_exists(self, root: str) -> None:
        if root in self._known_roots:
            return
        try:
            self.manager.issuer.vault.ca_certificates(root)
        except VaultError as exc:
            if exc.reason in ("not_found", "invalid_request", "malformed_response"):
                kind = "issuer" if ":" in root else "mount"
                raise RotationInputError(f"root {root!r} is not a usable Vault PKI {kind} "
                                         f"({exc})") from exc
            raise
        self._known_roots.add(root)

    def _parse_record(self, read: KeyRead) -> RotationRecord | None:
        if read.entry is None or read.entry.value is None:
            return None
        try:
            return parse_record(read.entry.value)
        except RotationInputError as exc:
            self._bad_input(ROTATION, str(exc))
            raise RotationInputError(f"{exc}; keeping the current material") from exc

    def _observe(self, record: RotationRecord) -> None:
        previous = self._record
        self._record = record
        now = self.clock()
        m = self.metrics
        if previous is None or (previous.id, previous.phase) != (record.id, record.phase):
            m.watch_latency.observe(max(0.0, now - record.phase_since))
            m.rotation_info.clear()
            m.rotation_info.labels(rotation_id=record.id, from_root=record.from_root,
                                   to_root=record.to_root).set(1)
        m.rotation_phase.set(record.phase)
        if previous is None:
            # Computed at scrape time: a participant stuck at the barrier runs no pass for
            # hours, and the "stuck in phase" alert must still see the time grow.
            m.rotation_phase_seconds.set_function(self._seconds_in_phase)
        m.rotation_stable.set(1 if record.stable else 0)

    def _served_phase(self) -> float:
        """The phase of the current record that the material our monitor verified (and we
        reported) belongs to; -1 before any verification or record."""
        record, served = self._record, self._served
        if record is None or served is None or served.serial is None:
            return -1.0
        phase = record.phase_of(served.trust, served.signer)
        return -1.0 if phase is None else float(phase)

    def _seconds_in_phase(self) -> float:
        record = self._record
        return 0.0 if record is None else max(0.0, self.clock() - record.phase_since)


class RotationConsulError(ConsulError):
    """Consul failed during a reconcile pass; the material stays as it is. Keeps the
    underlying ConsulError's reason: a 403 must stay permanent (``forbidden``)."""


__all__ = ["ACTIVE_ROOT", "KEEPER", "NODES", "ROTATION", "RotationConsulError",
           "RotationParticipant", "published_state"]
