"""The three-step root rotation as a pure state machine (no I/O, no clock, no randomness).

Rotating from root A to root B, the record's ``phase`` is the material every participant must
converge to:

    phase 0: trust {A},    signer A        phase 2: trust {A, B}, signer B
    phase 1: trust {A, B}, signer A        phase 3: trust {B},    signer B

Any two adjacent phases are compatible (each side's signer is in the other's trust set). The
record moves from phase p to p+1 only when every live participant serves material of phase
>= p and has reported that it installed it from this very record (``NodeState.rotation_id``),
so live participants are always within one phase of each other. Flipping back mid-way
reverses the rotation: A->B at phase k becomes B->A at phase 3-k (the same material), which
keeps everyone within one phase. A third root requested mid-rotation waits until the current
one has completed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_PHASE = 3
#: A root identifier: ``mount`` (one Vault PKI mount per root, the CA being the mount's
#: default issuer) or ``mount:issuer_ref`` (one issuer of a multi-issuer mount, Vault 1.11+
#: and OpenBao; the reference is the issuer's name or id). Vault's issuer references match
#: ``framework.GenericNameRegex``: word characters, ``-`` and ``.``, starting and ending with a
#: word character (builtin/logical/pki/path_fetch_issuers.go, ``issuer/<ref>``).
ROOT_NAME = re.compile(r"^(?P<mount>[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)*)"
                       r"(:(?P<issuer>\w([\w.\-]*\w)?))?$", re.ASCII)
#: Vault resolves ``default`` to whichever issuer ``config/issuers`` names at the time: an
#: identifier must name one fixed root, or the rotation's "from" could change under it.
FLOATING_ISSUER_REFS = frozenset({"default"})


class RotationInputError(ValueError):
    """A Consul value that cannot be acted on (malformed or unknown): nothing rotates."""


@dataclasses.dataclass(frozen=True)
class PhaseMaterial:
    """What a participant in a given phase presents and accepts."""

    trust: frozenset[str]
    signer: str


@dataclasses.dataclass(frozen=True)
class RotationRecord:
    """The shared rotation record (Consul key ``rotation``), advanced by check-and-set."""

    id: str
    from_root: str
    to_root: str
    phase: int
    started_at: float
    phase_since: float
    completed_at: float | None = None

    @property
    def stable(self) -> bool:
        """Completed: every live participant confirmed it serves the final phase."""
        return self.phase == MAX_PHASE and self.completed_at is not None

    @property
    def target_root(self) -> str:
        return self.to_root

    def material(self, phase: int) -> PhaseMaterial:
        return phase_material(self.from_root, self.to_root, phase)

    def phase_of(self, trust: Iterable[str], signer: str | None) -> int | None:
        """The highest phase whose material equals (trust, signer), or None if none does."""
        if signer is None:
            return None
        served = PhaseMaterial(frozenset(trust), signer)
        for phase in range(MAX_PHASE, -1, -1):
            if self.material(phase) == served:
                return phase
        return None

    def to_json(self) -> bytes:
        data = {"id": self.id, "from": self.from_root, "to": self.to_root, "phase": self.phase,
                "started_at": self.started_at, "phase_since": self.phase_since,
                "completed_at": self.completed_at}
        return json.dumps(data, sort_keys=True).encode()


def phase_material(from_root: str, to_root: str, phase: int) -> PhaseMaterial:
    if phase <= 0:
        return PhaseMaterial(frozenset({from_root}), from_root)
    if phase == 1:
        return PhaseMaterial(frozenset({from_root, to_root}), from_root)
    if phase == 2:
        return PhaseMaterial(frozenset({from_root, to_root}), to_root)
    return PhaseMaterial(frozenset({to_root}), to_root)


def compatible(a: PhaseMaterial, b: PhaseMaterial) -> bool:
    """mTLS works between two participants iff each one's signer is in the other's trust."""
    return a.signer in b.trust and b.signer in a.trust


@dataclasses.dataclass(frozen=True)
class NodeState:
    """A live participant as published under ``nodes/<id>``: what it serves, verified."""

    node_id: str
    role: str = "broker"
    trust: frozenset[str] = frozenset()
    signer: str | None = None
    serial: str | None = None
    issuer: str | None = None
    not_after: str | None = None
    rotation_id: str | None = None
    #: The phase of ``rotation_id`` this participant completed (informational: the barrier
    #: derives the phase from ``trust`` and ``signer``, which cannot disagree with the files).
    phase: int | None = None
    updated_at: float | None = None

    def to_json(self) -> bytes:
        data = {"node_id": self.node_id, "role": self.role, "trust": sorted(self.trust),
                "signer": self.signer, "serial": self.serial, "issuer": self.issuer,
                "not_after": self.not_after, "rotation_id": self.rotation_id,
                "phase": self.phase, "updated_at": self.updated_at}
        return json.dumps(data, sort_keys=True).encode()


@dataclasses.dataclass(frozen=True)
class Policy:
    """Operator's safety/speed knobs: minimum seconds per phase, minimum participants."""

    min_dwell: float = 0.0
    expected_members: int = 0


