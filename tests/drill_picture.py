"""The drill as a picture: ``timeline.svg`` in the kept directory.

One row per participant, over seconds since the first rotation record the drill saw (the
``+s`` of the report's timeline), and one row on top for the record itself. A participant's
row shows what it *served*: a bar from each ``reload_verified`` (or ``served_confirmed``) of
its monitor to the next, coloured by the material (which root signs its certificate, which
roots it trusts) and labelled with the phase in that generation's manifest. A generation's
signer, trust and phase come from its ``certificate_issued`` event in the auth manager's log
(the init run's log for generation 1); the monitor's ``generation_detected`` fills in a
generation the auth manager logged in a life that was cut short by kill -9.

Marks on a row: the auth manager wrote a generation (grey triangle), the monitor sent the
reload (black tick), a reload failed (orange cross), a handshake from this participant
failed (red X). Operator actions are dotted vertical lines, faults red: a line or a shaded
span across every row, or a hatched span on the one row it concerns. Every fault's label
starts with the fault's name (``--fault``).

Text stays text in the SVG (``svg.fonttype`` none), so the labels can be searched and tested.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen: no display needed
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sidecar.rotation import RotationRecord
from tests.drill import Mark, Result, short_root

RECORD_ROW = "rotation record"
#: Material colours in order of first appearance (colour-blind safe, Okabe-Ito).
PALETTE = ("#0072B2", "#56B4E9", "#009E73", "#E69F00", "#CC79A7", "#F0E442", "#D55E00",
           "#999999")
FAILED = "#D00000"


@dataclasses.dataclass(frozen=True)
class Material:
    signer: str
    trust: tuple[str, ...]

    def describe(self) -> str:
        return f"signs {short_root(self.signer)}, trusts {'+'.join(map(short_root, self.trust))}"


@dataclasses.dataclass(frozen=True)
class Generation:
    material: Material
    rotation_id: str | None = None  # from the auth manager's log only
    phase: int | None = None


@dataclasses.dataclass
class Row:
    """What one participant's logs say, in drill time (unix seconds)."""

    name: str
    served: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # from, gen
    issued: list[float] = dataclasses.field(default_factory=list)
    reloads: list[float] = dataclasses.field(default_factory=list)
    reload_failures: list[float] = dataclasses.field(default_factory=list)
    generations: dict[int, Generation] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Window:
    """The drawn span of time (unix seconds), and where zero is."""

    t0: float
    start: float
    end: float

    def bar(self, axes: Any, y: float, at: float, until: float, colour: str, text: str,
            fontsize: float, text_colour: str = "black") -> None:
        """A bar from ``at`` to ``until``, labelled if the label fits in what is visible."""
        axes.barh(y, until - at, left=at - self.t0, height=0.6, color=colour,
                  edgecolor="white")
        visible = max(at, self.start), min(until, self.end)
        if text and visible[1] - visible[0] > 0.0075 * len(text) * (self.end - self.start):
            axes.text(sum(visible) / 2 - self.t0, y, text, ha="center", va="center",
                      fontsize=fontsize, color=text_colour)


def draw_timeline(result: Result, path: Path) -> Path:
    """Write the picture of ``result`` (its logs are under ``result.base``) to ``path``."""
    rows = [read_row(result.base, p.name) for p in result.participants]
    t0 = result.timeline[0][0] if result.timeline else min(
        (start for row in rows for start, _ in row.served), default=0.0)
    end = max([at for at, _ in result.timeline] + [m.until or m.at for m in result.marks]
              + [at for row in rows for at, _ in row.served] + [t0 + 1.0]) + 0.5
    # From just before the first participant serves: the set-up before it is empty rows.
    start = min([at for row in rows for at, _ in row.served[:1]] + [end - 1.0]) - 0.3
    window = Window(t0, start, end)
    routes = {record.id: _route(record) for _, record in result.timeline}

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "kafka-pki-drill",
                         "font.size": 9})
    labels = [RECORD_ROW] + [row.name for row in rows]
    figure, axes = plt.subplots(figsize=(12, 1.6 + 0.5 * len(labels)))
    y = {label: len(labels) - 1 - i for i, label in enumerate(labels)}  # record on top
    colours: dict[Material, str] = {}

    _draw_record(axes, result, window, y[RECORD_ROW])
    for row in rows:
        _draw_row(axes, row, window, y[row.name], colours, routes)
    for at, src, _dst, _reason in result.failures:
        if src in y:
            axes.plot(at - t0, y[src], marker="X", color=FAILED, markersize=9, zorder=5)
    _draw_marks(axes, result.marks, t0, y, len(labels))

    axes.set_xlim(start - t0, end - t0)
    axes.set_ylim(-0.6, len(labels) - 0.4)
    axes.set_yticks([y[label] for label in labels], labels)
    axes.set_xlabel("seconds since the first rotation record (as in the report's timeline)")
    axes.grid(axis="x", color="#dddddd", linewidth=0.5)
    axes.set_axisbelow(True)
    faults = ", ".join(result.faults) or "none"
    axes.set_title(f"drill: fault {faults}; handshakes attempted {result.attempts}, "
                   f"failed {result.failed_handshakes}", loc="left", pad=40)
    axes.legend(handles=_legend(colours), loc="upper left", bbox_to_anchor=(1.005, 1.0),
                frameon=False)
    figure.tight_layout()
    # No date in the SVG: a committed picture changes only when the drill does.
    figure.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(figure)
    return path


