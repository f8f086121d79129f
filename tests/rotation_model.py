"""A model of the coordinated root rotation around :mod:`sidecar.rotation`'s pure state machine.

Consul holds the operator's ``active-root`` value, the ``rotation`` record (with a ModifyIndex
for check-and-set), the registry ``nodes/<id>`` of participants holding a live session and the
``keeper`` lock (``World.keeper``: whose session holds it; freed when that session ends: expiry
after a crash, a partition, a data loss). Each participant (a broker or a client with its
sidecars) runs the loop of :class:`sidecar.coordinator.RotationParticipant` as separate,
arbitrarily interleaved steps: register, read the record (a read that goes stale as others
move), install (the auth manager writes a generation to the volume), serve (the TLS monitor
makes the broker/app serve an installed generation, verifies and acknowledges it) and report
(publishing what is served; it may lag). The barrier keeper (:mod:`sidecar.keeper`) adds acquire
(a participant with a session takes the free lock and believes it is keeper), survey (the keeper
reads the whole prefix: record, ModifyIndex, active-root, reports that may be late by the time
it decides), decide + check-and-set on that read (only a participant that believes it is keeper;
a stale one too) and step_down (a believer notices the lock is not its own). Session loss frees
the lock without the holder noticing, so two participants may believe they are keeper; a crash
or restart ends the belief (a new process). Crashes, session expiry, restarts, joins, operator
flips, time, and (only with ``expected_members`` = participants) partitions and a Consul data
loss are steps too. Everything is immutable and deterministic so that the hypothesis machine and
the exhaustive search share it and states can be hashed. Safety is checked on what the monitors
serve (what handshakes use), never on what is merely installed.

What the model takes from the coordinator, each the weakest safe choice where it abstracts:

- it registers before it reads, and a (re)registration discards any earlier read of the record
  (not a keeper's read of the prefix: its check-and-set may be in flight across it);
- a keeper decides only on a read of the prefix that shows the lock held by its session
  (``Config.survey_checks_lock``), but may decide on it after losing the lock; the record's
  check-and-set on the ModifyIndex is in one Consul transaction that also checks the lock is
  held by the writer's session (``ConsulStore.put_if_locked``, ``Config.fenced_writes``), so a
  stale keeper's write fails; without the fence a stale keeper's check-and-set on index 0 wins
  after a Consul data loss and breaks safety
  (``test_a_stale_keepers_write_across_a_consul_data_loss_needs_a_fence``);
- a check-and-set uses the ModifyIndex of the read it decided on (0: the key was absent); after
  a successful one it may install the record it wrote but reads again before deciding again
  (``Config.decide_again_after_cas`` shows why);
- it decides the phase by the coordinator's own rule (:func:`sidecar.rotation.install_step`)
  from the generation it installed last, not from the one its monitor serves
  (``Config.decide_from`` and ``test_phases_installed_never_go_down_while_the_monitor_lags``
  show why), and writes a generation only when the material differs from the latest installed
  one (the manifest carries the id of the record it was installed from); either way the
  decision becomes the one it last acted on (the coordinator's ``_acted``);
- the monitor serves installed generations in order but may skip some and may lag: of the
  last ``MONITOR_BACKLOG`` generations installed after the one it serves, it serves the latest
  or an older one (it was applying that one when the newer one arrived); a generation
  superseded that often before the monitor got to it is skipped;
- it publishes what its monitor acknowledged, computed by the coordinator's own
  :func:`sidecar.coordinator.published_state` (see :func:`published`): the id of the record it
  last acted on when the served material is what that decision asked and nothing newer is
  installed, else the id the served generation's manifest carries; before its monitor served
  anything, the installed material without a rotation id;
- an install started before its session expired may still complete (it is published when the
  participant registers again); reports may lag installs and serves (``Config.lag_reports``);
- a restarted process registers only once its old session has expired (Consul refuses to
  acquire a key another session holds); a crash loses the volume (the participant comes back
  serving nothing);
- the usual restart (``resume``, ``Config.allow_resume``) keeps the volume, the monitor and the
  broker: the new auth manager resumes the session saved on the volume, republishes under it
  without its predecessor's decision, and resumes a lock that session holds;
- Consul counts its indices from 1 again after losing its data (``Config.reuse_indices``): a
  check-and-set on a ModifyIndex read before the loss may match afterwards, at any index.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator
from typing import Any, Literal, TypeVar, get_args

from sidecar.coordinator import published_state
from sidecar.manifest import Manifest
from sidecar.renewal import Desired
from sidecar.rotation import (
    MAX_PHASE,
    Event,
    NodeState,
    PhaseMaterial,
    Policy,
    RotationInputError,
    RotationRecord,
    compatible,
    decide,
    install_step,
    parse_root_name,
)

ROOTS = ("A", "B", "C")
INVALID_ROOTS: tuple[str | None, ...] = (None, "not a root!")
PLACEHOLDER_ID = "<new>"
STALE_INDEX = -1
#: How many installed, not yet served generations the monitor may still choose from.
MONITOR_BACKLOG = 2
DecideFrom = Literal["installed", "served"]

Action = tuple[Any, ...]
T = TypeVar("T")


def evolve(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for the model's frozen dataclasses, without re-running
    ``__init__`` (several times faster; the exhaustive search creates millions)."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


@functools.lru_cache(maxsize=64)
def validated_root(raw: str | None) -> str | None:
    """The operator's value as a participant validates it: None when unset or malformed."""
    try:
        return parse_root_name(raw)
    except RotationInputError:
        return None