@dataclasses.dataclass(frozen=True)
class Barrier:
    """Whether the record may leave its phase, and whom it waits on."""

    holds: bool
    waiting_on: tuple[str, ...]
    reason: str


def barrier(record: RotationRecord, nodes: Mapping[str, NodeState], now: float,
            policy: Policy) -> Barrier:
    """Every live participant serves phase >= record.phase, installed from this record (its
    ``rotation_id``), enough are live, dwell elapsed.

    A participant still acting on an older record (one it read before a rollback or before
    Consul lost its data) may yet install that record's material, which can be a phase *behind*
    in this record's terms: what it published then is no lower bound on what it will serve, so
    it counts only once it has read this record, installed from it and reported so.
    """
    waiting = tuple(sorted(
        node_id for node_id, node in nodes.items()
        if node.rotation_id != record.id
        or (phase := record.phase_of(node.trust, node.signer)) is None or phase < record.phase))
    if waiting:
        return Barrier(False, waiting, f"waiting for {len(waiting)} participant(s) to serve "
                                       f"phase {record.phase}")
    if len(nodes) < policy.expected_members:
        return Barrier(False, (), f"{len(nodes)} of {policy.expected_members} expected "
                                  "participants registered")
    dwell_left = record.phase_since + policy.min_dwell - now
    if dwell_left > 0:
        return Barrier(False, (), f"minimum dwell: {dwell_left:.0f}s left in phase "
                                  f"{record.phase}")
    return Barrier(True, (), "all participants serve this phase")


@dataclasses.dataclass(frozen=True)
class Event:
    """Something the participant should log (name + fields)."""

    name: str
    fields: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Decision:
    """The record to write by check-and-set (None: leave it), and what to log."""

    record: RotationRecord | None
    events: tuple[Event, ...] = ()


