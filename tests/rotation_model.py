"""A model of the coordinated root rotation around :mod:`sidecar.rotation`'s pure state machine.

Consul holds the operator's ``active-root`` value, the ``rotation`` record (with a ModifyIndex
for check-and-set) and the registry ``nodes/<id>`` of participants holding a live session.
Each participant (a broker or a client with its sidecar) runs the documented loop as separate,
arbitrarily interleaved steps: register, read (a snapshot that goes stale as others move),
decide + check-and-set, install (the broker/app now serves the material, monitor verified) and
report (publishing what it serves; it may lag the install). Crashes, session expiry, restarts,
joins, operator flips, time, and (only with ``expected_members`` = participants) partitions and
a Consul data loss are steps too. Everything is immutable and deterministic so that the
hypothesis machine and the exhaustive search share it and states can be hashed.

What the model assumes of the (not yet written) coordinator, each the weakest safe choice:

- it registers before it reads, and a (re)registration discards any earlier read;
- it decides from the material it installed last, not from what its monitor acknowledged so
  far (``test_phases_installed_never_go_down_while_the_monitor_lags`` shows why);
- a check-and-set uses the ModifyIndex of the read it decided on (0: the key was absent); after
  a successful one it may install the record it wrote but reads again before deciding again
  (``Config.decide_again_after_cas`` shows why);
- an install started before its session expired may still complete (it is published when the
  participant registers again); reports may lag installs (``Config.lag_reports``);
- it publishes the id of the record its material was installed from, and re-installs (a no-op
  for the files) and re-publishes when that id changes;
- a restarted process registers only once its old session has expired (Consul refuses to
  acquire a key another session holds).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

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
    parse_root_name,
    target_phase,
)

ROOTS = ("A", "B", "C")
INVALID_ROOTS: tuple[str | None, ...] = (None, "not a root!")
PLACEHOLDER_ID = "<new>"
STALE_INDEX = -1

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
    """Which steps the model offers."""

    max_participants: int = 8
    lag_reports: bool = True
    faults: bool = False
    allow_crash: bool = True
    allow_join: bool = True
    decide_again_after_cas: bool = False


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One participant's read of Consul: record (with its ModifyIndex), active-root, registry."""

    record: RotationRecord | None
    index: int
    epoch: int
    active_root: str | None
    registry: tuple[NodeState, ...]
    # The record deciding on it would write (new rotations get PLACEHOLDER_ID), computed at read
    # time: only the exhaustive search's state key uses it, with time standing still.
    plan: RotationRecord | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Participant:
    """A broker or client and its sidecar."""

    node_id: str
    role: str
    alive: bool = True
    session: bool = False
    serving: PhaseMaterial | None = None
    installed_from: str | None = None
    installed_epoch: int = -1
    pending_report: bool = False
    snapshot: Snapshot | None = None

    def node_state(self) -> NodeState:
        """What it publishes under ``nodes/<id>``: the material it serves now."""
        if self.serving is None:
            return NodeState(self.node_id, self.role)
        return NodeState(self.node_id, self.role, trust=self.serving.trust,
                         signer=self.serving.signer, rotation_id=self.installed_from)


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
                  root: str = "A") -> World:
    """Either everyone registered and serving ``root`` under a stable record, or nothing at all:
    no record, no registration, nobody serving, ``active-root`` set to ``root``."""
    if from_nothing:
        people = tuple(Participant(_node_id(i), _role(i)) for i in range(n))
        return World(policy, root, None, 0, (), people)
    record = RotationRecord("r0", root, root, MAX_PHASE, 0.0, 0.0, 0.0)
    people = tuple(Participant(_node_id(i), _role(i), session=True,
                               serving=stable_material(root), installed_from="r0",
                               installed_epoch=0) for i in range(n))
    registry = tuple(p.node_state() for p in people)
    return World(policy, root, record, 1, registry, people, next_index=2)


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
                actions.append((kind, i))
    if config.allow_join and not config.faults and \
            len(world.participants) < config.max_participants:
        actions.append(("join",))
    actions.extend(("flip", raw) for raw in operator if raw != world.active_root)
    if config.faults:
        actions.append(("wipe", True))
        actions.append(("wipe", False))
    return actions


PARTICIPANT_STEPS = ("register", "read", "decide", "install", "report",
                     "crash", "expire", "restart", "expire_live")


def can(world: World, config: Config, kind: str, i: int) -> bool:
    """Whether participant ``i`` may take step ``kind`` now."""
    p = world.participants[i]
    entry = world.entry(p.node_id)
    if kind == "register":
        return p.alive and not p.session and entry is None
    if kind == "read":
        return p.alive and p.session
    if kind == "decide":
        return p.alive and p.session and p.snapshot is not None
    if kind == "install":
        return p.alive and p.snapshot is not None and p.snapshot.record is not None
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
    raise ValueError(kind)


