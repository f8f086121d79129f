"""A rotation domain over the datacenters of one WAN-federated Consul (pure: no I/O).

Consul KV, sessions and locks belong to one datacenter. A domain names its datacenters, the
primary first (setting ``datacenters``). Every participant talks only to its local agent and
runs the single-datacenter protocol there: its session, its ``nodes/<id>`` report, the local
keeper lock, and the local ``rotation`` key, which it watches and installs from. Across the
WAN only the keepers talk, each with ``?dc=``:

* the **primary** datacenter's keeper alone decides; it writes the record in the primary
  (fenced check-and-set, as in one datacenter), and advances a phase only when its own barrier
  holds *and* every other datacenter's ``summary`` says that all of that datacenter's
  participants serve this phase of this very record;
* every other datacenter's keeper copies the primary's record into its local ``rotation`` key
  (the mirror; a fenced check-and-set too, never a delete) and writes its local ``summary``:
  the record it evaluated, whether its local barrier holds, and which materials its
  participants serve (what the primary rebuilds a lost record from).

So the phase of any mirror is the primary's or one behind, and no participant anywhere is more
than one phase from any other: the single-datacenter invariant over the union. A WAN partition
stops the record (the primary cannot see the cut-off summaries; the cut-off mirror stays): the
rotation waits, and everyone keeps material compatible with everyone.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping

from sidecar.rotation import (
    NodeState,
    Policy,
    RotationInputError,
    RotationRecord,
    barrier,
)

SUMMARY = "summary"
#: Consul's datacenter names: letters, digits, ``_`` and ``-`` (agent/config validation).
DATACENTER_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def parse_datacenters(text: str) -> tuple[str, ...]:
    """``"dc1,dc2"`` -> ``("dc1", "dc2")`` (the primary first); ``""`` -> ``()``: one datacenter."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if not DATACENTER_NAME.match(name):
            raise ValueError(f"datacenter {name!r} is not a Consul datacenter name "
                             "(letters, digits, _ and -)")
    if len(set(names)) != len(names):
        raise ValueError(f"datacenters {text!r} names one twice")
    if len(names) == 1:
        raise ValueError(f"datacenters {text!r}: a domain needs at least two (none for one)")
    return names


@dataclasses.dataclass(frozen=True)
class Domain:
    """The domain's datacenters (the primary first) and the one this participant is in."""

    datacenters: tuple[str, ...]
    local: str

    def __post_init__(self) -> None:
        if self.local not in self.datacenters:
            raise ValueError(f"this agent's datacenter {self.local!r} is not one of the "
                             f"domain's datacenters {', '.join(self.datacenters)}")

    @property
    def primary(self) -> str:
        return self.datacenters[0]

    @property
    def is_primary(self) -> bool:
        return self.local == self.primary

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(dc for dc in self.datacenters if dc != self.local)


@dataclasses.dataclass(frozen=True)
class DcSummary:
    """A datacenter's keeper's account of its participants against the record it mirrors."""

    datacenter: str
    rotation_id: str | None
    phase: int | None
    holds: bool
    #: How many participants registered (not how many the barrier waits on: that changes with
    #: every report, and each write of the summary wakes the primary's keeper across the WAN).
    members: int
    #: Distinct (trust, signer) served, sorted: what a lost primary record is rebuilt from.
    materials: tuple[tuple[tuple[str, ...], str], ...] = ()

    def to_json(self) -> bytes:
        return json.dumps({"datacenter": self.datacenter, "rotation_id": self.rotation_id,
                           "phase": self.phase, "holds": self.holds, "members": self.members,
                           "materials": [[list(t), s] for t, s in self.materials]},
                          sort_keys=True).encode()


def summarize(datacenter: str, record: RotationRecord | None, nodes: Mapping[str, NodeState],
              now: float, policy: Policy) -> DcSummary:
    """The summary a datacenter's keeper publishes for its local ``rotation`` and reports."""
    materials = tuple(sorted({(tuple(sorted(n.trust)), n.signer) for n in nodes.values()
                              if n.signer is not None}))
    if record is None:
        return DcSummary(datacenter, None, None, False, len(nodes), materials)
    gate = barrier(record, nodes, now, dataclasses.replace(policy, min_dwell=0.0))
    return DcSummary(datacenter, record.id, record.phase, gate.holds, len(nodes), materials)


def parse_summary(raw: bytes | None) -> DcSummary | None:
    """A ``summary`` value (None: absent); RotationInputError if malformed."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        materials = tuple((tuple(str(t) for t in trust), str(signer))
                          for trust, signer in data.get("materials") or ())
        phase = data.get("phase")
        return DcSummary(str(data["datacenter"]), data.get("rotation_id"),
                         phase if isinstance(phase, int) else None, data.get("holds") is True,
                         int(data.get("members") or 0), materials)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RotationInputError(f"datacenter summary is malformed: {exc}") from None


def blocking_datacenters(record: RotationRecord,
                         summaries: Mapping[str, DcSummary | None],
                         others: Iterable[str]) -> tuple[str, ...]:
    """The other datacenters whose participants do not all serve ``record``'s phase yet (or
    whose summary is unknown: absent, unreadable, or cut off by the WAN)."""
    blocked = []
    for dc in others:
        summary = summaries.get(dc)
        if summary is None or not summary.holds or summary.rotation_id != record.id \
                or summary.phase != record.phase:
            blocked.append(dc)
    return tuple(blocked)


def advances(record: RotationRecord | None, new: RotationRecord) -> bool:
    """Whether writing ``new`` over ``record`` moves the same rotation on (a phase up, or
    complete): the writes that need every datacenter's barrier. Starting, rolling back and
    rebuilding change the rotation id and move at most one phase from what anyone serves."""
    return record is not None and new.id == record.id and (
        new.phase > record.phase or (new.completed_at is not None
                                     and record.completed_at is None))


def remote_participants(summaries: Mapping[str, DcSummary | None]) -> dict[str, NodeState]:
    """Stand-ins for the other datacenters' participants, one per material they serve: what
    a record lost in the primary is rebuilt from, with the primary's own reports."""
    nodes: dict[str, NodeState] = {}
    for dc, summary in sorted(summaries.items()):
        for k, (trust, signer) in enumerate(summary.materials if summary else ()):
            node_id = f"{dc}/material-{k}"
            nodes[node_id] = NodeState(node_id, trust=frozenset(trust), signer=signer)
    return nodes