def stable_material(root: str) -> PhaseMaterial:
    """What every participant serves when nothing rotates: trust {root}, signed by root."""
    return PhaseMaterial(frozenset({root}), root)


@dataclasses.dataclass(frozen=True)
class Config:
    """Which steps the model offers, and contracts of the coordinator that can be broken on
    purpose to show that the proofs catch it (``decide_again_after_cas``, ``decide_from``,
    ``fenced_writes``) or that safety does not need them (``survey_checks_lock``)."""

    max_participants: int = 8
    lag_reports: bool = True
    #: The monitor serves installed generations in separate steps (False: each one at once).
    lag_monitor: bool = True
    faults: bool = False
    allow_crash: bool = True
    allow_join: bool = True
    decide_again_after_cas: bool = False
    #: Which generation the phase is decided from: the coordinator's is "installed".
    decide_from: DecideFrom = "installed"
    #: A keeper decides only on a read of the prefix that shows the lock held by its own
    #: session (False: on any read while it believes it is keeper).
    survey_checks_lock: bool = True
    #: A stale keeper with no read it could still win a check-and-set with steps down at once
    #: (it could do nothing else: merges states that behave the same; False: only in a
    #: step_down step, deciding in vain before).
    merge_stale_keepers: bool = True
    #: The record is written in a Consul transaction that also checks the lock is held by the
    #: writer's session (``check-session``, :meth:`sidecar.consul_store.ConsulStore.put_if_locked`):
    #: a stale keeper's write fails. False: check-and-set on the ModifyIndex alone, which a
    #: stale keeper wins across a Consul data loss.
    fenced_writes: bool = True
    #: A restart of the auth manager that keeps the volume and resumes its session (and with it
    #: a held keeper lock): the usual restart (``Registration._resume_or_create``,
    #: ``BarrierKeeper._try_acquire``: "resumed").
    allow_resume: bool = False
    #: Consul counts its indices from 1 again after losing its data, so a ModifyIndex read
    #: before the loss may match one after it (False: indices are never reused).
    reuse_indices: bool = True

    def __post_init__(self) -> None:
        if self.decide_from not in get_args(DecideFrom):
            raise ValueError(f"decide_from={self.decide_from!r}")