def apply(world: World, config: Config, action: Action) -> tuple[World, tuple[Event, ...]]:
    """The world after ``action`` and the events a participant would log for it."""
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
        people = tuple(evolve(p, session=False) for p in world.participants)
        return evolve(
            world, record=None, index=0, registry=(), participants=people,
            epoch=world.epoch + 1,
            active_root=world.active_root if action[1] else None), ()
    i = action[1]
    p = world.participants[i]
    if kind == "register":
        # A (re)registered participant reads afresh before acting: its old snapshot is gone.
        person = evolve(p, session=True, pending_report=False, snapshot=None)
        return _set(world, i, person, registry=_publish(world.registry, person.node_state())), ()
    if kind == "read":
        plan = decide(world.record, validated_root(world.active_root), world.registry_map(),
                      world.now, world.policy, PLACEHOLDER_ID).record
        snap = Snapshot(world.record, world.index, world.epoch, world.active_root, world.registry,
                        plan)
        return _set(world, i, evolve(p, snapshot=snap)), ()
    if kind == "decide":
        return _decide(world, config, i)
    if kind == "install":
        return _install(world, config, i), ()
    if kind == "report":
        person = evolve(p, pending_report=False)
        return _set(world, i, person, registry=_publish(world.registry, person.node_state())), ()
    if kind == "crash":
        person = Participant(p.node_id, p.role, alive=False)
        return _set(world, i, person), ()
    if kind == "expire":
        return evolve(world, registry=_unpublish(world.registry, p.node_id)), ()
    if kind == "restart":
        return _set(world, i, Participant(p.node_id, p.role)), ()
    if kind == "expire_live":
        person = evolve(p, session=False)
        return _set(world, i, person, registry=_unpublish(world.registry, p.node_id)), ()
    raise ValueError(action)


def _decide(world: World, config: Config, i: int) -> tuple[World, tuple[Event, ...]]:
    p = world.participants[i]
    snap = p.snapshot
    assert snap is not None
    new_id = f"r{world.next_id}"
    decision = decide(snap.record, validated_root(snap.active_root), dict(
        (n.node_id, n) for n in snap.registry), world.now, world.policy, new_id)
    if decision.record is None:
        return world, decision.events
    # Check-and-set on the ModifyIndex read (0: create only if the key is absent).
    if snap.index != world.index:
        return world, decision.events
    index = world.next_index
    # It may install what it wrote, but its registry view predates the write: deciding again
    # needs a fresh read (see Config.decide_again_after_cas).
    mine = evolve(snap, record=decision.record,
                  index=index if config.decide_again_after_cas else STALE_INDEX)
    return _set(world, i, evolve(p, snapshot=mine), record=decision.record,
                index=index, next_index=index + 1,
                next_id=world.next_id + (decision.record.id == new_id)), decision.events


def _install(world: World, config: Config, i: int) -> World:
    p = world.participants[i]
    assert p.snapshot is not None and p.snapshot.record is not None
    record = p.snapshot.record
    own = record.phase_of(p.serving.trust, p.serving.signer) if p.serving else None
    material = record.material(target_phase(record, own))
    if (material, record.id, p.snapshot.epoch) == (p.serving, p.installed_from,
                                                   p.installed_epoch):
        return world
    person = evolve(p, serving=material, installed_from=record.id,
                    installed_epoch=p.snapshot.epoch)
    if config.lag_reports or not p.session:
        person = evolve(person, pending_report=True)
        return _set(world, i, person)
    return _set(world, i, person, registry=_publish(world.registry, person.node_state()))


# -- properties --------------------------------------------------------------------------------

def safety_violations(world: World) -> list[str]:
    """Every broken safety property: two live participants that cannot talk mTLS, or a live
    participant that installed since the last data loss and serves material that is not within
    one phase of the current record (which implies roots outside its {from, to})."""
    problems: list[str] = []
    live = [p for p in world.participants if p.alive and p.serving is not None]
    for a_i, a in enumerate(live):
        for b in live[a_i + 1:]:
            assert a.serving is not None and b.serving is not None
            if not compatible(a.serving, b.serving):
                problems.append(f"{a.node_id} {_show(a.serving)} and {b.node_id} "
                                f"{_show(b.serving)} are incompatible")
    record = world.record
    if record is not None:
        allowed = {record.material(q) for q in range(record.phase - 1, record.phase + 2)
                   if 0 <= q <= MAX_PHASE}
        for p in live:
            if p.installed_epoch == world.epoch and p.serving not in allowed:
                assert p.serving is not None
                problems.append(f"{p.node_id} serves {_show(p.serving)}, not within one phase "
                                f"of {show_record(record)}")
    return problems


