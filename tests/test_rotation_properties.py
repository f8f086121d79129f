"""Safety and liveness of the root rotation under random interleavings (hypothesis stateful).

The machine drives :mod:`tests.rotation_model`: up to eight participants take the documented
steps (register, read, decide + check-and-set, install, report) in any order, stall between a
read and its install, crash, restart, join, lose their sessions; the operator flips
``active-root`` between A, B, C and invalid values; time passes; with ``expected_members`` =
participants, partitions and Consul data losses happen too. After every step no two live
participants are incompatible and none that installed since the last data loss is more than one
phase from the record. At the end the operator and the faults stop and a fair schedule must
complete the rotation to the operator's root. Dedicated examples check the deferral and rollback
events and replay the counterexamples found against the original state machine. The run records
how many examples, steps and model actions it checked (shown in the pytest summary).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sidecar.rotation import (
    MAX_PHASE,
    NodeState,
    PhaseMaterial,
    Policy,
    RotationRecord,
    barrier,
    decide,
)
from tests.rotation_model import (
    INVALID_ROOTS,
    ROOTS,
    Action,
    Config,
    World,
    apply,
    can,
    converged,
    describe,
    fair_completion,
    initial_world,
    safety_violations,
    stable_material,
    validated_root,
)

FAIR_ROUNDS = 40
LOOP = ("register", "report", "read", "decide", "install", "report")


@dataclasses.dataclass(frozen=True)
class Swarm:
    """Which optional kinds of step an example uses (swarm testing: leaving some out lets the
    others go deeper)."""

    crashes: bool
    joins: bool
    invalid_flips: bool
    third_root: bool


class RotationMachine(RuleBasedStateMachine):
    """Random interleavings of participant, operator, clock and fault steps."""

    # Counted over a run for its figure: machines (one per example), steps (rules run, the
    # initialising one included, as hypothesis counts them), model actions the steps applied.
    examples: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    actions: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        RotationMachine.examples += 1
        self.world: World | None = None
        self.config = Config()
        self.swarm = Swarm(False, False, False, False)
        self.wanted = "A"
        self.violated = False
        self.stalled: set[int] = set()

    @initialize(n=st.one_of(st.integers(2, 3), st.integers(2, 8)), from_nothing=st.booleans(),
                faults=st.booleans(), lag=st.booleans(), dwell=st.sampled_from([0.0, 0.0, 3.0]),
                swarm=st.builds(Swarm, st.booleans(), st.booleans(), st.booleans(),
                                st.booleans()))
    def start(self, n: int, from_nothing: bool, faults: bool, lag: bool, dwell: float,
              swarm: Swarm) -> None:
        policy = Policy(min_dwell=dwell, expected_members=n if faults else 0)
        self.config = Config(max_participants=8, lag_reports=lag, faults=faults,
                             allow_crash=swarm.crashes, allow_join=swarm.joins and not faults)
        self.swarm = swarm
        self.world = initial_world(n, policy, from_nothing=from_nothing)

    # -- helpers ---------------------------------------------------------------------------------

    def _w(self) -> World:
        assert self.world is not None
        return self.world

    def _do(self, action: Action) -> None:
        RotationMachine.actions += 1
        self.world = apply(self._w(), self.config, action)[0]

    def _able(self, kind: str, *, stalled_too: bool = False) -> list[int]:
        """Participants that may take step ``kind`` now (stalled ones only if ``stalled_too``)."""
        if self.world is None:
            return []
        return [i for i in range(len(self.world.participants))
                if (stalled_too or i not in self.stalled)
                and can(self.world, self.config, kind, i)]

    def _step(self, data: st.DataObject, kind: str) -> None:
        self._do((kind, data.draw(st.sampled_from(self._able(kind)), label=kind)))

    def _finish_install(self, i: int) -> None:
        for kind in ("install", "report"):
            if can(self._w(), self.config, kind, i):
                self._do((kind, i))

    def _iterate(self, i: int) -> None:
        for kind in LOOP:
            if can(self._w(), self.config, kind, i):
                self._do((kind, i))

    # -- participant steps -----------------------------------------------------------------------

    @precondition(lambda self: bool(self._able("register")))
    @rule(data=st.data())
    def register(self, data: st.DataObject) -> None:
        self._step(data, "register")

    @precondition(lambda self: bool(self._able("read")))
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        self._step(data, "read")

    @precondition(lambda self: bool(self._able("decide")))
    @rule(data=st.data())
    def decide(self, data: st.DataObject) -> None:
        self._step(data, "decide")

    @precondition(lambda self: bool(self._able("install")))
    @rule(data=st.data())
    def install(self, data: st.DataObject) -> None:
        self._step(data, "install")

    @precondition(lambda self: bool(self._able("report")))
    @rule(data=st.data())
    def report(self, data: st.DataObject) -> None:
        self._step(data, "report")

    @precondition(lambda self: self.world is not None)
    @rule(data=st.data())
    def loop_iteration(self, data: st.DataObject) -> None:
        """One participant runs its whole loop once: register if needed, report, read, decide,
        install, report (random runs get deep into rotations; single steps interleave)."""
        who = [i for i in range(len(self._w().participants)) if i not in self.stalled]
        if who:
            self._iterate(data.draw(st.sampled_from(who), label="who"))

    @precondition(lambda self: bool(self._able("read")))
    @rule(data=st.data())
    def stall(self, data: st.DataObject) -> None:
        """A participant reads, then stalls before installing (a slow issuance, a GC pause):
        the others go on until it resumes and installs from that read."""
        i = data.draw(st.sampled_from(self._able("read")), label="stalls")
        self._do(("read", i))
        self.stalled.add(i)

    @precondition(lambda self: bool(self.stalled))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """A stalled participant installs from its old read and reports it."""
        i = data.draw(st.sampled_from(sorted(self.stalled)), label="resumes")
        self.stalled.discard(i)
        self._finish_install(i)

    @precondition(lambda self: bool(self._able("read")))
    @rule(data=st.data())
    def race(self, data: st.DataObject) -> None:
        """A tight race: one participant reads, a stalled one (if any) resumes and installs
        from its old read, then the first decides on its now stale read."""
        i = data.draw(st.sampled_from(self._able("read")), label="reader")
        self._do(("read", i))
        if self.stalled:
            j = data.draw(st.sampled_from(sorted(self.stalled)), label="resumes")
            self.stalled.discard(j)
            self._finish_install(j)
        self._do(("decide", i))

    @precondition(lambda self: self.world is not None)
    @rule()
    def everyone_iterates(self) -> None:
        """Every participant runs its loop once, in order."""
        for i in range(len(self._w().participants)):
            if i not in self.stalled:
                self._iterate(i)

    @precondition(lambda self: bool(self._able("crash", stalled_too=True)))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self._able("crash", stalled_too=True)), label="crash")
        self.stalled.discard(i)
        self._do(("crash", i))

    @precondition(lambda self: bool(self._able("expire")))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        self._step(data, "expire")

    @precondition(lambda self: bool(self._able("restart")))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        self._step(data, "restart")

    @precondition(lambda self: self.world is not None and self.config.allow_join
                  and len(self.world.participants) < self.config.max_participants)
    @rule()
    def join(self) -> None:
        self._do(("join",))

    # -- operator and clock ----------------------------------------------------------------------

    @precondition(lambda self: self.world is not None)
    @rule(data=st.data())
    def flip(self, data: st.DataObject) -> None:
        values = ROOTS if self.swarm.third_root else ROOTS[:2]
        values += INVALID_ROOTS if self.swarm.invalid_flips else ()
        raw = data.draw(st.sampled_from([v for v in values if v != self._w().active_root]),
                        label="active_root")
        if validated_root(raw) is not None:
            assert raw is not None
            self.wanted = raw
        self._do(("flip", raw))

    @precondition(lambda self: self.world is not None and self.world.policy.min_dwell > 0)
    @rule(dt=st.sampled_from([1.0, 5.0]))
    def tick(self, dt: float) -> None:
        self._do(("tick", dt))

    # -- faults (only with expected_members = participants) ---------------------------------------

    @precondition(lambda self: bool(self._able("expire_live", stalled_too=True)))
    @rule(data=st.data())
    def expire_live(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self._able("expire_live", stalled_too=True)),
                      label="partitioned")
        self._do(("expire_live", i))

    @precondition(lambda self: self.world is not None and self.config.faults)
    @rule(keep_root=st.booleans())
    def consul_wipe(self, keep_root: bool) -> None:
        self._do(("wipe", keep_root))

    # -- properties ------------------------------------------------------------------------------

    @invariant()
    def safe(self) -> None:
        RotationMachine.steps += 1  # hypothesis checks invariants after every step
        if self.world is None:
            return
        problems = safety_violations(self.world)
        if problems:
            self.violated = True
            raise AssertionError("; ".join(problems) + "\n" + describe(self.world))

    def teardown(self) -> None:
        """The operator settles on its last valid root (restoring the key if it was lost or set
        to garbage), faults stop, the dead restart (with no expected-member count, every other
        one stays dead and its session expires): a fair schedule must converge."""
        if self.world is None or self.violated:
            return
        world = apply(self.world, self.config, ("flip", self.wanted))[0]
        config = Config(max_participants=self.config.max_participants,
                        lag_reports=self.config.lag_reports, allow_crash=False, allow_join=False)
        keep_dead = frozenset() if world.policy.expected_members else frozenset(
            p.node_id for p in world.participants[1::2])
        last = world
        for last in fair_completion(world, config, keep_dead=keep_dead, max_rounds=FAIR_ROUNDS):
            if converged(last, self.wanted):
                return
        raise AssertionError(f"no convergence to {self.wanted} after {FAIR_ROUNDS} fair "
                             f"rounds from:\n{describe(world)}\nnow:\n{describe(last)}")


SETTINGS = settings(
    max_examples=700, stateful_step_count=140, derandomize=True, database=None, deadline=None,
    print_blob=False, suppress_health_check=[HealthCheck.too_slow])


# A failure is shrunk for up to Hypothesis' five minutes: give it that time before the suite-wide
# timeout cuts it short into a confusing "flaky" report.
@pytest.mark.timeout(900)
def test_rotation_properties(record_property: Callable[[str, object], None]) -> None:
    RotationMachine.examples = RotationMachine.steps = RotationMachine.actions = 0
    began = time.monotonic()
    run_state_machine_as_test(RotationMachine, settings=SETTINGS)
    figure = (f"hypothesis: rotation machine examples_run={RotationMachine.examples} (the "
              f"{SETTINGS.max_examples} valid ones plus those hypothesis discarded as overrun or "
              f"invalid) steps={RotationMachine.steps} (up to {SETTINGS.stateful_step_count} per "
              f"example) model_actions={RotationMachine.actions} "
              f"seconds={time.monotonic() - began:.1f}")
    print(figure)
    record_property("figure", figure)


# -- dedicated examples ----------------------------------------------------------------------------

def _run(world: World, config: Config, actions: list[Action],
         events: collections.Counter[str] | None = None) -> World:
    for action in actions:
        world, happened = apply(world, config, action)
        assert not safety_violations(world), f"after {action}:\n{describe(world)}"
        if events is not None:
            events.update(event.name for event in happened)
    return world


def _everyone(world: World, *kinds: str) -> list[Action]:
    return [(kind, i) for i in range(len(world.participants)) for kind in kinds]


def _settle(world: World, config: Config, root: str) -> World:
    last = world
    for last in fair_completion(world, config, max_rounds=FAIR_ROUNDS):
        if converged(last, root):
            return last
    raise AssertionError(describe(last))


def test_third_root_mid_rotation_is_deferred_then_reached() -> None:
    config = Config(max_participants=3, lag_reports=False)
    world = initial_world(3, Policy())
    events: collections.Counter[str] = collections.Counter()
    world = _run(world, config, [("flip", "B"), ("read", 0), ("decide", 0), ("flip", "C"),
                                 ("read", 1), ("decide", 1)], events)
    assert events["rotation_started"] == 1 and events["rotation_deferred"] == 1
    assert world.record is not None and world.record.to_root == "B"
    for _ in range(MAX_PHASE + 1):
        world = _run(world, config, _everyone(world, "read", "decide", "install"), events)
        record = world.record
        assert record is not None
        if record.to_root == "C":
            break
        assert events["rotation_deferred"] > 1
    assert events["rotation_completed"] == 1, "C starts only once A->B has completed"
    assert world.record is not None and world.record.from_root == "B"
    assert converged(_settle(world, config, "C"), "C")


def test_rollback_reverses_the_rotation() -> None:
    config = Config(max_participants=2, lag_reports=False)
    world = initial_world(2, Policy())
    events: collections.Counter[str] = collections.Counter()
    world = _run(world, config, [("flip", "B"), *_everyone(world, "read", "decide", "install"),
                                 ("read", 0), ("decide", 0), ("flip", "A"), ("read", 1),
                                 ("decide", 1)], events)
    assert events["rotation_rolled_back"] == 1
    record = world.record
    assert record is not None and (record.from_root, record.to_root, record.phase) == ("B", "A", 1)
    assert converged(_settle(world, config, "A"), "A")


def test_slow_install_across_a_rollback_cannot_break_mtls() -> None:
    """The counterexample both searches found against the original barrier. n1 read A->B@2 and
    is slow to install it; the operator flips back; n0 alone rolls back to B->A@1 and advances
    to @2 and @3, each time counting n1's published ({A,B},A) (B->A phase 2) although n1 still
    acts on A->B; n0 ends on ({A},A), then n1 installs A->B@2, ({A,B},B): n0 does not trust B.
    Now the barrier waits until n1 reports material installed from the rollback record."""
    config = Config(max_participants=2, lag_reports=False)
    loop: list[Action] = [("read", 0), ("decide", 0), ("install", 0)]
    world = _run(initial_world(2, Policy()), config, [
        ("flip", "B"), *loop, ("read", 1), ("decide", 1), ("install", 1), *loop, ("read", 1),
        ("flip", "A"), *loop, *loop, *loop])
    record = world.record
    assert record is not None and (record.from_root, record.to_root, record.phase) == ("B", "A", 1)
    assert barrier(record, world.registry_map(), world.now, world.policy).waiting_on == ("n1",)
    world = _run(world, config, [("install", 1), *loop])
    assert converged(_settle(world, config, "A"), "A")


def test_barrier_counts_only_participants_reporting_this_rotation() -> None:
    record = RotationRecord("r2", "B", "A", 2, 0.0, 0.0)
    material = record.material(2)
    stale = {"n0": _published("n0", material, "r1"), "n1": _published("n1", material, "r2")}
    gate = barrier(record, stale, 0.0, Policy())
    assert not gate.holds and gate.waiting_on == ("n0",)
    fresh = {"n0": _published("n0", material, "r2"), "n1": _published("n1", material, "r2")}
    assert barrier(record, fresh, 0.0, Policy()).holds


def test_rebuilding_a_lost_record_waits_for_every_expected_member() -> None:
    """The counterexample the search found: after Consul lost its data, n0 (restarted, serving
    nothing) was alone in the registry and rebuilt B->B@3 from it, then installed ({B},B) while
    n1, not registered again yet, still served ({A},A)."""
    config = Config(max_participants=2, faults=True, lag_reports=False)
    world = initial_world(2, Policy(expected_members=2))
    world = _run(world, config, [("crash", 0), ("restart", 0), ("flip", "B"), ("wipe", True),
                                 ("register", 0), ("read", 0), ("decide", 0)])
    assert world.record is None, "must wait for n1 to register"
    assert converged(_settle(world, config, "B"), "B")
    registered = {"n0": _published("n0", None, None)}
    waiting = decide(None, "B", registered, 0.0, Policy(expected_members=2), "r9")
    assert waiting.record is None
    assert [event.name for event in waiting.events] == ["rotation_reconstruct_waiting"]


def test_deciding_again_on_the_registry_read_before_a_write_is_unsafe() -> None:
    """Pins a contract for the coordinator: after a successful check-and-set, read again before
    the next decision. Reusing the old registry view misses a participant that registered in
    between, here n0 installing B->A@1 while n1 writes B->A@2 and B->A@3."""
    config = Config(max_participants=2, lag_reports=True, decide_again_after_cas=True)
    world = initial_world(2, Policy())
    schedule: list[Action] = [
        ("crash", 0), ("expire", 0), ("restart", 0), ("flip", "B"), ("read", 1), ("decide", 1),
        ("install", 1), ("report", 1), ("read", 1), ("decide", 1), ("flip", "A"), ("read", 1),
        ("decide", 1), ("install", 1), ("report", 1), ("read", 1), ("register", 0), ("read", 0),
        ("install", 0), ("decide", 1), ("decide", 1), ("install", 1)]
    for action in schedule:
        world = apply(world, config, action)[0]
    assert safety_violations(world)
    assert world.participants[1].serving == stable_material("A")


def _published(node_id: str, material: PhaseMaterial | None,
               rotation_id: str | None) -> NodeState:
    if material is None:
        return NodeState(node_id)
    return NodeState(node_id, trust=material.trust, signer=material.signer,
                     rotation_id=rotation_id)