@dataclasses.dataclass(frozen=True)
class RecordRead:
    """A participant's read of the ``rotation`` key (the only key it watches): the record, its
    ModifyIndex and the Consul epoch it was read in. What it installs from."""

    record: RotationRecord | None
    index: int
    epoch: int


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A keeper's read of the whole prefix: record (with its ModifyIndex), active-root, registry.
    What it decides on."""

    record: RotationRecord | None
    index: int
    epoch: int
    active_root: str | None
    registry: tuple[NodeState, ...]
    # The record deciding on it would write (new rotations get PLACEHOLDER_ID), computed at read
    # time: only the exhaustive search's state key uses it, with time standing still.
    plan: RotationRecord | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Generation:
    """A generation on a participant's volume: its material, the rotation id its manifest
    carries (the record it was installed from) and the Consul epoch of the read it came from."""

    material: PhaseMaterial
    rotation_id: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class Participant:
    """A broker or client, its auth manager and its TLS monitor (which share a volume)."""

    node_id: str
    role: str
    alive: bool = True
    session: bool = False
    #: The generation the monitor verified and acknowledged: what handshakes use.
    serving: Generation | None = None
    #: Generations installed after it, not served yet, oldest first (at most MONITOR_BACKLOG).
    backlog: tuple[Generation, ...] = ()
    #: What the last decision asked (the coordinator's ``_acted``), and its read's epoch.
    acted: Desired | None = None
    acted_epoch: int = -1
    pending_report: bool = False
    #: Its last read of the ``rotation`` key (what it installs from).
    snapshot: RecordRead | None = None
    #: Whether it believes it holds the ``keeper`` lock (it may be wrong: its session expired
    #: and it has not noticed yet; it notices in a ``step_down`` step).
    keeper: bool = False
    #: Its last read of the whole prefix as keeper (what it decides on).
    view: Snapshot | None = None

    @property
    def installed(self) -> Generation | None:
        """The latest generation on the volume (the one ``current`` points to)."""
        return self.backlog[-1] if self.backlog else self.serving

    def served_epoch(self) -> int:
        """The epoch of the decision the served material stands for: the last one if it asked
        for this material (as for the published id), else the served generation's."""
        assert self.serving is not None
        if self.acted is not None and desired_material(self.acted) == self.serving.material:
            return self.acted_epoch
        return self.serving.epoch

    def node_state(self) -> NodeState:
        """What it publishes under ``nodes/<id>``: what its monitor serves (see
        :func:`published`)."""
        return published(self.node_id, self.role, self.serving, self.installed,
                         len(self.backlog), self.acted)


@functools.lru_cache(maxsize=1024)
def desired_material(desired: Desired) -> PhaseMaterial:
    return PhaseMaterial(frozenset(desired.trust), desired.signer)


@functools.lru_cache(maxsize=1 << 16)
def published(node_id: str, role: str, served: Generation | None, installed: Generation | None,
              newer: int, acted: Desired | None) -> NodeState:
    """What the coordinator publishes (its own :func:`sidecar.coordinator.published_state`) for
    a participant whose monitor serves ``served``, with ``newer`` generations installed after it,
    the latest ``installed``, and whose last decision was ``acted``: manifests numbered so that
    the served one is the latest exactly when nothing newer is installed."""
    return published_state(node_id, role, _manifest(served, 1),
                           _manifest(installed, 1 + newer), acted, 0.0)


def _manifest(generation: Generation | None, number: int) -> Manifest | None:
    if generation is None:
        return None
    material = generation.material
    return Manifest(generation=number, created_at="", signer=material.signer,
                    trust=tuple(sorted(material.trust)), serial=str(number), subject="",
                    issuer="", sans=(), not_before="", not_after="", key_type="", files={},
                    rotation_id=generation.rotation_id)


@dataclasses.dataclass(frozen=True)
class World:
    """Consul plus every participant; ``epoch`` counts Consul data losses."""

    policy: Policy
    active_root: str | None
    record: RotationRecord | None
    index: int
    registry: tuple[NodeState, ...]
    participants: tuple[Participant, ...]
    now: float = 0.0
    epoch: int = 0
    next_index: int = 1
    next_id: int = 1
    #: The node whose session holds the ``keeper`` lock key (None: nobody's).
    keeper: str | None = None

    def entry(self, node_id: str) -> NodeState | None:
        for node in self.registry:
            if node.node_id == node_id:
                return node
        return None

    def registry_map(self) -> dict[str, NodeState]:
        return {node.node_id: node for node in self.registry}


def _role(i: int) -> str:
    return "broker" if i % 3 != 2 else "client"


def _node_id(i: int) -> str:
    return f"n{i}"


def initial_world(n: int, policy: Policy, *, from_nothing: bool = False,
                  root: str = "A", keeper: int | None = 0) -> World:
    """Either everyone registered and serving ``root`` under a stable record, participant
    ``keeper`` holding the lock (None: nobody yet), or nothing at all: no record, no
    registration, no keeper, nobody serving, ``active-root`` set to ``root``."""
    if from_nothing:
        people = tuple(Participant(_node_id(i), _role(i)) for i in range(n))
        return World(policy, root, None, 0, (), people)
    record = RotationRecord("r0", root, root, MAX_PHASE, 0.0, 0.0, 0.0)
    people = tuple(Participant(_node_id(i), _role(i), session=True,
                               serving=Generation(stable_material(root), "r0", 0),
                               acted=Desired(root, (root,), "r0", MAX_PHASE), acted_epoch=0,
                               keeper=i == keeper)
                   for i in range(n))
    registry = tuple(p.node_state() for p in people)
    return World(policy, root, record, 1, registry, people, next_index=2,
                 keeper=None if keeper is None else _node_id(keeper))


