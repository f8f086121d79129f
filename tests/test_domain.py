"""The rotation domain's pure rules (sidecar.domain)."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.domain import (
    DcSummary,
    Domain,
    advances,
    blocking_datacenters,
    parse_datacenters,
    parse_summary,
    remote_participants,
    summarize,
)
from sidecar.rotation import NodeState, Policy, RotationInputError, RotationRecord, decide


def test_the_setting_names_the_primary_first_and_rejects_bad_lists() -> None:
    assert parse_datacenters("") == ()
    assert parse_datacenters(" dc1, dc-2 ") == ("dc1", "dc-2")
    for bad in ("dc1", "dc1,dc1", "dc1,dc 2", "dc1,d/c"):
        with pytest.raises(ValueError):
            parse_datacenters(bad)
    domain = Domain(("dc1", "dc2", "dc3"), "dc2")
    assert (domain.primary, domain.is_primary, domain.others) == ("dc1", False, ("dc1", "dc3"))
    with pytest.raises(ValueError, match="not one of"):
        Domain(("dc1", "dc2"), "dc9")


def test_the_primary_waits_for_every_other_datacenters_barrier_at_this_very_phase() -> None:
    record = RotationRecord("r1", "A", "B", 1, 0.0, 0.0)
    nodes = {"n": NodeState("n", trust=frozenset({"A", "B"}), signer="A", rotation_id="r1")}
    here = summarize("dc2", record, nodes, 0.0, Policy(min_dwell=99))
    assert here.holds, "the dwell is the primary's to apply"
    assert parse_summary(here.to_json()) == here
    assert blocking_datacenters(record, {"dc2": here}, ("dc2",)) == ()
    for stale in (None, dataclasses.replace(here, holds=False),
                  dataclasses.replace(here, phase=0), dataclasses.replace(here, rotation_id="r0")):
        assert blocking_datacenters(record, {"dc2": stale}, ("dc2",)) == ("dc2",)
    assert blocking_datacenters(record, {}, ("dc2",)) == ("dc2",), "unknown: cut off"
    with pytest.raises(RotationInputError):
        parse_summary(b"[1]")


def test_only_moving_the_same_rotation_on_needs_the_other_datacenters() -> None:
    record = RotationRecord("r1", "A", "B", 1, 0.0, 0.0)
    assert advances(record, dataclasses.replace(record, phase=2))
    last = dataclasses.replace(record, phase=3)
    assert advances(last, dataclasses.replace(last, completed_at=5.0))
    assert not advances(record, RotationRecord("r2", "B", "A", 2, 1.0, 1.0)), "a rollback"
    assert not advances(None, record), "a rebuild"


def test_a_lost_primary_record_is_rebuilt_from_what_every_datacenter_serves() -> None:
    remote = DcSummary("dc2", "r1", 2, True, 3,
                       ((("A", "B"), "B"), (("A", "B"), "A")))
    voters = remote_participants({"dc2": remote, "dc3": None})
    assert len(voters) == 2
    here = {"n": NodeState("n", trust=frozenset({"A", "B"}), signer="A", rotation_id="r1")}
    rebuilt = decide(None, "B", {**voters, **here}, 0.0, Policy(), "r9").record
    # The highest phase anyone serves: dc2's ({A,B},B) is phase 2; alone, dc1 would say 1.
    assert rebuilt is not None and (rebuilt.to_root, rebuilt.phase) == ("B", 2)
    assert decide(None, "B", here, 0.0, Policy(), "r9").record.phase == 1
