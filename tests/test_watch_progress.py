"""What ``kafka-pki status --watch`` / ``rotate --wait`` compute and draw (pure: no Consul)."""

from __future__ import annotations

import io
import json

from rich.console import Console

from sidecar.rotation import NodeState, RotationRecord
from sidecar.watch import Output
from sidecar.watch_progress import as_json, change_key, progress, summary
from sidecar.watch_view import render

A, B = "pki_root_a", "pki_root_b"
AB = frozenset({A, B})


def node(node_id: str, trust: frozenset[str], signer: str | None, rotation_id: str | None,
         updated_at: float | None = 100.0, role: str = "broker") -> NodeState:
    return NodeState(node_id, role=role, trust=trust, signer=signer, rotation_id=rotation_id,
                     updated_at=updated_at)


RECORD = RotationRecord("r2", A, B, 2, started_at=50.0, phase_since=90.0)
NODES = {
    "kafka-1": node("kafka-1", AB, B, "r2"),                  # phase 2: acknowledged
    "kafka-2": node("kafka-2", AB, A, "r2", updated_at=95.0),  # phase 1, quiet for 15 s
    "client-1": node("client-1", AB, A, "r2", updated_at=99.0, role="client"),  # phase 1
    "client-2": node("client-2", AB, B, "old", role="client"),  # not from this record
    "new-1": node("new-1", frozenset(), None, None, updated_at=None),  # never reported
}


def test_counts_per_phase_keeper_and_the_slowest_first() -> None:
    p = progress(RECORD, NODES, {"node_id": "kafka-1"}, now=110.0)
    assert p.state == "rotating" and p.phase == 2 and p.total == 5 and p.keeper == "kafka-1"
    assert [(c.phase, c.done) for c in p.phases] == [(1, 3), (2, 1), (3, 0)]
    assert p.phases[1].label == f"trust {A} + {B}, signed by {B}"
    assert p.phases[2].label == f"trust {B}, signed by {B}"
    assert p.seconds_in_phase == 20.0 and p.seconds_since_start == 60.0
    assert p.waiting == 4
    # furthest behind first (nothing of this rotation), then the longest silent
    assert [b.node_id for b in p.slowest] == ["new-1", "client-2", "kafka-2", "client-1"]
    assert {b.seconds_behind for b in p.slowest} == {20.0}
    assert p.slowest[2].last_report_seconds == 15.0 and p.slowest[0].last_report_seconds is None
    line = summary(p)
    assert line.startswith(f"{A} -> {B}: phase 2 of 3; 1/5 acknowledged phase 2; 20.0s in "
                           "phase; keeper kafka-1; slowest: new-1 (20.0s)")
    data = json.loads(json.dumps(as_json(p)))
    assert data["phases"][0] == {"phase": 1, "label": f"trust {A} + {B}, signed by {A}",
                                 "done": 3, "total": 5}
    assert data["slowest"][2]["node_id"] == "kafka-2"


def test_states_and_when_a_wait_is_over() -> None:
    assert progress(None, {}, None, 0.0).state == "no-record"
    stable_a = RotationRecord("r1", A, A, 3, 0.0, 0.0, completed_at=5.0)
    starting = progress(stable_a, NODES, None, 10.0, target=B)
    assert starting.state == "starting" and not starting.complete
    assert "waiting for the keeper to start the rotation" in summary(starting)
    assert progress(stable_a, NODES, None, 10.0).complete, "status --watch: the current one"
    done = RotationRecord("r2", A, B, 3, 0.0, 0.0, completed_at=9.0)
    assert progress(done, NODES, None, 10.0, target=B).complete
    assert not progress(RECORD, NODES, None, 10.0, target=B).complete


def test_plain_output_prints_a_line_per_change_not_per_tick() -> None:
    stream = io.StringIO()
    with Output(as_json_lines=False, stream=stream) as out:
        assert not out.live_mode, "a StringIO is no terminal"
        out(progress(RECORD, NODES, None, 110.0))
        out(progress(RECORD, NODES, None, 111.0))  # only the time moved
        acked = dict(NODES, **{"kafka-2": node("kafka-2", AB, B, "r2")})
        out(progress(RECORD, acked, None, 112.0))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "1/5 acknowledged" in lines[0] and "2/5 acknowledged" in lines[1]
    assert change_key(progress(RECORD, NODES, None, 1.0)) == change_key(
        progress(RECORD, NODES, None, 99.0))


def test_json_output_is_one_object_per_update() -> None:
    stream = io.StringIO()
    with Output(as_json_lines=True, stream=stream) as out:
        out(progress(RECORD, NODES, None, 110.0))
        out(progress(RECORD, NODES, None, 111.0))
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [o["seconds_in_phase"] for o in objects] == [20.0, 21.0]


def test_the_terminal_picture() -> None:
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    console.print(render(progress(RECORD, NODES, {"node_id": "kafka-1"}, 110.0)))
    text = console.export_text()
    assert f"{A} -> {B}: phase 2 of 3" in text
    rows = [line for line in text.splitlines() if "phase " in line and "/5" in line]
    assert [row.split()[-1] for row in rows] == ["3/5", "1/5", "0/5"]
    assert rows[1].startswith("> phase 2"), "the current phase is marked"
    assert "━" in rows[0], "a progress bar"
    assert "keeper        kafka-1" in text
    assert "waiting on 4 participant(s); slowest:" in text
    kafka_2 = next(line for line in text.splitlines() if line.strip().startswith("kafka-2"))
    assert kafka_2.split()[1:] == ["broker", "phase", "1", "20.0s", "15.0s", "ago"]
    settling = RotationRecord("r0", A, A, 3, 0.0, 0.0)
    console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
    console.print(render(progress(settling, NODES, None, 5.0)))
    text = console.export_text()
    assert f"settling on {A}" in text and f"serving {A}" in text and "phase 1" not in text