def _publish(registry: tuple[NodeState, ...], node: NodeState) -> tuple[NodeState, ...]:
    rest = [n for n in registry if n.node_id != node.node_id]
    return tuple(sorted((*rest, node), key=lambda n: n.node_id))


def _unpublish(registry: tuple[NodeState, ...], node_id: str) -> tuple[NodeState, ...]:
    return tuple(n for n in registry if n.node_id != node_id)


def _set(world: World, i: int, person: Participant, **changes: Any) -> World:
    people = list(world.participants)
    people[i] = person
    return evolve(world, participants=tuple(people), **changes)


# -- the steps --------------------------------------------------------------------------------

def enabled(world: World, config: Config, *,
            operator: Iterable[str | None] = ()) -> list[Action]:
    """Every step that may happen next (participant steps first, then joins, the operator's
    candidate flips and faults; time does not pass)."""
    actions: list[Action] = []
    for i in range(len(world.participants)):
        for kind in PARTICIPANT_STEPS:
            if can(world, config, kind, i):
                if kind == "serve":  # the latest installed generation or an older one
                    actions.extend(("serve", i, j)
                                   for j in range(len(world.participants[i].backlog)))
                else:
                    actions.append((kind, i))
    if config.allow_join and not config.faults and \
            len(world.participants) < config.max_participants:
        actions.append(("join",))
    actions.extend(("flip", raw) for raw in operator if raw != world.active_root)
    if config.faults:
        actions.append(("wipe", True))
        actions.append(("wipe", False))
    return actions


PARTICIPANT_STEPS = ("register", "acquire", "step_down", "read", "survey", "decide", "install",
                     "serve", "report", "crash", "expire", "restart", "expire_live", "resume")


def can(world: World, config: Config, kind: str, i: int) -> bool:
    """Whether participant ``i`` may take step ``kind`` now."""
    p = world.participants[i]
    entry = world.entry(p.node_id)
    if kind == "register":
        return p.alive and not p.session and entry is None
    if kind == "acquire":
        # Free, or held by its own session (a restarted process that resumed the session
        # resumes the lock: BarrierKeeper._try_acquire).
        return p.alive and p.session and not p.keeper and world.keeper in (None, p.node_id)
    if kind == "step_down":
        return p.alive and p.keeper and world.keeper != p.node_id
    if kind == "read":
        return p.alive and p.session
    if kind == "survey":
        # The keeper's read shows the lock key: held by another session or by none, it steps
        # down instead of deciding on it (Config.survey_checks_lock).
        return p.alive and p.session and p.keeper and (
            world.keeper == p.node_id or not config.survey_checks_lock)
    if kind == "decide":
        # Only a participant that believes it holds the lock, rightly or not (its session may
        # have expired, or another one may hold the lock since): safety must not depend on it.
        return p.alive and p.keeper and p.view is not None
    if kind == "install":
        return p.alive and p.snapshot is not None and p.snapshot.record is not None
    if kind == "serve":
        return p.alive and bool(p.backlog)
    if kind == "report":
        return p.alive and p.session and p.pending_report
    if kind == "crash":
        return config.allow_crash and p.alive
    if kind == "expire":
        return not p.session and entry is not None
    if kind == "restart":
        return not p.alive
    if kind == "expire_live":
        return config.faults and p.alive and p.session
    if kind == "resume":
        return config.allow_resume and p.alive
    raise ValueError(kind)