def decide(record: RotationRecord | None, desired_root: str | None,
           nodes: Mapping[str, NodeState], now: float, policy: Policy,
           new_id: str) -> Decision:
    """The next rotation record given the operator's desired root and the participants.

    ``desired_root`` must already be validated (None: no valid desired root, nothing starts).
    ``new_id`` is used if this decision starts a new rotation.
    """
    if record is None:
        if len(nodes) < policy.expected_members:
            # Participants that have not registered again may serve anything: a record rebuilt
            # without them could make the registered ones install material they cannot talk to.
            return Decision(None, (Event("rotation_reconstruct_waiting", {
                "registered": len(nodes), "expected": policy.expected_members}),))
        rebuilt = reconstruct(nodes, desired_root, now, new_id)
        if rebuilt is None:
            return Decision(None, (Event("rotation_unrecoverable", {
                "reason": "no rotation record and participants serve material of more than "
                          "two roots (or no desired root): set the rotation key by hand"}),))
        return Decision(rebuilt, (Event("rotation_bootstrapped", {
            "rotation_id": new_id, "from": rebuilt.from_root, "to": rebuilt.to_root,
            "phase": rebuilt.phase}),))

    if desired_root is not None and desired_root != record.to_root:
        if desired_root == record.from_root and not record.stable:
            reverse = RotationRecord(new_id, record.to_root, record.from_root,
                                     MAX_PHASE - record.phase, now, now)
            return Decision(reverse, (Event("rotation_rolled_back", {
                "from_rotation": record.id, "rotation_id": new_id, "phase": reverse.phase,
                "to": desired_root}),))
        if record.stable:
            start = RotationRecord(new_id, record.to_root, desired_root, 1, now, now)
            return Decision(start, (Event("rotation_started", {
                "rotation_id": new_id, "from": record.to_root, "to": desired_root}),))
        deferred = Event("rotation_deferred", {
            "requested": desired_root, "current_rotation": record.id,
            "to": record.to_root, "phase": record.phase,
            "reason": "another rotation is in progress; it completes first"})
        return _advance(record, nodes, now, policy, (deferred,))
    return _advance(record, nodes, now, policy, ())


def reconstruct(nodes: Mapping[str, NodeState], desired_root: str | None, now: float,
                new_id: str) -> RotationRecord | None:
    """A record consistent with what participants serve, when there is none (first start,
    or Consul lost its data mid-rotation).

    Any single participant's phase is a safe record phase: the others are within one phase
    of it, those behind move up to it and those ahead stay (see :func:`target_phase`).
    """
    served = [(node.trust, node.signer) for node in nodes.values() if node.signer is not None]
    roots = {root for trust, signer in served for root in (*trust, signer)}
    if not served:
        if desired_root is None:
            return None
        return RotationRecord(new_id, desired_root, desired_root, MAX_PHASE, now, now)
    if len(roots) == 1:
        (only,) = roots
        if desired_root is None or desired_root == only:
            return RotationRecord(new_id, only, only, MAX_PHASE, now, now)
        return RotationRecord(new_id, only, desired_root, 0, now, now)
    if len(roots) != 2:
        return None
    to_root = desired_root if desired_root in roots else sorted(roots)[1]
    (from_root,) = roots - {to_root}
    probe = RotationRecord(new_id, from_root, to_root, 0, now, now)
    phases = [probe.phase_of(trust, signer) for trust, signer in served]
    known = [p for p in phases if p is not None]
    if not known:
        return None
    return dataclasses.replace(probe, phase=max(known))


def _advance(record: RotationRecord, nodes: Mapping[str, NodeState], now: float, policy: Policy,
             events: tuple[Event, ...]) -> Decision:
    if record.stable:
        return Decision(None, events)
    gate = barrier(record, nodes, now, policy)
    if not gate.holds:
        return Decision(None, events)
    if record.phase == MAX_PHASE:
        done = dataclasses.replace(record, completed_at=now)
        return Decision(done, (*events, Event("rotation_completed", {
            "rotation_id": record.id, "root": record.to_root,
            "seconds": round(now - record.started_at, 3)})))
    nxt = dataclasses.replace(record, phase=record.phase + 1, phase_since=now)
    return Decision(nxt, (*events, Event("rotation_phase_advanced", {
        "rotation_id": record.id, "phase": nxt.phase, "from": record.from_root,
        "to": record.to_root})))


def install_step(record: RotationRecord, installed: PhaseMaterial | None
                 ) -> tuple[int, PhaseMaterial]:
    """The participant's install rule: the phase of ``record`` to install and its material,
    given the material it installed last (None: nothing yet).

    Decided from what is installed, which the monitor serves next, not from what it has
    acknowledged so far: deciding from an older acknowledged generation could install a lower
    phase of this record after a higher one, which the barrier may already count. The
    coordinator and the rotation model both call this.
    """
    own = record.phase_of(installed.trust, installed.signer) if installed else None
    phase = target_phase(record, own)
    return phase, record.material(phase)


