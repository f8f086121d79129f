"""A model of one rotation over several datacenters (:mod:`sidecar.domain`), for the proofs.

It models the layer above each datacenter's own protocol, which :mod:`tests.rotation_model`
proves on its own (registration, report lag, keeper hand-over, stale keepers, the fence):
here each datacenter has one keeper that reads its reports as they are, and participants
read, install (by the coordinator's own :func:`sidecar.rotation.install_step`) and serve
(their monitor may lag one generation). What is new is modelled with the product's own
functions, as separate, arbitrarily interleaved steps:

- ``decide``: the primary's keeper decides (:func:`sidecar.rotation.decide`) on its reports
  and on the other datacenters' summaries *as it last read them* (``seen``; possibly stale),
  holding back a write that moves the same rotation on unless
  :func:`sidecar.domain.blocking_datacenters` is empty; with no record it rebuilds from every
  datacenter's materials (:func:`sidecar.domain.remote_participants`);
- ``fetch`` / ``mirror``: another datacenter's keeper reads the primary's record across the WAN
  (only while the link is up) and, in a later step, copies what it read into its own record;
- ``summarize``: a keeper writes its datacenter's summary (:func:`sidecar.domain.summarize`);
  ``watch``: the primary's keeper reads another datacenter's summary across the WAN (only
  while the link is up);
- ``cut`` / ``restore``: the WAN link; ``wipe``: a datacenter loses its data (its record and
  summary; the primary's keeper forgets nothing it read); ``flip``: the operator.

Safety: every two participants, wherever they are, serve compatible material.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from sidecar.domain import (
    DcSummary,
    advances,
    blocking_datacenters,
    remote_participants,
    summarize,
)
from sidecar.rotation import (
    MAX_PHASE,
    NodeState,
    PhaseMaterial,
    Policy,
    RotationRecord,
    compatible,
    decide,
    install_step,
)

Action = tuple[Any, ...]


def dc_name(d: int) -> str:
    return f"dc{d + 1}"


@dataclasses.dataclass(frozen=True)
class Person:
    """A participant: its datacenter, its last read of that datacenter's record, the latest
    generation installed and the one its monitor serves, each with the record id it stands
    for (what it publishes)."""

    dc: int
    read: RotationRecord | None
    installed: PhaseMaterial
    installed_id: str
    serving: PhaseMaterial
    serving_id: str

    def report(self, name: str) -> NodeState:
        return NodeState(name, trust=self.serving.trust, signer=self.serving.signer,
                         rotation_id=self.serving_id)


@dataclasses.dataclass(frozen=True)
class Domain:
    """Every datacenter's record (the primary's, or a copy) and summary, what the keepers
    last read across the WAN, the link, the operator's root and the participants."""

    records: tuple[RotationRecord | None, ...]
    summaries: tuple[DcSummary | None, ...]
    #: The primary's keeper's last read of each datacenter's summary (index 0 unused).
    seen: tuple[DcSummary | None, ...]
    #: Each other keeper's last read of the primary's record (index 0 unused).
    fetched: tuple[RotationRecord | None, ...]
    wan_up: bool
    active_root: str
    people: tuple[Person, ...]
    next_id: int = 1

    def nodes(self, d: int) -> dict[str, NodeState]:
        return {f"p{i}": p.report(f"p{i}") for i, p in enumerate(self.people) if p.dc == d}


def stable(root: str) -> PhaseMaterial:
    return PhaseMaterial(frozenset({root}), root)


def initial(placement: tuple[int, ...], datacenters: int = 2, root: str = "A") -> Domain:
    """Everyone in datacenter ``placement[i]`` serving ``root`` under one stable record."""
    record = RotationRecord("r0", root, root, MAX_PHASE, 0.0, 0.0, 0.0)
    people = tuple(Person(d, record, stable(root), "r0", stable(root), "r0") for d in placement)
    world = Domain((record,) * datacenters, (None,) * datacenters, (None,) * datacenters,
                   (record,) * datacenters, True, root, people)
    summaries = tuple(summarize(dc_name(d), record, world.nodes(d), 0.0, Policy())
                      for d in range(datacenters))
    return dataclasses.replace(world, summaries=summaries, seen=summaries)


def _put(values: tuple[Any, ...], k: int, value: Any) -> tuple[Any, ...]:
    return (*values[:k], value, *values[k + 1:])