def converged(world: World, root: str) -> bool:
    """Rotation complete to ``root`` and every live participant serves ({root}, root)."""
    record = world.record
    return (record is not None and record.stable and record.to_root == root
            and all(p.serving == stable_material(root) for p in world.participants if p.alive))


def fair_round(world: World, config: Config, *,
               keep_dead: frozenset[str] = frozenset()) -> World:
    """One deterministic fair round: sessions of dead (or restarted) processes expire, the dead
    restart (except those in ``keep_dead``), then everyone registers, reports, reads, decides,
    installs and reports in turn; time passes the minimum dwell."""
    for i, p in enumerate(world.participants):
        if can(world, config, "expire", i):
            world, _ = apply(world, config, ("expire", i))
        if not p.alive and p.node_id not in keep_dead:
            world, _ = apply(world, config, ("restart", i))
    for i in range(len(world.participants)):
        for kind in ("register", "report", "read", "decide", "install", "report"):
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


def show_record(record: RotationRecord | None) -> str:
    if record is None:
        return "none"
    done = " stable" if record.stable else ""
    return f"{record.id}:{record.from_root}->{record.to_root}@{record.phase}{done}"


def describe(world: World) -> str:
    """A compact, one-line-per-participant picture of a world for failure messages."""
    lines = [f"active_root={world.active_root!r} record={show_record(world.record)} "
             f"index={world.index} epoch={world.epoch} now={world.now}"]
    for p in world.participants:
        entry = world.entry(p.node_id)
        published = "-" if entry is None else (
            f"{_show(PhaseMaterial(entry.trust, entry.signer))}/{entry.rotation_id}"
            if entry.signer else "registered/empty")
        snap = "-" if p.snapshot is None else show_record(p.snapshot.record)
        lines.append(f"  {p.node_id} alive={p.alive} session={p.session} serving="
                     f"{_show(p.serving) if p.serving else None}/{p.installed_from} "
                     f"published={published} snapshot={snap}")
    return "\n".join(lines)


# -- canonical form for the exhaustive search ----------------------------------------------------

def canonical_key(world: World, *, ordered: bool = False) -> tuple[Any, ...]:
    """A hashable key equal for worlds that behave the same up to participant order, rotation
    ids (kept in creation order) and ModifyIndex values (only equality with the current one
    matters). Sound only while time does not advance: a snapshot is summarised by the record it
    would write. Participants' node ids and roles never influence decisions; ``ordered`` keeps
    their order (for runs whose schedule depends on it)."""
    ids: set[str] = set()
    if world.record is not None:
        ids.add(world.record.id)
    for n in world.registry:
        if n.rotation_id:
            ids.add(n.rotation_id)
    for p in world.participants:
        if p.installed_from:
            ids.add(p.installed_from)
        if p.snapshot is not None and p.snapshot.record is not None:
            ids.add(p.snapshot.record.id)
    order = {rid: rank for rank, rid in enumerate(sorted(ids, key=_id_number))}
    order[PLACEHOLDER_ID] = -1
    order_get = order.get
    entries = {n.node_id: n for n in world.registry}

    def rec(record: RotationRecord | None) -> tuple[Any, ...] | None:
        if record is None:
            return None
        return (order[record.id], record.from_root, record.to_root, record.phase,
                record.started_at, record.phase_since, record.completed_at)

    people: dict[tuple[Any, ...], int] = {}
    in_order: list[tuple[Any, ...]] = []
    for p in world.participants:
        entry = entries.get(p.node_id)
        published = None if entry is None else (entry.trust, entry.signer,
                                                order_get(entry.rotation_id))
        snap = None
        if p.snapshot is not None:
            # Only a snapshot at the current index can still win a check-and-set: the record
            # it would write matters; otherwise only the record it would install from.
            same_epoch = p.snapshot.epoch == world.epoch
            current = same_epoch and p.snapshot.index == world.index
            snap = (rec(p.snapshot.record), same_epoch, current,
                    rec(p.snapshot.plan) if current else None)
        person = (p.alive, p.session, p.serving, order_get(p.installed_from),
                  p.installed_epoch == world.epoch, p.pending_report, snap, published)
        people[person] = people.get(person, 0) + 1
        in_order.append(person)
    crowd = tuple(in_order) if ordered else frozenset(people.items())
    return (world.active_root, rec(world.record), world.index != 0, crowd)


def _id_number(rid: str) -> int:
    return int(rid[1:])