def target_phase(record: RotationRecord, serving_phase: int | None) -> int:
    """The phase a participant should install: the record's, except that one already a phase
    ahead (after a rollback) stays there, which avoids a needless swap and stays compatible."""
    if serving_phase is not None and serving_phase == record.phase + 1:
        return serving_phase
    return record.phase


# -- parsing Consul values ------------------------------------------------------------------

def split_root(root: str) -> tuple[str, str | None]:
    """``"pki:root-b"`` -> ``("pki", "root-b")``; ``"pki_root_b"`` -> ``("pki_root_b", None)``.

    Only the Vault access needs the two parts; everywhere else a root is an opaque string."""
    mount, sep, issuer = root.partition(":")
    return mount, (issuer if sep else None)


def parse_root_name(raw: bytes | str | None, what: str = "active-root") -> str:
    """Validate a root identifier (the operator's ``active-root`` value, ``--root``,
    ``--trust``): ``mount`` or ``mount:issuer_ref``."""
    if raw is None:
        raise RotationInputError(f"{what} is not set")
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise RotationInputError(f"{what} is not valid UTF-8") from None
    text = text.strip()
    if not text:
        raise RotationInputError(f"{what} is empty")
    match = ROOT_NAME.match(text) if len(text) <= 128 else None
    if match is None:
        raise RotationInputError(
            f"{what} {text[:60]!r} is not a valid root: give a PKI mount (pki_root_b) or "
            "mount:issuer (pki:root-2026, the issuer's name or id)")
    if match.group("issuer") in FLOATING_ISSUER_REFS:
        raise RotationInputError(
            f"{what} {text[:60]!r} names no fixed issuer: 'default' follows the mount's "
            "config/issuers; give the issuer's name or id")
    return text


def parse_record(raw: bytes) -> RotationRecord:
    """Parse the ``rotation`` key; raise RotationInputError if it is malformed."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RotationInputError(f"rotation record is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RotationInputError("rotation record is not a JSON object")
    try:
        record = RotationRecord(
            id=_require(data, "id", str), from_root=parse_root_name(_require(data, "from", str)),
            to_root=parse_root_name(_require(data, "to", str)),
            phase=_require(data, "phase", int),
            started_at=float(_require(data, "started_at", (int, float))),
            phase_since=float(_require(data, "phase_since", (int, float))),
            completed_at=(float(data["completed_at"])
                          if isinstance(data.get("completed_at"), int | float) else None))
    except RotationInputError as exc:
        raise RotationInputError(f"rotation record: {exc}") from None
    if not 0 <= record.phase <= MAX_PHASE:
        raise RotationInputError(f"rotation record: phase {record.phase} is not 0..3")
    return record


def parse_node(node_id: str, raw: bytes | None) -> NodeState:
    """Parse a ``nodes/<id>`` value; a registered node that has not reported yet is empty."""
    if not raw:
        return NodeState(node_id)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RotationInputError(f"node {node_id}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RotationInputError(f"node {node_id}: not a JSON object")
    trust = data.get("trust") or []
    if not isinstance(trust, list) or not all(isinstance(t, str) for t in trust):
        raise RotationInputError(f"node {node_id}: trust must be a list of root names")

    def opt(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    updated, phase = data.get("updated_at"), data.get("phase")
    return NodeState(node_id=node_id, role=opt("role") or "broker", trust=frozenset(trust),
                     signer=opt("signer"), serial=opt("serial"), issuer=opt("issuer"),
                     not_after=opt("not_after"), rotation_id=opt("rotation_id"),
                     phase=phase if isinstance(phase, int) and not isinstance(phase, bool)
                     else None,
                     updated_at=float(updated) if isinstance(updated, int | float) else None)


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is None or not isinstance(value, kind) or isinstance(value, bool):
        raise RotationInputError(f"field {key!r} is missing or has the wrong type")
    return value