def apply(world: World, config: Config, action: Action) -> tuple[World, tuple[Event, ...]]:
    """The world after ``action`` and the events a participant would log for it.
    ``("serve", i, j)`` serves ``backlog[j]`` (``("serve", i)``: the latest)."""
    kind = action[0]
    if kind == "join":
        i = len(world.participants)
        person = Participant(_node_id(i), _role(i))
        return evolve(world, participants=(*world.participants, person)), ()
    if kind == "flip":
        return evolve(world, active_root=action[1]), ()
    if kind == "tick":
        return evolve(world, now=world.now + action[1]), ()
    if kind == "wipe":
        # Every session (and with them the lock) is lost; nobody notices yet. Consul counts
        # its indices from 1 again (Config.reuse_indices).
        people = tuple(evolve(p, session=False) for p in world.participants)
        return _notice(evolve(
            world, record=None, index=0, registry=(), participants=people,
            epoch=world.epoch + 1, keeper=None,
            next_index=1 if config.reuse_indices else world.next_index,
            active_root=world.active_root if action[1] else None), config), ()
    i = action[1]
    p = world.participants[i]
    if kind == "register":
        # A (re)registered participant reads the record afresh before installing. A keeper's
        # read of the prefix is not discarded: its keeper thread may have checked the lock in
        # it just before, and its check-and-set may still be on its way.
        person = evolve(p, session=True, pending_report=False, snapshot=None)
        return _notice(_set(world, i, person, registry=_publish(
            world.registry, person.node_state())), config), ()
    if kind == "acquire":
        return _set(world, i, evolve(p, keeper=True), keeper=p.node_id), ()
    if kind == "step_down":
        return _set(world, i, evolve(p, keeper=False, view=None)), ()
    if kind == "read":
        old = p.snapshot
        if old is not None and (old.record, old.index, old.epoch) == (
                world.record, world.index, world.epoch):
            return world, ()  # the same read again
        return _set(world, i, evolve(p, snapshot=RecordRead(world.record, world.index,
                                                            world.epoch))), ()
    if kind == "survey":
        old = p.view
        if old is not None and (old.record, old.index, old.epoch, old.active_root,
                                old.registry) == (world.record, world.index, world.epoch,
                                                  world.active_root, world.registry):
            return world, ()  # the same read again
        return _set(world, i, evolve(p, view=_survey(world))), ()
    if kind == "decide":
        return _decide(world, config, i)
    if kind == "install":
        return _install(world, config, i), ()
    if kind == "serve":
        j = action[2] if len(action) > 2 else len(p.backlog) - 1
        return _reported(world, config, i, evolve(p, serving=p.backlog[j],
                                                  backlog=p.backlog[j + 1:])), ()
    if kind == "report":
        person = evolve(p, pending_report=False)
        return _set(world, i, person, registry=_publish(world.registry, person.node_state())), ()
    if kind == "crash":
        person = Participant(p.node_id, p.role, alive=False)
        return _set(world, i, person), ()
    # The session behind the lock is gone: Consul frees the lock (behavior=delete); a live
    # holder still believes it is keeper until it notices (step_down).
    keeper = None if world.keeper == p.node_id else world.keeper
    if kind == "expire":
        return _notice(evolve(world, registry=_unpublish(world.registry, p.node_id),
                              keeper=keeper), config), ()
    if kind == "restart":
        return _set(world, i, Participant(p.node_id, p.role)), ()
    if kind == "expire_live":
        person = evolve(p, session=False)
        return _notice(_set(world, i, person, registry=_unpublish(world.registry, p.node_id),
                            keeper=keeper), config), ()
    if kind == "resume":
        return _resume(world, config, i), ()
    raise ValueError(action)


def _resume(world: World, config: Config, i: int) -> World:
    """The auth manager restarts; the volume (and the session id on it), the monitor and the
    broker stay. The new process knows nothing of the old one's reads and decisions (``_acted``
    is gone, so it publishes the id the served generation's manifest carries), renews the
    session if Consul still has it and republishes under it (``Registration.ensure``). A lock
    its session holds stays held, by nobody who believes it, until the new keeper thread
    resumes it (an ``acquire`` of a lock its own session holds). A check-and-set the old
    process sent just before it stopped is a ``decide`` before this step: one landing later
    changes nothing more, as the same session fences it and the ModifyIndex orders it.
    Without a live session it registers again as usual."""
    p = world.participants[i]
    person = evolve(p, snapshot=None, acted=None, acted_epoch=-1, keeper=False, view=None,
                    pending_report=p.pending_report and p.session)
    if not p.session:
        return _set(world, i, person)
    return _reported(world, config, i, person)


def usable(view: Snapshot | None, world: World, reuse_indices: bool) -> bool:
    """Whether a check-and-set on ``view`` can still succeed, now or later: it was read at the
    current ModifyIndex, or while the key was absent (0: once Consul lost its data the key is
    absent again), or before a data loss (Consul counts from 1 again: any later index may
    match it, Config.reuse_indices)."""
    if view is None or view.index == STALE_INDEX:
        return False
    return view.index in (world.index, 0) or (reuse_indices and view.epoch != world.epoch)


def cas_matches(view: Snapshot, world: World, config: Config) -> bool:
    """Whether a check-and-set on the ModifyIndex of ``view`` succeeds now. A read from before
    a data loss matches any index since (the worst case of Consul reusing its indices: the
    schedule decides when the decision is made, so every collision is covered)."""
    if view.index == STALE_INDEX:
        return False
    if config.reuse_indices and view.epoch != world.epoch and view.index > 0 \
            and world.index > 0:
        return True
    return view.index == world.index


