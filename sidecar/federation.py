"""The keeper's reads across the WAN (see :mod:`sidecar.domain`): one blocking query per other
datacenter, in threads of their own, while this participant holds its datacenter's lock.

The primary's keeper watches every other datacenter's ``summary``; any other keeper watches the
primary's ``rotation``. Each watch keeps its latest read (None: unknown, after a failed forward:
the WAN is cut or the datacenter has no servers) and calls ``on_change`` whenever that changes,
so the keeper decides again (or mirrors again) on a fresh read of its own prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sidecar.consul_store import ConsulError, ConsulStore, KeyRead, watch
from sidecar.domain import SUMMARY, DcSummary, Domain, parse_summary
from sidecar.metrics import AuthManagerMetrics
from sidecar.rotation import RotationInputError

ROTATION = "rotation"


class RemoteWatches:
    """Blocking queries on the other datacenters' keys (``?dc=``), one thread each."""

    def __init__(self, *, store: ConsulStore, domain: Domain, watch_wait: float,
                 on_change: Callable[[ConsulStore], None], log: Any,
                 metrics: AuthManagerMetrics, stopped: Callable[[], bool]) -> None:
        self.store = store
        self.domain = domain
        self.watch_wait = watch_wait
        self.on_change = on_change
        self.log = log
        self.metrics = metrics
        self.stopped = stopped
        self._lock = threading.Lock()
        self._latest: dict[str, KeyRead | None] = {}

    def start(self) -> None:
        """Watch the primary's record, or (in the primary) every other datacenter's summary."""
        if self.domain.is_primary:
            targets = [(dc, SUMMARY) for dc in self.domain.others]
        else:
            targets = [(self.domain.primary, ROTATION)]
        for dc, key in targets:
            threading.Thread(target=self._run, args=(dc, key), daemon=True,
                             name=f"keeper-wan-{dc}").start()

    def primary_record(self) -> KeyRead | None:
        """The primary's ``rotation`` as last read (None: not read, or the WAN failed)."""
        with self._lock:
            return self._latest.get(self.domain.primary)

    def summaries(self) -> dict[str, DcSummary | None]:
        """Every other datacenter's summary as last read (None: unknown or malformed)."""
        out: dict[str, DcSummary | None] = {}
        with self._lock:
            reads = dict(self._latest)
        for dc in self.domain.others:
            read = reads.get(dc)
            try:
                out[dc] = parse_summary(read.entry.value if read and read.entry else None)
            except RotationInputError as exc:
                self.log.error("datacenter_summary_invalid", datacenter=dc, error=str(exc))
                out[dc] = None
        return out

    def _run(self, dc: str, key: str) -> None:
        try:
            self._watch(dc, key)
        except Exception as exc:  # a dead watch would stall the domain's rotation unseen
            self.log.exception("keeper_wan_watch_failed", datacenter=dc, key=key,
                               error=str(exc))

    def _watch(self, dc: str, key: str) -> None:
        remote = self.store.clone(datacenter=dc)
        local = self.store.clone()

        def fetch(index: int, wait: float | None) -> KeyRead:
            read = remote.get(key, index, wait)
            with self._lock:
                was = self._latest.get(dc)
                self._latest[dc] = read
            # First read, back after a failure (the content may be the same), or a change.
            if was is None or was.content() != read.content():
                self._changed(local)
            return read

        def on_error(exc: ConsulError, delay: float) -> None:
            with self._lock:
                was = self._latest.pop(dc, None)
            self.metrics.consul_errors.labels(reason=exc.reason).inc()
            self.log.warning("keeper_wan_failed", datacenter=dc, key=key, error=str(exc),
                             retry_in=round(delay, 2))
            if was is not None:
                self._changed(local)

        watch(fetch, self.watch_wait, lambda _read: None, on_error,
              self.stopped, on_wake=self.metrics.watch_wakeups.labels(key=f"wan:{key}").inc)

    def _changed(self, local: ConsulStore) -> None:
        if self.stopped():
            return
        try:
            self.on_change(local)
        except ConsulError as exc:
            self.metrics.consul_errors.labels(reason=exc.reason).inc()
            self.log.warning("keeper_consul_failed", error=str(exc))
