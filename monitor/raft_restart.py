"""Restart a KRaft broker for its Raft client: whether it is needed, and the exclusion it waits
for. The rules are ``restart_gate``'s; this module reads the volume, the pid file and Kafka's
Metadata, and runs the restart the reloader hands it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from cryptography import x509

from monitor import restart_gate
from monitor.config import MonitorConfig
from monitor.stores import load_stores
from sidecar import layout, restart_handoff
from sidecar.manifest import Manifest
from sidecar.material import MaterialError
from sidecar.volume import Volume, VolumeError, read_generation

#: What the running broker's Raft client holds: its pid, and the roots it loaded at start.
RaftState = tuple[str | None, frozenset[str]]


class RestartDeferred(Exception):
    """Restarting this broker now could take the cluster's quorum down: retried later."""


class RestartWaiting(Exception):
    """The broker must restart, and waits for its auth manager to hold the restart lock."""


class RaftRestarter:
    """Decides and performs the restart of one broker for its Raft client."""

    def __init__(self, config: MonitorConfig, volume: Volume, log: Any,
                 now: Callable[[], dt.datetime], password: Callable[[], str | None]) -> None:
        self.config = config
        self.volume = volume
        self.log = log
        self.now = now
        self.password = password
        self._waiting_for: int | None = None  # the generation a restart_waiting was logged for

    def apply(self, manifest: Manifest, trusted: tuple[x509.Certificate, ...],
              alive: Callable[[], set[int]], restart: Callable[[], str]
              ) -> tuple[str, RaftState]:
        """Restart the broker (``restart``, which also verifies it is back) if its Raft client
        lacks a root of ``trusted``: only while the auth manager holds the cluster's restart lock
        (RestartWaiting otherwise) and ``alive`` shows every broker (RestartDeferred otherwise).
        Returns the acknowledgement's target and what the Raft client holds afterwards."""
        config = self.config
        wanted = restart_gate.root_fingerprints(trusted)
        pid = self.broker_pid()
        loaded = self.loaded_roots(pid)
        if loaded is not None and not restart_gate.raft_restart_needed(loaded, wanted):
            return "trusted", (pid, loaded)
        root = self.volume.root
        if restart_handoff.read_grant(root) is None:
            request = restart_handoff.read_request(root)
            if request is None or request.generation != manifest.generation:
                restart_handoff.write_request(root, restart_handoff.RestartRequest(
                    manifest.generation, self.now().isoformat()))
            if self._waiting_for != manifest.generation:
                self._waiting_for = manifest.generation
                self.log.info("restart_waiting", generation=manifest.generation,
                              reason="the trust set gains a root the Raft client did not load",
                              action="waiting for the cluster's restart lock (pki-auth-manager)")
            raise RestartWaiting("waiting for the cluster's restart lock")
        seen = alive()
        if not restart_gate.cluster_whole(seen, config.restart_cluster_size):
            raise RestartDeferred(restart_gate.describe_missing(seen,
                                                                config.restart_cluster_size))
        self.log.info("restarting", generation=manifest.generation,
                      reason="the Raft client lacks a root", action=config.reload_action)
        done = restart()
        return done, (self.broker_pid(), wanted)

    def broker_pid(self) -> str | None:
        """The broker's pid from its pid file (None without one, or unreadable)."""
        path = self.config.reload_pid_file
        if path is None:
            return None
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    def loaded_roots(self, pid: str | None) -> frozenset[str] | None:
        """The roots the running broker's Raft client loaded at start: recorded in the ack for
        this pid, else those of the generation that was current when the pid file was written
        (when the process started); None if neither is known."""
        ack = self.volume.read_ack()
        if ack is not None and ack.raft_roots is not None and ack.raft_pid == pid:
            return frozenset(ack.raft_roots)
        path = self.config.reload_pid_file
        if pid is None or path is None:
            return None
        try:
            started = path.stat().st_mtime
        except OSError:
            return None
        for directory in sorted(layout.generations_dir(self.volume.root).glob("[0-9]*"),
                                reverse=True):
            try:
                if _created(read_generation(directory)) > started:
                    continue
                stores = load_stores(directory, self.config.keystore_type, self.password())
            except (VolumeError, MaterialError):
                return None
            return restart_gate.root_fingerprints(stores.trusted)
        return None


def _created(manifest: Manifest) -> float:
    try:
        return dt.datetime.fromisoformat(manifest.created_at).timestamp()
    except ValueError:
        return 0.0