def enabled(world: Domain, operator: tuple[str, ...] = (), faults: bool = True
            ) -> Iterator[Action]:
    """Every step that may happen next."""
    for i, p in enumerate(world.people):
        yield ("read", i)
        if p.read is not None:
            yield ("install", i)
        if p.serving != p.installed or p.serving_id != p.installed_id:
            yield ("serve", i)
    yield ("decide",)
    for d in range(len(world.records)):
        yield ("summarize", d)
        if d and world.wan_up:
            yield ("fetch", d)
            yield ("watch", d)
        if d:
            yield ("mirror", d)
    for root in operator:
        if root != world.active_root:
            yield ("flip", root)
    if faults:
        yield ("cut",) if world.wan_up else ("restore",)
        for d in range(len(world.records)):
            yield ("wipe", d)


def apply(world: Domain, action: Action) -> Domain:
    """The world after ``action`` (the same object when nothing changes)."""
    kind = action[0]
    if kind in ("read", "install", "serve"):
        i = action[1]
        p = world.people[i]
        if kind == "read":
            record = world.records[p.dc]
            return world if record == p.read else _person(world, i, p, read=record)
        if kind == "serve":
            return _person(world, i, p, serving=p.installed, serving_id=p.installed_id)
        assert p.read is not None
        _, material = install_step(p.read, p.installed)
        changes: dict[str, Any] = {"installed": material, "installed_id": p.read.id}
        if material == p.installed and p.serving == p.installed:
            changes["serving_id"] = p.read.id  # acted on it with what it serves already
        return _person(world, i, p, **changes)
    if kind == "decide":
        return _decide(world)
    if kind == "summarize":
        d = action[1]
        summary = summarize(dc_name(d), world.records[d], world.nodes(d), 0.0, Policy())
        return world if summary == world.summaries[d] else dataclasses.replace(
            world, summaries=_put(world.summaries, d, summary))
    if kind == "fetch":
        return dataclasses.replace(world, fetched=_put(world.fetched, action[1],
                                                       world.records[0]))
    if kind == "watch":
        d = action[1]
        return dataclasses.replace(world, seen=_put(world.seen, d, world.summaries[d]))
    if kind == "mirror":
        d = action[1]
        record = world.fetched[d]
        if record is None or record == world.records[d]:
            return world  # an absent primary record leaves the copy as it is
        return dataclasses.replace(world, records=_put(world.records, d, record))
    if kind == "flip":
        return dataclasses.replace(world, active_root=action[1])
    if kind in ("cut", "restore"):
        return dataclasses.replace(world, wan_up=kind == "restore")
    if kind == "wipe":
        d = action[1]
        return dataclasses.replace(world, records=_put(world.records, d, None),
                                   summaries=_put(world.summaries, d, None))
    raise ValueError(action)


def _person(world: Domain, i: int, p: Person, **changes: Any) -> Domain:
    new = dataclasses.replace(p, **changes)
    return world if new == p else dataclasses.replace(world, people=_put(world.people, i, new))


def _decide(world: Domain) -> Domain:
    record = world.records[0]
    nodes = world.nodes(0)
    summaries = {dc_name(d): world.seen[d] for d in range(1, len(world.records))}
    voters = {**remote_participants(summaries), **nodes} if record is None else nodes
    new_id = f"r{world.next_id}"
    decision = decide(record, world.active_root, voters, 0.0, Policy(), new_id)
    new = decision.record
    if new is None:
        return world
    if record is not None and advances(record, new) and blocking_datacenters(
            record, summaries, summaries.keys()):
        return world
    return dataclasses.replace(world, records=_put(world.records, 0, new),
                               next_id=world.next_id + (new.id == new_id))


def violations(world: Domain) -> list[str]:
    """Every pair of participants whose served material cannot talk mTLS."""
    out = []
    people = list(enumerate(world.people))
    for a, p in people:
        for b, q in people[a + 1:]:
            if not compatible(p.serving, q.serving):
                out.append(f"p{a}@{dc_name(p.dc)} {sorted(p.serving.trust)},{p.serving.signer}"
                           f" and p{b}@{dc_name(q.dc)} {sorted(q.serving.trust)},"
                           f"{q.serving.signer}")
    return out


def converged(world: Domain) -> bool:
    """The primary's record completed the rotation to the operator's root and everyone serves
    that root alone."""
    record = world.records[0]
    root = world.active_root
    return record is not None and record.stable and record.to_root == root and all(
        p.serving == stable(root) and p.installed == stable(root) for p in world.people)


FAIR_ORDER = ("decide", "fetch", "mirror", "read", "install", "serve", "summarize", "watch")


def fair_round(world: Domain) -> Domain:
    """The link restored, then every step once in a fixed order."""
    if not world.wan_up:
        world = apply(world, ("restore",))
    for kind in FAIR_ORDER:
        for action in list(enabled(world, faults=False)):
            if action[0] == kind:
                world = apply(world, action)
    return world
