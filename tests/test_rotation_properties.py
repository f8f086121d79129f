"""Safety and liveness of the root rotation under random interleavings (hypothesis stateful).

The machine drives :mod:`tests.rotation_model`: up to eight participants take the documented
steps (register, read, install, serve, report; as barrier keeper: acquire the lock, read the
prefix, decide + check-and-set, step down) in any order, keepers deciding on reads that went
stale, two of them at once after a partition, stall
between a read and its install, crash, restart, join, lose their sessions; their monitors serve
installed generations late, skipping some or serving an older one after a newer one was
installed; the operator flips ``active-root`` between A, B, C and invalid values; time passes;
with ``expected_members`` = participants, partitions and Consul data losses happen too. After
every step no two live participants serve incompatible material and none whose served material
stands for a decision since the last data loss is more than one phase from the record. At the
end the operator and the faults stop and a fair schedule must complete the rotation to the
operator's root. Dedicated examples check the deferral and rollback events and replay the
counterexamples found against earlier versions of the state machine and the coordinator. The run
records how many examples, steps and model actions it checked (shown in the pytest summary).
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
    RotationInputError,
    RotationRecord,
    barrier,
    decide,
    parse_root_name,
    split_root,
)
from tests.rotation_model import (
    FAIR_LOOP,
    INVALID_ROOTS,
    PARTICIPANT_STEPS,
    ROOTS,
    Action,
    Config,
    DecideFrom,
    World,
    apply,
    can,
    converged,
    describe,
    enabled,
    fair_completion,
    fair_round,
    initial_world,
    safety_violations,
    stable_material,
    validated_root,
)

FAIR_ROUNDS = 40
LOOP = FAIR_LOOP


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
    #: The coordinator's choice; a subclass puts the bug of ba54e53 back.
    decide_from: ClassVar[DecideFrom] = "installed"

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
                faults=st.booleans(), lag=st.booleans(),
                lag_monitor=st.sampled_from([True, True, False]),
                dwell=st.sampled_from([0.0, 0.0, 3.0]), keeper=st.sampled_from([0, 0, None]),
                swarm=st.builds(Swarm, st.booleans(), st.booleans(), st.booleans(),
                                st.booleans()))
    def start(self, n: int, from_nothing: bool, faults: bool, lag: bool, lag_monitor: bool,
              dwell: float, keeper: int | None, swarm: Swarm) -> None:
        policy = Policy(min_dwell=dwell, expected_members=n if faults else 0)
        self.config = Config(max_participants=8, lag_reports=lag, lag_monitor=lag_monitor,
                             faults=faults, allow_crash=swarm.crashes,
                             allow_resume=swarm.crashes,
                             allow_join=swarm.joins and not faults, decide_from=self.decide_from)
        self.swarm = swarm
        self.world = initial_world(n, policy, from_nothing=from_nothing, keeper=keeper)

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

    def _iterate(self, i: int, *, serve: bool = True) -> None:
        """One pass of participant ``i``; its monitor serves the latest generation during it,
        or (``serve=False``) lags behind."""
        for kind in LOOP:
            if (serve or kind != "serve") and can(self._w(), self.config, kind, i):
                self._do((kind, i))

    # -- participant steps -----------------------------------------------------------------------

    @precondition(lambda self: bool(self._able("register")))
    @rule(data=st.data())
    def register(self, data: st.DataObject) -> None:
        self._step(data, "register")

    @precondition(lambda self: bool(self._able("acquire")))
    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        """A participant takes the free ``keeper`` lock with its session."""
        self._step(data, "acquire")

    @precondition(lambda self: bool(self._able("step_down", stalled_too=True)))
    @rule(data=st.data())
    def step_down(self, data: st.DataObject) -> None:
        """A stale keeper notices that the lock is not its own any more."""
        i = data.draw(st.sampled_from(self._able("step_down", stalled_too=True)),
                      label="steps down")
        self._do(("step_down", i))

    @precondition(lambda self: bool(self._able("read")))
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        self._step(data, "read")

    @precondition(lambda self: bool(self._able("survey")))
    @rule(data=st.data())
    def survey(self, data: st.DataObject) -> None:
        """The keeper reads the whole prefix (the reports in it may be late already)."""
        self._step(data, "survey")

    @precondition(lambda self: bool(self._able("decide", stalled_too=True)))
    @rule(data=st.data())
    def decide(self, data: st.DataObject) -> None:
        """A keeper (possibly a stale one, possibly stalled in its installs: the keeper runs in
        a thread of its own) decides on its last read of the prefix and check-and-sets."""
        i = data.draw(st.sampled_from(self._able("decide", stalled_too=True)), label="decide")
        self._do(("decide", i))

    @precondition(lambda self: bool(self._able("install")))
    @rule(data=st.data())
    def install(self, data: st.DataObject) -> None:
        self._step(data, "install")

    @precondition(lambda self: bool(self._able("serve", stalled_too=True)))
    @rule(data=st.data())
    def serve(self, data: st.DataObject) -> None:
        """A monitor serves one of the generations installed since the one it serves: the
        latest, or an older one (it was applying that one when the newer one arrived)."""
        i = data.draw(st.sampled_from(self._able("serve", stalled_too=True)), label="monitor")
        backlog = len(self._w().participants[i].backlog)
        self._do(("serve", i, data.draw(st.integers(0, backlog - 1), label="generation")))

    @precondition(lambda self: bool(self._able("report")))
    @rule(data=st.data())
    def report(self, data: st.DataObject) -> None:
        self._step(data, "report")

    @precondition(lambda self: self.world is not None)
    @rule(data=st.data())
    def loop_iteration(self, data: st.DataObject) -> None:
        """One participant runs its whole loop once: register if needed, notice it lost the
        lock or take a free one, report, read the prefix and decide if keeper, read the record,
        install, its monitor serves (or lags), report (random runs get deep into rotations;
        single steps interleave)."""
        who = [i for i in range(len(self._w().participants)) if i not in self.stalled]
        if who:
            self._iterate(data.draw(st.sampled_from(who), label="who"),
                          serve=data.draw(st.booleans(), label="monitor keeps up"))

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

    @precondition(lambda self: bool(self._able("survey")))
    @rule(data=st.data())
    def race(self, data: st.DataObject) -> None:
        """A tight race: the keeper reads the prefix, a stalled participant (if any) resumes
        and installs from its old read of the record, then the keeper decides on its now
        stale read."""
        i = data.draw(st.sampled_from(self._able("survey")), label="keeper")
        self._do(("survey", i))
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

    @precondition(lambda self: bool(self._able("resume", stalled_too=True)))
    @rule(data=st.data())
    def restart_resuming(self, data: st.DataObject) -> None:
        """The auth manager restarts on its volume and resumes its session (and lock)."""
        i = data.draw(st.sampled_from(self._able("resume", stalled_too=True)), label="resume")
        self.stalled.discard(i)
        self._do(("resume", i))

    @precondition(lambda self: self.world is not None and self.config.allow_join
                  and len(self.world.participants) < self.config.max_participants)
    @rule()
    def join(self) -> None:
        self._do(("join",))

    # -- operator and clock ----------------------------------------------------------------------

    @precondition(lambda self: self.world is not None)
    @rule(data=st.data())
    def flip(self, data: st.DataObject) -> None:
        values: tuple[str | None, ...] = ROOTS if self.swarm.third_root else ROOTS[:2]
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
        holder = self.world.keeper
        if holder is not None and self.world.entry(holder) is None:
            problems.append(f"the lock is held by {holder}, whose session is gone")
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
        config = dataclasses.replace(self.config, faults=False, allow_crash=False,
                                     allow_join=False)
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
    """Apply ``actions`` in turn (each participant step must be enabled), checking safety."""
    for action in actions:
        if action[0] in PARTICIPANT_STEPS:
            assert can(world, config, action[0], action[1]), \
                f"{action} is not enabled in\n{describe(world)}"
        world, happened = apply(world, config, action)
        assert not safety_violations(world), f"after {action}:\n{describe(world)}"
        if events is not None:
            events.update(event.name for event in happened)
    return world


def _everyone(world: World, *kinds: str) -> list[Action]:
    return [(kind, i) for i in range(len(world.participants)) for kind in kinds]


def _keep(i: int = 0) -> list[Action]:
    """Keeper ``i`` reads the prefix, decides, reads the record and installs it."""
    return [("survey", i), ("decide", i), ("read", i), ("install", i)]


def _settle(world: World, config: Config, root: str) -> World:
    last = world
    for last in fair_completion(world, config, max_rounds=FAIR_ROUNDS):
        if converged(last, root):
            return last
    raise AssertionError(describe(last))


def test_third_root_mid_rotation_is_deferred_then_reached() -> None:
    config = Config(max_participants=3, lag_reports=False, lag_monitor=False)
    world = initial_world(3, Policy())
    events: collections.Counter[str] = collections.Counter()
    world = _run(world, config, [("flip", "B"), ("survey", 0), ("decide", 0), ("flip", "C"),
                                 ("survey", 0), ("decide", 0)], events)
    assert events["rotation_started"] == 1 and events["rotation_deferred"] == 1
    assert world.record is not None and world.record.to_root == "B"
    for _ in range(2 * (MAX_PHASE + 1)):
        world = _run(world, config, [*_everyone(world, "read", "install"), ("survey", 0),
                                     ("decide", 0)], events)
        record = world.record
        assert record is not None
        if record.to_root == "C":
            break
        assert events["rotation_deferred"] > 1
    assert events["rotation_completed"] == 1, "C starts only once A->B has completed"
    assert world.record is not None and world.record.from_root == "B"
    assert converged(_settle(world, config, "C"), "C")


def test_rollback_reverses_the_rotation() -> None:
    config = Config(max_participants=2, lag_reports=False, lag_monitor=False)
    world = initial_world(2, Policy())
    events: collections.Counter[str] = collections.Counter()
    world = _run(world, config, [("flip", "B"), ("survey", 0), ("decide", 0),
                                 *_everyone(world, "read", "install"), ("survey", 0),
                                 ("decide", 0), ("flip", "A"), ("survey", 0), ("decide", 0)],
                 events)
    assert events["rotation_rolled_back"] == 1
    record = world.record
    assert record is not None and (record.from_root, record.to_root, record.phase) == ("B", "A", 1)
    assert converged(_settle(world, config, "A"), "A")


def test_slow_install_across_a_rollback_cannot_break_mtls() -> None:
    """The counterexample both searches found against the original barrier. n1 read A->B@2 and
    is slow to install it; the operator flips back; the keeper n0 rolls back to B->A@1 and
    advances to @2 and @3, each time counting n1's published ({A,B},A) (B->A phase 2) although
    n1 still acts on A->B; n0 ends on ({A},A), then n1 installs A->B@2, ({A,B},B): n0 does not
    trust B. Now the barrier waits until n1 reports material installed from the rollback
    record."""
    config = Config(max_participants=2, lag_reports=False, lag_monitor=False)
    world = _run(initial_world(2, Policy()), config, [
        ("flip", "B"), *_keep(), ("read", 1), ("install", 1), *_keep(), ("read", 1)])
    assert n1_reads(world) == ("A", "B", 2)
    world = _run(world, config, [("flip", "A"), *_keep(), *_keep(), *_keep()])
    record = world.record
    assert record is not None and (record.from_root, record.to_root, record.phase) == ("B", "A", 1)
    assert barrier(record, world.registry_map(), world.now, world.policy).waiting_on == ("n1",)
    world = _run(world, config, [("install", 1), *_keep()])
    assert converged(_settle(world, config, "A"), "A")


def n1_reads(world: World) -> tuple[str, str, int] | None:
    snapshot = world.participants[1].snapshot
    record = None if snapshot is None else snapshot.record
    return None if record is None else (record.from_root, record.to_root, record.phase)


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
    config = Config(max_participants=2, faults=True, lag_reports=False, lag_monitor=False)
    world = initial_world(2, Policy(expected_members=2))
    world = _run(world, config, [("crash", 0), ("restart", 0), ("flip", "B"), ("wipe", True),
                                 ("register", 0), ("acquire", 0), ("survey", 0), ("decide", 0)])
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
    config = Config(max_participants=2, lag_reports=True, lag_monitor=False,
                    decide_again_after_cas=True)
    world = initial_world(2, Policy())
    schedule: list[Action] = [
        ("crash", 0), ("expire", 0), ("restart", 0), ("acquire", 1), ("flip", "B"),
        ("survey", 1), ("decide", 1), ("read", 1), ("install", 1), ("report", 1), ("survey", 1),
        ("decide", 1), ("flip", "A"), ("survey", 1), ("decide", 1), ("read", 1), ("install", 1),
        ("report", 1), ("survey", 1), ("register", 0), ("read", 0), ("install", 0), ("decide", 1),
        ("decide", 1), ("read", 1), ("install", 1)]
    for action in schedule:
        assert action[0] == "flip" or can(world, config, action[0], action[1]), action
        world = apply(world, config, action)[0]
    assert safety_violations(world)
    served = world.participants[1].serving
    assert served is not None and served.material == stable_material("A")


def test_deciding_from_the_served_generation_is_unsafe() -> None:
    """The bug fixed in ba54e53 (``Config.decide_from``), as the exhaustive search finds it
    again. n0's monitor still serves A->B@1 ({A,B},A) when the operator flips back during A->B@2
    (installed, ({A,B},B)). Deciding from what is served, n0 installs B->A@2 ({A,B},A), then,
    once its monitor served the ({A,B},B) generation, B->A@1 ({A,B},B): a lower phase of the
    same record after a higher one. Its monitor serves the B->A@2 generation late (the newer
    one waits), n0 publishes it, the barrier counts it and moves B->A to @3 while the monitor
    is about to serve B->A@1, two phases behind. Deciding from the installed generation, the
    same steps are safe."""
    schedule: list[Action] = [
        ("flip", "B"), *_keep(), ("serve", 0, 0), ("report", 0), ("read", 1), ("install", 1),
        ("serve", 1, 0), ("report", 1), *_keep(), ("flip", "A"), *_keep(), ("serve", 0, 0),
        ("install", 0), ("serve", 0, 0), ("report", 0), ("serve", 0, 0), ("read", 1),
        ("install", 1), ("report", 1), ("survey", 0), ("decide", 0), ("survey", 0),
        ("decide", 0)]
    served = Config(max_participants=2, decide_from="served")
    world = initial_world(2, Policy())
    for action in schedule:
        world = apply(world, served, action)[0]
    assert safety_violations(world) == ["n0 serves ({A,B},B), not within one phase of "
                                        "r2:B->A@3"], describe(world)
    installed = dataclasses.replace(served, decide_from="installed")
    world = initial_world(2, Policy())
    for action in schedule:
        if action[0] == "flip" or action in enabled(world, installed):
            world = _run(world, installed, [action])
    record = world.record
    assert record is not None and (record.to_root, record.phase) == ("A", 2), describe(world)
    assert converged(_settle(world, installed, "A"), "A")


def test_a_generation_the_monitor_has_not_served_yet_keeps_the_barrier_waiting() -> None:
    """A counterexample the refined model found against the coordinator's publication rule.
    Consul loses its data during A->B@2: n0's monitor serves ({A,B},A), ({A,B},B) is installed.
    The record rebuilt for the operator's A is B->A@2, whose material n0 serves and now installs
    again, after the ({A,B},B) generation (B->A@1). n0 published the rebuilt record's id for
    what it served, since that was what the record asked; n1 then moved B->A to @3, installed
    ({A},A), and n0's monitor served ({A,B},B). Now a participant publishes the record it acted
    on only when the generation served is the latest installed: the barrier waits for n0."""
    config = Config(max_participants=2, faults=True)
    world = _run(initial_world(2, Policy(expected_members=2)), config, [
        ("flip", "B"), *_keep(), ("serve", 0, 0), ("report", 0), ("read", 1), ("install", 1),
        ("serve", 1, 0), ("report", 1), *_keep(), ("flip", "A"), ("wipe", True),
        ("register", 0), ("register", 1), ("acquire", 1), ("survey", 1), ("decide", 1),
        ("read", 0), ("install", 0), ("serve", 0, 0), ("read", 1), ("install", 1), ("report", 1),
        ("survey", 1), ("decide", 1)])
    record, n0 = world.record, world.participants[0]
    assert record is not None and (record.from_root, record.to_root, record.phase) == (
        "B", "A", 2), describe(world)
    assert n0.acted is not None and n0.acted.rotation_id == record.id
    published = world.entry("n0")
    assert published is not None and published.rotation_id != record.id, describe(world)
    assert barrier(record, world.registry_map(), world.now, world.policy).waiting_on == ("n0",)
    assert converged(_settle(world, config, "A"), "A")


def test_a_lost_record_is_rebuilt_around_material_not_served_yet() -> None:
    """A counterexample the refined model found against the coordinator. Starting from nothing,
    n0 rebuilt A->A@3 and installed ({A},A), not served yet; Consul lost its data while the
    operator asked for B. n0 registered again publishing nothing served, n1 (nothing installed)
    rebuilt B->B@3 from the empty registry and served ({B},B); n0's monitor served ({A},A).
    Now a participant whose monitor served nothing yet publishes its installed material
    (without a rotation id: the barrier does not count it), and the rebuilt record is A->B."""
    config = Config(max_participants=2, faults=True)
    world = _run(initial_world(2, Policy(expected_members=2), from_nothing=True), config, [
        ("register", 0), ("register", 1), ("acquire", 0), ("survey", 0), ("decide", 0),
        ("read", 0), ("install", 0), ("flip", "B"), ("wipe", True), ("register", 0),
        ("serve", 0, 0), ("register", 1), ("acquire", 1), ("survey", 1), ("decide", 1)])
    published = world.entry("n0")
    assert published is not None and published.signer == "A" and published.rotation_id is None
    record = world.record
    assert record is not None and (record.from_root, record.to_root, record.phase) == (
        "A", "B", 0), describe(world)
    assert converged(_settle(world, config, "B"), "B")


def _published(node_id: str, material: PhaseMaterial | None,
               rotation_id: str | None) -> NodeState:
    if material is None:
        return NodeState(node_id)
    return NodeState(node_id, trust=material.trust, signer=material.signer,
                     rotation_id=rotation_id)


# -- the barrier keeper --------------------------------------------------------------------------

def test_a_keeper_crash_mid_rotation_hands_over_and_the_rotation_completes() -> None:
    """The keeper n0 crashes right after moving A->B to phase 2, before anyone installed it.
    Until its session expires the lock stays with it and nobody decides (the rotation waits);
    then n1 takes the lock and completes the same rotation, n0 restarted serving nothing."""
    config = Config(max_participants=3)
    world = _run(initial_world(3, Policy()), config, [
        ("flip", "B"), *_keep(), ("serve", 0), ("report", 0),
        *_everyone(initial_world(3, Policy()), "read", "install", "serve", "report")[4:],
        ("survey", 0), ("decide", 0)])
    record = world.record
    assert record is not None and (record.to_root, record.phase) == ("B", 2), describe(world)
    world = _run(world, config, [("crash", 0)])
    assert world.keeper == "n0" and not any(p.keeper for p in world.participants)
    assert not [a for a in enabled(world, config) if a[0] in ("acquire", "survey", "decide")]
    world = _run(world, config, [("restart", 0), ("expire", 0)])
    assert world.keeper is None
    assert [a for a in enabled(world, config) if a[0] == "acquire"] == [
        ("acquire", 1), ("acquire", 2)], "n0 must register again first"
    world = _run(world, config, [("acquire", 1), *_everyone(world, "read", "install", "serve",
                                                            "report")[4:], *_keep(1)])
    assert world.record is not None and world.record.id == record.id
    assert world.record.phase == 3, describe(world)
    settled = _settle(world, config, "B")
    assert settled.keeper == "n1" and [p.keeper for p in settled.participants] == [
        False, True, False]
    assert settled.record is not None and settled.record.id == record.id


def test_a_stale_keeper_loses_its_check_and_set_and_nothing_unsafe_happens() -> None:
    """The keeper n0 reads the prefix during A->B (the operator wants B), then its session
    expires (a partition); it does not notice. n1 takes the free lock: both believe they are
    keeper. The operator flips back to A, n1 rolls the rotation back. n0 then decides on its
    old read: it would move A->B on, but its check-and-set on the old ModifyIndex fails and
    nothing changes. It steps down once it notices, registers again and the rollback
    completes. With no write in between, its check-and-set's index is still current, but the
    fence (check-session on the lock in the same transaction) refuses it; unfenced it would
    win, and that is safe too here (the barrier counted only what was reported for that very
    record). (The searches merge a stale keeper whose read can no longer win with one that
    stepped down: here it keeps believing, to show the failed check-and-set.)"""
    config = Config(max_participants=3, faults=True, merge_stale_keepers=False)
    start = _run(initial_world(3, Policy()), config, [
        ("flip", "B"), *_keep(), *_everyone(initial_world(3, Policy()), "read", "install",
                                             "serve", "report"), ("survey", 0)])
    stale = start.participants[0].view
    assert stale is not None and stale.plan is not None and stale.index == start.index
    assert stale.plan.to_root == "B" and stale.plan.phase == 2, describe(start)
    world = _run(start, config, [("expire_live", 0), ("acquire", 1)])
    assert world.keeper == "n1" and [p.keeper for p in world.participants] == [
        True, True, False], "a stale keeper and the keeper"
    assert can(world, config, "step_down", 0) and not can(world, config, "survey", 0)
    world = _run(world, config, [("flip", "A"), ("survey", 1), ("decide", 1)])
    rolled_back = world.record
    assert rolled_back is not None and rolled_back.to_root == "A", describe(world)
    after, _ = apply(world, config, ("decide", 0))
    assert after is world, "the stale keeper's check-and-set must fail"
    world = _run(world, config, [("step_down", 0), ("register", 0)])
    assert not world.participants[0].keeper
    assert converged(_settle(world, config, "A"), "A")
    # Nobody wrote since n0's read: the fence refuses its write all the same.
    world = _run(start, config, [("expire_live", 0), ("acquire", 1)])
    after, _ = apply(world, config, ("decide", 0))
    assert after is world, "the fence refuses a keeper whose session lost the lock"
    # Unfenced, its check-and-set wins, and the rotation goes on safely.
    unfenced = dataclasses.replace(config, fenced_writes=False)
    world = _run(world, unfenced, [("decide", 0)])
    assert world.record is not None and world.record.phase == 2
    world = _run(world, unfenced, [("survey", 1), ("decide", 1), ("read", 1), ("install", 1)])
    assert converged(_settle(world, unfenced, "B"), "B")


def test_only_a_keeper_decides() -> None:
    """Whoever does not believe it holds the lock never reads the prefix nor decides, however
    current its read of the record; a keeper decides only on its own read of the prefix."""
    config = Config(max_participants=3)
    world = _run(initial_world(3, Policy(), keeper=None), config,
                 [("flip", "B"), *_everyone(initial_world(3, Policy()), "read")])
    for step in ("survey", "decide"):
        assert not [a for a in enabled(world, config) if a[0] == step]
    world = _run(world, config, [("acquire", 2)])
    assert not [a for a in enabled(world, config) if a[0] == "acquire"], "one lock"
    assert not can(world, config, "decide", 2), "not before it read the prefix"
    world = _run(world, config, [*_keep(2)])
    assert [a for a in enabled(world, config) if a[0] in ("survey", "decide")] == [
        ("survey", 2), ("decide", 2)]
    world = _run(world, config, [*_everyone(world, "read", "install", "serve", "report")])
    for _ in range(FAIR_ROUNDS):
        world = fair_round(world, config)
        assert [p.keeper for p in world.participants] == [False, False, True], "one keeper"
    assert converged(world, "B")


def test_a_stale_keepers_write_across_a_consul_data_loss_needs_a_fence() -> None:
    """A counterexample to the keeper scheme with check-and-set alone. From nothing, the keeper
    n0 reads the prefix while the ``rotation`` key is absent (ModifyIndex 0, both registered,
    nothing served, operator on A: it would create A stable), and pauses before its write (a GC
    or VM pause right after checking the lock in that read). Its session expires; n1 takes the
    lock, creates A stable and rotates A->B to phase 2 (n0 registered again meanwhile, its
    keeper thread still paused: the barrier counts it). Consul loses its data: the key is
    absent again, so n0's check-and-set on index 0 succeeds and writes A stable from a read
    made before the rotation; n1 installs ({A},A) while n0 serves ({A,B},B). A write in a
    transaction that also checks the lock is held by the writer's session (``fenced_writes``,
    the product's default) fails instead: sessions do not survive the data loss. Unfenced
    (``fenced_writes=False``, broken on purpose) the proof catches it."""
    schedule: list[Action] = [
        ("register", 0), ("register", 1), ("acquire", 0), ("survey", 0), ("expire_live", 0),
        ("acquire", 1), ("register", 0), ("survey", 1), ("decide", 1),
        *_everyone(initial_world(2, Policy()), "read", "install"), ("flip", "B"),
        *[step for _ in range(3) for step in (
            ("survey", 1), ("decide", 1), *_everyone(initial_world(2, Policy()), "read",
                                                      "install"))],
        ("wipe", True), ("decide", 0), ("register", 0), ("register", 1), ("read", 1)]
    for fenced in (False, True):
        config = Config(max_participants=2, faults=True, lag_reports=False, lag_monitor=False,
                        fenced_writes=fenced)
        world = _run(initial_world(2, Policy(expected_members=2), from_nothing=True), config,
                     schedule)
        n0, n1 = world.participants
        assert n0.serving is not None and n0.serving.material == PhaseMaterial(
            frozenset({"A", "B"}), "B"), describe(world)
        if fenced:
            assert world.record is None and n1.snapshot is not None
            assert n1.snapshot.record is None, "the stale write failed"
            assert converged(_settle(world, config, "B"), "B")
        else:
            record = world.record
            assert record is not None and (record.from_root, record.to_root, record.phase) == (
                "A", "A", MAX_PHASE), describe(world)
            world, _ = apply(world, config, ("install", 1))
            assert safety_violations(world) == [
                "n0 ({A,B},B) and n1 ({A},A) are incompatible"], describe(world)


# -- root identifiers ------------------------------------------------------------------------------

def test_issuer_identifiers_rotate_like_mount_names() -> None:
    """Roots are opaque strings to the state machine: the issuers ``pki:root-a`` and
    ``pki:root-b`` of one mount rotate A->B->A through the same phases as two mounts, with no
    change to the proofs (they quantify over any root names)."""
    a, b = parse_root_name("pki:root-a"), parse_root_name("pki:root-b")
    config = Config(max_participants=3, lag_reports=False, lag_monitor=False)
    events: collections.Counter[str] = collections.Counter()
    world = _run(initial_world(3, Policy(), root=a), config,
                 [("flip", b), ("survey", 0), ("decide", 0)], events)
    assert world.record is not None and (world.record.from_root, world.record.to_root) == (a, b)
    assert world.record.material(1) == PhaseMaterial(frozenset({a, b}), a)
    world = _settle(world, config, b)
    assert converged(world, b)
    world = _run(world, config, [("flip", a), ("survey", 0), ("decide", 0)], events)
    assert converged(_settle(world, config, a), a)
    assert events["rotation_started"] == 2


@pytest.mark.parametrize("raw", ["pki_root_b", "pki:root-b", "pki:root.2026", "pki/int:r_1",
                                 "pki:5d2f3e8a-1c2b-4f3e-9a8b-7c6d5e4f3a2b"])
def test_root_identifier_grammar_accepts(raw: str) -> None:
    assert parse_root_name(f" {raw}\n".encode()) == raw
    mount, issuer = split_root(raw)
    assert f"{mount}:{issuer}" == raw if issuer is not None else mount == raw


@pytest.mark.parametrize(("raw", "why"), [
    ("pki:", "not a valid root"), (":root-b", "not a valid root"),
    ("pki:root-b:x", "not a valid root"), ("pki:root b", "not a valid root"),
    ("pki:-root", "not a valid root"), ("pki:root-", "not a valid root"),
    ("pki:default", "names no fixed issuer"), ("pki:" + "r" * 130, "not a valid root")])
def test_root_identifier_grammar_refuses(raw: str, why: str) -> None:
    with pytest.raises(RotationInputError, match=why):
        parse_root_name(raw)


def test_the_model_installs_by_the_coordinators_own_rule() -> None:
    """The model does not copy the participant's install rule: it calls the function the
    coordinator calls, so the two cannot drift apart."""
    import sidecar.coordinator
    import sidecar.rotation
    import tests.rotation_model

    assert tests.rotation_model.install_step is sidecar.rotation.install_step
    assert sidecar.coordinator.install_step is sidecar.rotation.install_step
    record = RotationRecord("r1", "A", "B", 1, 0.0, 0.0)
    # A participant a phase ahead (after a rollback) stays; one behind moves to the record's.
    assert sidecar.rotation.install_step(record, record.material(2)) == (2, record.material(2))
    assert sidecar.rotation.install_step(record, record.material(0)) == (1, record.material(1))
    assert sidecar.rotation.install_step(record, None) == (1, record.material(1))


def test_a_restarted_keeper_resumes_its_session_and_lock_mid_rotation() -> None:
    """The usual restart (``coordinator.Registration._resume_or_create``,
    ``BarrierKeeper._try_acquire``): the keeper's auth manager restarts at phase 2 keeping its
    volume; the new process renews the session saved there, so its report and the lock stay
    put (no hand-over, nobody else may take the lock), publishes what its monitor serves with
    the id the manifest carries (its last decision went with the old process) and takes the
    lock back as "resumed"; the rotation completes."""
    config = Config(max_participants=3, allow_resume=True)
    world = _run(initial_world(3, Policy()), config, [("flip", "B")])
    while world.record is None or world.record.phase < 2:
        world = fair_round(world, config)
    world = _run(world, config, [("resume", 0)])
    keeper = world.participants[0]
    assert world.keeper == "n0" and not keeper.keeper and keeper.session
    assert keeper.acted is None and keeper.serving is not None
    assert world.entry("n0") is not None, "the session and its report survive the restart"
    for i in (1, 2):
        assert not can(world, config, "acquire", i), "the lock is still n0's session's"
    assert can(world, config, "acquire", 0), "the new process resumes the lock"
    world = _run(world, config, [("acquire", 0)])
    assert world.participants[0].keeper and world.keeper == "n0"
    assert converged(_settle(world, config, "B"), "B")


def test_a_pre_data_loss_read_wins_a_reused_index_without_the_fence() -> None:
    """Consul counts its indices from 1 again after losing its data, so a check-and-set on a
    ModifyIndex read before the loss can match a record written after it (not only index 0).
    An unfenced keeper (a sidecar of the previous version during an upgrade) that read at
    phase 1 of A->B and paused across the loss overwrites the rebuilt record with its old
    plan; the fenced write of the product is refused (its session died with the data)."""
    config = Config(max_participants=2, faults=True, lag_reports=False, lag_monitor=False,
                    merge_stale_keepers=False)
    world = _run(initial_world(2, Policy(expected_members=2)), config, [
        ("flip", "B"), ("survey", 0), ("decide", 0), *_everyone(initial_world(2, Policy()),
                                                                 "read", "install"),
        ("survey", 0)])
    stale = world.participants[0].view
    assert stale is not None and stale.index == world.index > 0 and stale.plan is not None
    world = _run(world, config, [("wipe", True), ("register", 1), ("register", 0),
                                 ("acquire", 1), ("survey", 1), ("decide", 1)])
    assert world.record is not None and world.index > 0 and world.epoch == 1
    assert world.participants[0].keeper and world.keeper == "n1", "n0 has not noticed yet"
    for fenced in (True, False):
        after, _ = apply(world, dataclasses.replace(config, fenced_writes=fenced), ("decide", 0))
        assert (after is world) == fenced, describe(after)
    after, _ = apply(world, dataclasses.replace(config, reuse_indices=False,
                                                fenced_writes=False), ("decide", 0))
    assert after is world, "without index reuse only index 0 could match"
