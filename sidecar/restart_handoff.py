"""The restart hand-off on the volume: the monitor asks, the auth manager grants.

A KRaft broker's Raft client keeps the roots it loaded at start (KAFKA-20025), so when the
trust set gains a root the broker restarts once. Restarts of one cluster's brokers must never
overlap (two of three voters down is no quorum), whatever the timing. The auth manager, the
only process that talks to Consul, holds the cluster's restart lock for its monitor:

    <volume>/restart-request.json   the monitor: this broker must restart (generation)
    <volume>/restart-grant.json     the auth manager: it holds the lock (session)

The monitor restarts only while a grant is on the volume, and removes its request once the
broker is back and verified; the auth manager then releases the lock and removes the grant.
Each file has one writer, and each is written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from sidecar import layout
from sidecar.atomic_file import replace_file


@dataclasses.dataclass(frozen=True)
class RestartRequest:
    """The monitor needs its broker restarted to apply ``generation``."""

    generation: int
    requested_at: str


@dataclasses.dataclass(frozen=True)
class RestartGrant:
    """The auth manager holds the cluster's restart lock with ``session``."""

    session: str
    node_id: str
    granted_at: str


def _write(path: Path, data: dict[str, Any]) -> None:
    replace_file(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")


def _read(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if absent. A malformed file counts as absent: the
    writer replaces it whole, so a half-written one cannot exist."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_request(volume: Path) -> RestartRequest | None:
    data = _read(layout.restart_request_path(volume))
    if data is None or not isinstance(data.get("generation"), int):
        return None
    return RestartRequest(data["generation"], str(data.get("requested_at", "")))


def read_grant(volume: Path) -> RestartGrant | None:
    data = _read(layout.restart_grant_path(volume))
    if data is None or not isinstance(data.get("session"), str):
        return None
    return RestartGrant(data["session"], str(data.get("node_id", "")),
                        str(data.get("granted_at", "")))


def write_request(volume: Path, request: RestartRequest) -> None:
    _write(layout.restart_request_path(volume), dataclasses.asdict(request))


def write_grant(volume: Path, grant: RestartGrant) -> None:
    _write(layout.restart_grant_path(volume), dataclasses.asdict(grant))


def remove_request(volume: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        layout.restart_request_path(volume).unlink()


def remove_grant(volume: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        layout.restart_grant_path(volume).unlink()
