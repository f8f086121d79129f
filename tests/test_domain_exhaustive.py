"""Every interleaving of one rotation over two datacenters (:mod:`tests.domain_model`).

Breadth-first search over every reachable world (the operator's flips in order, at any point;
a WAN cut and restore, or a datacenter's data loss, at any point): in every one, every two
participants serve compatible material. From every one, fair rounds with the link restored
and the operator stopped converge. Without the primary's gate on the other datacenters'
summaries the search finds an incompatible pair.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

import tests.domain_model as model
from tests.domain_model import Domain, apply, converged, enabled, fair_round, initial, violations

FAIR_ROUNDS_LIMIT = 10


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    placement: tuple[int, ...]  # each participant's datacenter (0: the primary)
    script: tuple[str, ...]
    cuts: int = 0
    wipes: int = 0


@dataclasses.dataclass
class Result:
    states: int = 0
    transitions: int = 0
    slowest: int = 0


class Unsafe(AssertionError):
    def __init__(self, problems: list[str], schedule: list[Any], states: int) -> None:
        super().__init__(f"{problems}\nschedule: {schedule}")
        self.problems, self.schedule, self.states = problems, schedule, states


def explore(scenario: Scenario) -> Result:
    start = (initial(scenario.placement), 0, scenario.cuts, scenario.wipes)
    parents: dict[Any, Any] = {start: None}
    queue = collections.deque([start])
    result = Result()
    while queue:
        node = queue.popleft()
        world, flips, cuts, wipes = node
        operator = (scenario.script[flips],) if flips < len(scenario.script) else ()
        for action in enabled(world, operator):
            kind = action[0]
            if (kind == "cut" and not cuts) or (kind == "wipe" and not wipes):
                continue
            nxt = apply(world, action)
            if nxt is world:
                continue
            nxt_node = (nxt, flips + (kind == "flip"), cuts - (kind == "cut"),
                        wipes - (kind == "wipe"))
            result.transitions += 1
            if nxt_node in parents:
                continue
            parents[nxt_node] = (node, action)
            problems = violations(nxt)
            if problems:
                raise Unsafe(problems, _trace(parents, nxt_node), len(parents))
            queue.append(nxt_node)
    result.states = len(parents)
    check_liveness([node[0] for node in parents], result)
    return result


def _trace(parents: dict[Any, Any], node: Any) -> list[Any]:
    path = []
    while parents[node] is not None:
        node, action = parents[node]
        path.append(action)
    return path[::-1]


def check_liveness(worlds: list[Domain], result: Result) -> None:
    memo: dict[Domain, int] = {}
    for world in worlds:
        trail: list[Domain] = []
        while world not in memo and not converged(world):
            assert len(trail) <= FAIR_ROUNDS_LIMIT, f"no convergence from {trail[0]}"
            trail.append(world)
            world = fair_round(world)
            assert not violations(world), world
        rounds = memo.get(world, 0)
        for extra, seen in enumerate(reversed(trail), start=1):
            memo[seen] = rounds + extra
        result.slowest = max(result.slowest, rounds + len(trail))


SCENARIOS = [
    Scenario("wan-partition", (0, 1), ("B", "A"), cuts=1),
    Scenario("primary-and-copy-data-loss", (0, 1), ("B",), wipes=1),
    Scenario("wan-partition-3", (0, 1, 1), ("B",), cuts=1),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_interleaving_over_two_datacenters_is_safe_and_converges(
        scenario: Scenario, record_property: Callable[[str, object], None]) -> None:
    began = time.monotonic()
    result = explore(scenario)
    figure = (f"exhaustive domain: {scenario.name} participants={len(scenario.placement)} "
              f"datacenters=2 states={result.states} transitions={result.transitions} "
              f"slowest_convergence={result.slowest} "
              f"seconds={time.monotonic() - began:.1f}")
    print(figure)
    record_property("figure", figure)
    assert result.states > 100 and result.slowest > 0


def test_without_the_gate_on_the_other_datacenters_the_search_finds_an_outage(
        monkeypatch: pytest.MonkeyPatch, record_property: Callable[[str, object], None]
        ) -> None:
    """The primary moving on without the other datacenter's summary: its participant reaches
    phase 2 (signer B) while the other datacenter's still trusts A only."""
    monkeypatch.setattr(model, "blocking_datacenters", lambda *_: ())
    with pytest.raises(Unsafe) as caught:
        explore(Scenario("no-gate", (0, 1), ("B",)))
    found = caught.value
    assert any("dc1" in p and "dc2" in p for p in found.problems), found
    figure = (f"exhaustive domain: no gate caught after {found.states} states, "
              f"counterexample of {len(found.schedule)} steps ({found.problems[0]})")
    print(figure)
    record_property("figure", figure)
