"""``kafka-pki status`` for a rotation domain over several datacenters: progress per datacenter.

Each datacenter's prefix is read through the local agent with ``?dc=`` (an operator command: a
read of every report is fine here). A datacenter the WAN does not reach is shown as such.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sidecar.consul_store import ConsulError, ConsulStore, Snapshot
from sidecar.domain import SUMMARY, parse_summary
from sidecar.rotation import RotationInputError


def datacenters_status(store: ConsulStore, datacenters: Iterable[str], now: float,
                       status_data: Callable[[Snapshot, float], dict[str, Any]]
                       ) -> list[dict[str, Any]]:
    """One row per datacenter (the primary first): its copy of the record, its keeper's
    summary, and how many of its participants serve the current phase."""
    rows = []
    for k, dc in enumerate(datacenters):
        row: dict[str, Any] = {"datacenter": dc, "primary": k == 0}
        try:
            snapshot = store.clone(datacenter=dc).read()
        except ConsulError as exc:
            rows.append({**row, "error": str(exc)})
            continue
        data = status_data(snapshot, now)
        try:
            summary = parse_summary(snapshot.value(SUMMARY))
        except RotationInputError as exc:
            summary, row["summary_error"] = None, str(exc)
        participants = data["participants"]
        rows.append({**row, "error": None, "rotation": data["rotation"],
                     "keeper": (data["keeper"] or {}).get("node_id"),
                     "participants": len(participants),
                     "waiting": sum(1 for p in participants if p["waited_on"]),
                     "barrier_holds": None if summary is None else summary.holds})
    return rows


def render_datacenters(rows: Iterable[Mapping[str, Any]]) -> str:
    """A line per datacenter."""
    lines = ["datacenters  :"]
    for row in rows:
        name = row["datacenter"] + (" (primary)" if row["primary"] else "")
        if row.get("error"):
            lines.append(f"  {name}: UNREACHABLE ({row['error']})")
            continue
        rotation = row["rotation"]
        where = "no record" if rotation is None else (
            f"{rotation['id']} phase {rotation['phase']}"
            + (" stable" if rotation["stable"] else ""))
        done = row["participants"] - row["waiting"]
        holds = {None: "no summary", True: "barrier holds", False: "barrier waits"}[
            row["barrier_holds"]]
        lines.append(f"  {name}: {where}; {done}/{row['participants']} participants at the "
                     f"phase; keeper {row['keeper'] or 'none'}; {holds}")
    return "\n".join(lines)
