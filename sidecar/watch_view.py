"""The terminal picture of a :class:`~sidecar.watch_progress.Progress`, drawn with rich.

Pure: builds a renderable, draws nothing (``sidecar.watch`` owns the terminal).
"""

from __future__ import annotations

import dataclasses

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from sidecar.watch_progress import Progress, headline

BAR_WIDTH = 30


def render(p: Progress) -> RenderableType:
    """Headline, one bar per phase (acknowledged/total), the keeper, time in phase, and the
    slowest participants with how long they have been behind."""
    style = "bold green" if p.complete else "bold"
    parts: list[RenderableType] = [Text(headline(p), style=style)]
    if p.state == "rotating" or (p.complete and p.from_root != p.to_root):
        table = Table.grid(padding=(0, 1))
        # A record from a root to itself (a new cluster settling) has one step: serving it.
        rows = p.phases if p.from_root != p.to_root else [
            dataclasses.replace(p.phases[-1], label=f"serving {p.to_root}")]
        for count in rows:
            marker = ">" if count.phase == p.phase and not p.complete else " "
            table.add_row(f"{marker} phase {count.phase}", count.label,
                          ProgressBar(total=max(count.total, 1), completed=count.done,
                                      width=BAR_WIDTH),
                          f"{count.done}/{count.total}")
        parts.append(table)
    facts = Table.grid(padding=(0, 1))
    facts.add_row("keeper", p.keeper or "none (the barrier is not evaluated until a "
                                        "participant takes the lock)")
    if p.rotation_id is not None:
        facts.add_row("time in phase", f"{p.seconds_in_phase:.1f}s "
                                       f"(rotation {p.rotation_id}, "
                                       f"{p.seconds_since_start:.1f}s since it started)")
    parts.append(facts)
    if p.slowest:
        slow = Table(title=f"waiting on {p.waiting} participant(s); slowest:",
                     title_justify="left", box=None, padding=(0, 1))
        for column in ("participant", "role", "serves", "behind", "last report"):
            slow.add_column(column)
        for b in p.slowest:
            slow.add_row(b.node_id, b.role, "-" if b.phase is None else f"phase {b.phase}",
                         f"{b.seconds_behind:.1f}s",
                         "never" if b.last_report_seconds is None
                         else f"{b.last_report_seconds:.1f}s ago")
        parts.append(slow)
    return Group(*parts)
