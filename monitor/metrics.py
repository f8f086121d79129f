"""Prometheus metrics of the TLS monitor, on a registry of its own.

Every reload result is created at 0 when the process starts, so ``increase()`` in the shipped
alerts sees the first refusal and a healthy monitor's scrape shows every series they name.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RELOAD_RESULTS = ("ok", "refused_predicted", "refused_by_kafka", "verify_failed",
                  "action_failed", "restart_deferred", "incomplete_generation", "error")


class MonitorMetrics:
    """Every metric the monitor exports (names documented in docs/monitoring.md)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reloads = Counter("tls_monitor_reloads_total", "Reloads by result", ["result"],
                               registry=r)
        self.reload_latency = Histogram(
            "tls_monitor_reload_to_verified_seconds",
            "From noticing a generation to verifying it is served", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.served_matches = Gauge("tls_monitor_served_matches_disk",
                                    "1 if every listener serves the on-disk serial",
                                    registry=r)
        self.last_verified = Gauge("tls_monitor_last_verified_timestamp_seconds",
                                   "When a reload was last verified (unix time)", registry=r)
        self.applied_generation = Gauge("tls_monitor_applied_generation",
                                        "Generation last verified as served", registry=r)
        since = Gauge("tls_monitor_seconds_since_last_verified",
                      "Seconds since the last verified reload", registry=r)
        since.set_function(self._seconds_since)
        self.ready = Gauge("tls_monitor_ready",
                           "1 once a generation was verified as served (what /readyz says)",
                           registry=r)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result=result)
        waiting = Gauge("tls_monitor_restart_waiting_seconds",
                        "Seconds this broker has waited for the cluster's restart lock "
                        "(0 when not waiting)", registry=r)
        waiting.set_function(self._seconds_waiting)

        self._last_verified_at: float | None = None
        self._waiting_since: float | None = None

    def restart_waiting(self, waiting: bool) -> None:
        """This broker waits (or stops waiting) for the cluster's restart lock."""
        if not waiting:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = time.time()

    def _seconds_waiting(self) -> float:
        return 0.0 if self._waiting_since is None else time.time() - self._waiting_since

    def mark_verified(self, generation: int, at: float | None = None, *,
                      served: bool = True) -> None:
        """Record that ``generation`` was verified as served at ``at`` (unix time, default
        now); ``served`` says whether every listener still serves it."""
        self._last_verified_at = time.time() if at is None else at
        self.last_verified.set(self._last_verified_at)
        self.applied_generation.set(generation)
        self.served_matches.set(1 if served else 0)

    def _seconds_since(self) -> float:
        if self._last_verified_at is None:
            return float("nan")
        return time.time() - self._last_verified_at