def _notice(world: World, config: Config) -> World:
    """A stale keeper (it believes it holds the lock, no session does or another one does) that
    has no read it could still win a check-and-set with can do nothing but step down (it may not
    read the prefix: Config.survey_checks_lock): the model lets it step down at once, which
    merges states that behave the same. One holding such a read stays a stale keeper until its
    step_down step, and may decide on it first (with ``fenced_writes`` that decision fails too:
    the merge still goes by the index alone, so that the searches keep exploring stale keepers
    deciding in vain)."""
    if not (config.survey_checks_lock and config.merge_stale_keepers):
        return world
    people = world.participants
    for i, p in enumerate(people):
        if p.keeper and world.keeper != p.node_id and not usable(p.view, world,
                                                                      config.reuse_indices):
            people = (*people[:i], evolve(p, keeper=False, view=None), *people[i + 1:])
    return world if people is world.participants else evolve(world, participants=people)


def _survey(world: World) -> Snapshot:
    # The record deciding on it would write, computed now: only the state key uses it.
    plan = decide(world.record, validated_root(world.active_root), world.registry_map(),
                  world.now, world.policy, PLACEHOLDER_ID).record
    return Snapshot(world.record, world.index, world.epoch, world.active_root, world.registry,
                    plan)


def _decide(world: World, config: Config, i: int) -> tuple[World, tuple[Event, ...]]:
    p = world.participants[i]
    view = p.view
    assert view is not None
    new_id = f"r{world.next_id}"
    decision = decide(view.record, validated_root(view.active_root), dict(
        (n.node_id, n) for n in view.registry), world.now, world.policy, new_id)
    if decision.record is None:
        return world, decision.events
    # Check-and-set on the ModifyIndex read (0: create only if the key is absent), fenced: in
    # the same transaction, check-session on the keeper lock with the writer's session.
    if not cas_matches(view, world, config) or (
            config.fenced_writes and world.keeper != p.node_id):
        return world, decision.events
    index = world.next_index
    # Its registry view predates the write: deciding again needs a fresh read of the prefix
    # (see Config.decide_again_after_cas). Installing what it wrote takes a read of the record
    # like everyone else's (the participant's loop watches the key).
    if config.decide_again_after_cas:
        mine = evolve(view, record=decision.record, index=index)
        mine = evolve(mine, plan=decide(decision.record, validated_root(view.active_root),
                                        dict((n.node_id, n) for n in view.registry), world.now,
                                        world.policy, PLACEHOLDER_ID).record)
    else:
        mine = evolve(view, index=STALE_INDEX)
    return _notice(_set(world, i, evolve(p, view=mine), record=decision.record,
                        index=index, next_index=index + 1,
                        next_id=world.next_id + (decision.record.id == new_id)),
                   config), decision.events


def _install(world: World, config: Config, i: int) -> World:
    """Decide the phase of the record read by the coordinator's own rule
    (:func:`sidecar.rotation.install_step`, which ``RotationParticipant._desired`` calls) and
    write a generation if its material differs from the latest installed one
    (``AuthManager.reconcile``)."""
    p = world.participants[i]
    snap = p.snapshot
    assert snap is not None and snap.record is not None
    record = snap.record
    # The product's rule (install_step); the broken variant feeds it the served generation.
    basis = p.installed if config.decide_from == "installed" else p.serving
    phase, material = install_step(record, None if basis is None else basis.material)
    acted = Desired(material.signer, tuple(material.trust), record.id, phase)
    serving, backlog = p.serving, p.backlog
    installed = p.installed
    if installed is None or installed.material != material:
        generation = Generation(material, record.id, snap.epoch)
        if config.lag_monitor:
            backlog = (*backlog, generation)[-MONITOR_BACKLOG:]
        else:
            serving = generation
    if (acted, snap.epoch, serving, backlog) == (p.acted, p.acted_epoch, p.serving, p.backlog):
        return world
    return _reported(world, config, i, evolve(p, serving=serving, backlog=backlog, acted=acted,
                                              acted_epoch=snap.epoch))


def _reported(world: World, config: Config, i: int, person: Participant) -> World:
    """``person`` replaces participant ``i``; it publishes now, or later (a report step) if
    that would change what it published."""
    state = person.node_state()
    if config.lag_reports or not person.session:
        return _set(world, i, evolve(person, pending_report=person.pending_report or (
            state != world.entry(person.node_id))))
    return _set(world, i, person, registry=_publish(world.registry, state))