def read_row(base: Path, name: str) -> Row:
    """A participant's row from ``<name>-once.log``, ``-auth.log`` and ``-monitor.log``."""
    row = Row(name)
    for event in _events(base / f"{name}-once.log") + _events(base / f"{name}-auth.log"):
        if event["event"] == "certificate_issued":
            row.issued.append(_time(event))
            row.generations[int(event["generation"])] = Generation(
                _material(event), event.get("rotation_id"), event.get("phase"))
    for event in _events(base / f"{name}-monitor.log"):
        kind = event["event"]
        if kind == "generation_detected":
            row.generations.setdefault(int(event["generation"]), Generation(_material(event)))
        elif kind in ("reload_verified", "served_confirmed"):
            row.served.append((_time(event), int(event["generation"])))
        elif kind == "reload_requested":
            row.reloads.append(_time(event))
        elif kind == "reload_failed":
            row.reload_failures.append(_time(event))
    row.served.sort()
    return row


def _route(record: RotationRecord) -> str:
    return f"{short_root(record.from_root)}→{short_root(record.to_root)}"


def _draw_record(axes: Any, result: Result, window: Window, y: float) -> None:
    events = result.timeline
    for i, (at, record) in enumerate(events):
        until = events[i + 1][0] if i + 1 < len(events) else window.end
        text = f"{short_root(record.to_root)} stable" if record.stable \
            else f"{_route(record)} p{record.phase}"
        # Greys: the record's phases are not materials (those have the colours).
        shade = "#f7f7f7" if record.stable else ("#e4e4e4", "#cfcfcf", "#b9b9b9")[
            min(max(record.phase, 1), 3) - 1]
        window.bar(axes, y, at, until, shade, text, 8)


def _draw_row(axes: Any, row: Row, window: Window, y: float, colours: dict[Material, str],
              routes: dict[str, str]) -> None:
    t0 = window.t0
    for i, (at, number) in enumerate(row.served):
        until = row.served[i + 1][0] if i + 1 < len(row.served) else window.end
        generation = row.generations.get(number)
        if generation is None:  # logged by nobody alive to log it: served, but unknown
            window.bar(axes, y, at, until, "#cccccc", "", 7)
            continue
        colour = colours.setdefault(generation.material, PALETTE[len(colours) % len(PALETTE)])
        # The rotation and phase the generation was issued for (its manifest's).
        route = routes.get(generation.rotation_id or "", "")
        text = f"{route} p{generation.phase}".strip() if generation.phase is not None else ""
        window.bar(axes, y, at, until, colour, text, 7,
                   "white" if colour == PALETTE[0] else "black")
    for at in row.issued:
        axes.plot(at - t0, y + 0.42, marker="v", color="#777777", markersize=5, zorder=4)
    for at in row.reloads:
        axes.plot(at - t0, y - 0.42, marker="|", color="black", markersize=8, zorder=4)
    for at in row.reload_failures:
        axes.plot(at - t0, y - 0.42, marker="x", color="#E69F00", markersize=7,
                  markeredgewidth=2, zorder=4)


def _draw_marks(axes: Any, marks: list[Mark], t0: float, y: dict[str, int],
                height: int) -> None:
    levels = 0  # labels of drill-wide marks go above the rows, staggered so they do not meet
    for mark in sorted(marks, key=lambda m: m.at):
        colour = "#444444" if mark.kind == "operator" else FAILED
        style = ":" if mark.kind == "operator" else "--"
        x = mark.at - t0
        if mark.who is None:
            if mark.until is None:
                axes.axvline(x, color=colour, linestyle=style, linewidth=1, zorder=3)
            else:
                axes.axvspan(x, mark.until - t0, color=colour, alpha=0.12, zorder=0)
            axes.annotate(mark.label, (x, height - 0.4), xytext=(2, 4 + 11 * (levels % 3)),
                          textcoords="offset points", color=colour, fontsize=8,
                          annotation_clip=False)
            levels += 1
        elif mark.who in y:
            row_y = y[mark.who]
            until = mark.until if mark.until is not None else mark.at + 0.05
            axes.barh(row_y, until - mark.at, left=x, height=0.8, fill=False, hatch="///",
                      edgecolor=colour, linewidth=1, zorder=3)
            axes.text(x, row_y + 0.3, mark.label, color=colour, fontsize=7, va="bottom",
                      zorder=6, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5,
                                      "alpha": 0.85})


def _legend(colours: dict[Material, str]) -> list[Any]:
    handles: list[Any] = [Patch(color=c, label=m.describe()) for m, c in colours.items()]
    handles += [
        Line2D([], [], marker="v", color="#777777", linestyle="", label="generation written"),
        Line2D([], [], marker="|", color="black", linestyle="", markersize=8,
               label="reload sent (broker)"),
        Line2D([], [], marker="x", color="#E69F00", linestyle="", markeredgewidth=2,
               label="reload failed"),
        Line2D([], [], marker="X", color=FAILED, linestyle="", markersize=9,
               label="failed handshake (from this row)"),
        Line2D([], [], color="#444444", linestyle=":", label="operator action"),
        Line2D([], [], color=FAILED, linestyle="--", label="fault"),
    ]
    return handles


def _events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:  # a line cut short by kill -9
                continue
            if "event" in event and "timestamp" in event:
                events.append(event)
    return events


def _time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def _material(event: dict[str, Any]) -> Material:
    return Material(str(event["signer"]), tuple(event["trust"]))
