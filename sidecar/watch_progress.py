"""What ``kafka-pki status --watch`` and ``rotate --wait`` show, computed from one read.

Pure: the rotation record, the participants' reports, the keeper and the time in, a
:class:`Progress` out (no I/O, no clock). A participant has *acknowledged* phase k of the
rotation when it reported serving material of phase k or later, installed from this very
record (the barrier's own rule, :func:`sidecar.rotation.barrier`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sidecar.rotation import MAX_PHASE, NodeState, Policy, RotationRecord, barrier

#: How many of the participants the barrier waits on are named.
SLOWEST = 5


def phase_label(record: RotationRecord, phase: int) -> str:
    """What phase ``phase`` of ``record`` installs: its trust set and its signer."""
    material = record.material(phase)
    trust = " + ".join(r for r in dict.fromkeys((record.from_root, record.to_root))
                       if r in material.trust)
    return f"trust {trust}, signed by {material.signer}"


@dataclasses.dataclass(frozen=True)
class PhaseCount:
    """Phase ``phase``: ``done`` of ``total`` participants serve it (or a later one)."""

    phase: int
    label: str
    done: int
    total: int


@dataclasses.dataclass(frozen=True)
class Behind:
    """A participant the barrier waits on."""

    node_id: str
    role: str
    phase: int | None  # the phase of this rotation it serves (None: nothing of it)
    seconds_behind: float  # since the record entered the phase it has not reached
    last_report_seconds: float | None  # since its last report (None: it never reported)


@dataclasses.dataclass(frozen=True)
class Progress:
    """One picture of a rotation. ``state``: ``no-record`` (no rotation record yet),
    ``starting`` (waiting for the keeper to start a rotation to ``target``), ``rotating``,
    ``complete``."""

    state: str
    target: str | None
    rotation_id: str | None = None
    from_root: str | None = None
    to_root: str | None = None
    phase: int | None = None
    seconds_in_phase: float = 0.0
    seconds_since_start: float = 0.0
    total: int = 0
    phases: tuple[PhaseCount, ...] = ()
    keeper: str | None = None
    waiting: int = 0
    slowest: tuple[Behind, ...] = ()

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def progress(record: RotationRecord | None, nodes: Mapping[str, NodeState],
             keeper: Mapping[str, Any] | None, now: float, target: str | None = None,
             slowest: int = SLOWEST) -> Progress:
    """The rotation towards ``target`` (None: the current record's) as of ``now``."""
    keeper_name = str(keeper.get("node_id") or "?") if keeper else None
    if record is None:
        return Progress("no-record", target, keeper=keeper_name, total=len(nodes))
    goal = target or record.to_root
    if record.to_root != goal and record.stable:
        # The flip is in Consul; no keeper has written the new record yet (or none runs).
        return Progress("starting", goal, record.id, record.from_root, record.to_root,
                        record.phase, now - record.phase_since, now - record.started_at,
                        len(nodes), keeper=keeper_name)
    reached = {node_id: (record.phase_of(node.trust, node.signer)
                         if node.rotation_id == record.id else None)
               for node_id, node in nodes.items()}
    phases = tuple(PhaseCount(k, phase_label(record, k),
                              sum(1 for p in reached.values() if p is not None and p >= k),
                              len(nodes))
                   for k in range(1, MAX_PHASE + 1))
    waiting = barrier(record, nodes, now, Policy()).waiting_on
    behind = sorted(
        (Behind(node_id, nodes[node_id].role, reached[node_id], now - record.phase_since,
                None if nodes[node_id].updated_at is None
                else max(0.0, now - (nodes[node_id].updated_at or 0.0)))
         for node_id in waiting),
        key=lambda b: (-1 if b.phase is None else b.phase,
                       -(b.last_report_seconds if b.last_report_seconds is not None
                         else float("inf")), b.node_id))
    state = "complete" if record.stable and record.to_root == goal else "rotating"
    return Progress(state, goal, record.id, record.from_root, record.to_root, record.phase,
                    now - record.phase_since, now - record.started_at, len(nodes), phases,
                    keeper_name, len(waiting), tuple(behind[:slowest]))


def as_json(p: Progress) -> dict[str, Any]:
    """``--json``: one object per update."""
    data = dataclasses.asdict(p)
    data["seconds_in_phase"] = round(p.seconds_in_phase, 1)
    data["seconds_since_start"] = round(p.seconds_since_start, 1)
    for b in data["slowest"]:
        b["seconds_behind"] = round(b["seconds_behind"], 1)
        if b["last_report_seconds"] is not None:
            b["last_report_seconds"] = round(b["last_report_seconds"], 1)
    return data


def headline(p: Progress) -> str:
    """The state in a few words: what a person looks at first."""
    if p.state == "no-record":
        return "no rotation record yet (is active-root set, and does a participant run?)"
    if p.state == "starting":
        return (f"active-root is {p.target}; waiting for the keeper to start the rotation "
                f"(now stable on {p.to_root})")
    if p.from_root == p.to_root:
        return f"stable on {p.to_root}" if p.complete else f"settling on {p.to_root}"
    done = "complete" if p.complete else f"phase {p.phase} of {MAX_PHASE}"
    return f"{p.from_root} -> {p.to_root}: {done}"


def summary(p: Progress) -> str:
    """One line (plain output when stdout is not a terminal)."""
    parts = [headline(p)]
    if p.state == "rotating" and p.phase:
        current = p.phases[p.phase - 1 if p.from_root != p.to_root else -1]
        parts.append(f"{current.done}/{current.total} acknowledged phase {p.phase}")
        parts.append(f"{p.seconds_in_phase:.1f}s in phase")
    parts.append(f"keeper {p.keeper or 'none'}")
    if p.slowest:
        parts.append("slowest: " + ", ".join(
            f"{b.node_id} ({b.seconds_behind:.1f}s)" for b in p.slowest))
    return "; ".join(parts)


def change_key(p: Progress) -> tuple[Any, ...]:
    """What must differ for plain output to print another line (not the ticking times)."""
    return (p.state, p.rotation_id, p.phase, p.keeper, p.waiting,
            tuple((c.done, c.total) for c in p.phases))