# -- properties --------------------------------------------------------------------------------

def safety_violations(world: World) -> list[str]:
    """Every broken safety property of what live participants serve (their monitors
    acknowledged; what handshakes use): two that cannot talk mTLS, or one whose served material
    stands for a decision since the last data loss and is not within one phase of the current
    record (which implies roots outside its {from, to})."""
    problems: list[str] = []
    live = [(p, p.serving) for p in world.participants if p.alive and p.serving is not None]
    for a_i, (a, a_served) in enumerate(live):
        for b, b_served in live[a_i + 1:]:
            if not compatible(a_served.material, b_served.material):
                problems.append(f"{a.node_id} {_show(a_served.material)} and {b.node_id} "
                                f"{_show(b_served.material)} are incompatible")
    record = world.record
    if record is not None:
        allowed = {record.material(q) for q in range(record.phase - 1, record.phase + 2)
                   if 0 <= q <= MAX_PHASE}
        for p, served in live:
            if served.material not in allowed and p.served_epoch() == world.epoch:
                problems.append(f"{p.node_id} serves {_show(served.material)}, not within one "
                                f"phase of {show_record(record)}")
    return problems


def converged(world: World, root: str) -> bool:
    """Rotation complete to ``root`` and every live participant serves ({root}, root), with
    nothing else installed that its monitor could still serve."""
    record = world.record
    stable = stable_material(root)
    return (record is not None and record.stable and record.to_root == root
            and all(p.serving is not None and p.serving.material == stable and not p.backlog
                    for p in world.participants if p.alive))


#: One participant's turn in a fair round (and one loop iteration of the hypothesis machine).
FAIR_LOOP = ("register", "step_down", "acquire", "report", "survey", "decide", "read", "install",
             "serve", "report")


def fair_round(world: World, config: Config, *,
               keep_dead: frozenset[str] = frozenset()) -> World:
    """One deterministic fair round: sessions of dead (or restarted) processes expire (freeing
    the lock if one held it), the dead restart (except those in ``keep_dead``), then everyone in
    turn registers, steps down if it believes it is keeper but the lock is not its own, takes the
    lock if it is free (the first one able to), reports, reads the prefix and decides if it is
    keeper, reads the record, installs, has its monitor serve the latest generation and reports;
    time passes the minimum dwell."""
    for i, p in enumerate(world.participants):
        if can(world, config, "expire", i):
            world, _ = apply(world, config, ("expire", i))
        if not p.alive and p.node_id not in keep_dead:
            world, _ = apply(world, config, ("restart", i))
    for i in range(len(world.participants)):
        for kind in FAIR_LOOP:
            if can(world, config, kind, i):
                world, _ = apply(world, config, (kind, i))
    if world.policy.min_dwell > 0:
        world = evolve(world, now=world.now + world.policy.min_dwell + 1)
    return world


def fair_completion(world: World, config: Config, *,
                    keep_dead: frozenset[str] = frozenset(),
                    max_rounds: int = 40) -> Iterator[World]:
    """The worlds after each fair round (the operator and faults have stopped)."""
    for _ in range(max_rounds):
        world = fair_round(world, config, keep_dead=keep_dead)
        yield world


def _show(material: PhaseMaterial) -> str:
    return f"({{{','.join(sorted(material.trust))}}},{material.signer})"


def _show_generation(generation: Generation | None) -> str:
    if generation is None:
        return "None"
    return f"{_show(generation.material)}/{generation.rotation_id}"


def show_record(record: RotationRecord | None) -> str:
    if record is None:
        return "none"
    done = " stable" if record.stable else ""
    return f"{record.id}:{record.from_root}->{record.to_root}@{record.phase}{done}"


def describe(world: World) -> str:
    """A compact, one-line-per-participant picture of a world for failure messages."""
    lines = [f"active_root={world.active_root!r} record={show_record(world.record)} "
             f"index={world.index} epoch={world.epoch} now={world.now} keeper={world.keeper}"]
    for p in world.participants:
        entry = world.entry(p.node_id)
        published = "-" if entry is None else (
            f"{_show(PhaseMaterial(entry.trust, entry.signer))}/{entry.rotation_id}"
            if entry.signer else "registered/empty")
        snap = "-" if p.snapshot is None else show_record(p.snapshot.record)
        keeper = "no" if not p.keeper else "yes" if world.keeper == p.node_id else "stale"
        view = "-" if p.view is None else (
            f"{show_record(p.view.record)}@index={p.view.index}"
            f"{'(current)' if p.view.index == world.index else ''}")
        acted = "-" if p.acted is None else (
            f"{_show(desired_material(p.acted))}/{p.acted.rotation_id}@{p.acted.phase}")
        backlog = " ".join(_show_generation(g) for g in p.backlog) or "-"
        lines.append(f"  {p.node_id} alive={p.alive} session={p.session} serving="
                     f"{_show_generation(p.serving)} backlog={backlog} acted={acted} "
                     f"published={published} snapshot={snap} keeper={keeper} view={view}")
    return "\n".join(lines)


# -- canonical form for the exhaustive search ----------------------------------------------------

def canonical_key(world: World, *, ordered: bool = False) -> tuple[Any, ...]:
    """A hashable key equal for worlds that behave the same up to participant order, rotation
    ids (kept in creation order) and ModifyIndex values (only equality with the current one
    matters) and the lock holder (a flag on the participant holding it). Sound only while time
    does not advance: a keeper's read of the prefix is summarised by the record deciding on it
    would write, while its check-and-set can still succeed. Participants' node ids and roles
    never influence decisions; ``ordered`` keeps their order (for runs whose schedule depends on
    it)."""
    record = world.record
    ids: set[str] = set()
    if record is not None:
        ids.add(record.id)
    for n in world.registry:
        if n.rotation_id:
            ids.add(n.rotation_id)
    for p in world.participants:
        if p.serving is not None:
            ids.add(p.serving.rotation_id)
        for generation in p.backlog:
            ids.add(generation.rotation_id)
        if p.acted is not None and p.acted.rotation_id is not None:
            ids.add(p.acted.rotation_id)
        if p.snapshot is not None and p.snapshot.record is not None:
            ids.add(p.snapshot.record.id)
        if p.view is not None and p.view.record is not None:
            ids.add(p.view.record.id)
    order: dict[str | None, int] = {
        rid: rank for rank, rid in enumerate(sorted(ids, key=_id_number))}
    order[PLACEHOLDER_ID] = -1
    order_get = order.get
    entries = {n.node_id: n for n in world.registry}
    epoch, index = world.epoch, world.index
    records: dict[int, tuple[Any, ...]] = {}  # by id(): many snapshots share a record

    def rec(record: RotationRecord | None) -> tuple[Any, ...] | None:
        if record is None:
            return None
        key = records.get(id(record))
        if key is None:
            key = records[id(record)] = (
                order[record.id], record.from_root, record.to_root, record.phase,
                record.started_at, record.phase_since, record.completed_at)
        return key

    def gen(generation: Generation) -> tuple[Any, ...]:
        return (generation.material, order[generation.rotation_id], generation.epoch == epoch)

    people: dict[tuple[Any, ...], int] = {}
    in_order: list[tuple[Any, ...]] = []
    for p in world.participants:
        entry = entries.get(p.node_id)
        published = None if entry is None else (entry.trust, entry.signer,
                                                order_get(entry.rotation_id))
        snapshot = p.snapshot
        snap = None if snapshot is None else (rec(snapshot.record), snapshot.epoch == epoch)
        view = p.view
        seen: tuple[Any, ...] | None = None
        # Only a read at the current index can still win a check-and-set (or at index 0,
        # "absent", once Consul lost its data, or one from before a data loss, whose index
        # Consul may reuse): the record it would write matters; any other read decides nothing
        # any more (as if there were none: deciding on it changes nothing). Keyed as if indices
        # were reused (Config.reuse_indices), which only tells more states apart otherwise.
        if view is not None and usable(view, world, True):
            seen = (view.index == index, view.epoch == epoch, view.index == 0,
                    rec(view.plan))
        # The phase acted on only shows in the published (informational) phase.
        acted = p.acted
        person = (p.alive, p.session, p.keeper, world.keeper == p.node_id,
                  None if p.serving is None else gen(p.serving),
                  tuple([gen(g) for g in p.backlog]) if p.backlog else (),
                  None if acted is None else (acted.signer, acted.trust,
                                              order_get(acted.rotation_id),
                                              p.acted_epoch == epoch),
                  p.pending_report, snap, seen, published)
        people[person] = people.get(person, 0) + 1
        in_order.append(person)
    crowd = tuple(in_order) if ordered else frozenset(people.items())
    return (world.active_root, rec(record), index != 0, crowd)


def _id_number(rid: str) -> int:
    return int(rid[1:])
