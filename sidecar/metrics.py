"""Prometheus metrics of the auth manager, on a registry of its own.

Labelled series the shipped alerts (deploy/monitoring/alerts.yaml) watch are created at 0 when
the process starts: ``increase()`` then sees the very first failure, and a scrape of a healthy
sidecar already shows every series an alert or the dashboard names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Renewal results created at start: success and the permanent refusals, Vault's and
#: Consul's (the others appear with their first occurrence).
RENEWAL_RESULTS = ("ok", "error_permanent_invalid_request", "error_permanent_forbidden",
                   "error_permanent_not_found", "error_permanent_consul_forbidden")
#: ConsulError reasons (sidecar.consul_store) that mean Consul cannot be used.
CONSUL_REASONS = ("unavailable", "timeout", "forbidden", "error")


class AuthManagerMetrics:
    """Every metric the auth manager exports (names documented in docs/monitoring.md)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.not_after = Gauge("pki_certificate_not_after_timestamp_seconds",
                               "Expiry of the certificate on the volume (unix time)", registry=r)
        self.not_before = Gauge("pki_certificate_not_before_timestamp_seconds",
                                "Start of the validity of the certificate on the volume (unix "
                                "time)", registry=r)
        self.renewals = Counter("pki_renewals_total",
                                "Certificate renewals by result", ["result"], registry=r)
        self.last_success = Gauge("pki_last_success_timestamp_seconds",
                                  "When material was last written successfully", registry=r)
        self.generation = Gauge("pki_generation", "Generation number on the volume", registry=r)
        self.ready = Gauge("pki_ready", "1 if valid material is on the volume", registry=r)
        self.vault_latency = Histogram(
            "pki_vault_request_duration_seconds", "Vault request latency",
            ["operation", "outcome"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.consul_errors = Counter("pki_consul_errors_total", "Consul request failures",
                                     ["reason"], registry=r)
        self.watch_latency = Histogram(
            "pki_consul_watch_latency_seconds",
            "Seconds from a rotation phase change to this participant seeing it", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.cas_conflicts = Counter("pki_rotation_cas_conflicts_total",
                                     "Rotation record writes lost to another participant",
                                     registry=r)
        self.rotation_input_errors = Counter(
            "pki_rotation_input_errors_total", "Malformed or unknown Consul values ignored",
            ["key"], registry=r)
        self.rotation_phase = Gauge("pki_rotation_phase", "Phase of the rotation record",
                                    registry=r)
        self.rotation_info = Gauge("pki_rotation_info", "Current rotation (labels)",
                                   ["rotation_id", "from_root", "to_root"], registry=r)
        self.rotation_phase_seconds = Gauge("pki_rotation_phase_seconds",
                                            "Seconds the record has been in its phase",
                                            registry=r)
        self.rotation_waiting = Gauge(
            "pki_rotation_waiting_participants",
            "Participants the barrier waits on (keeper only; 0 on the others)", registry=r)
        self.rotation_served_phase = Gauge(
            "pki_rotation_served_phase",
            "Phase of the current rotation record this participant verifiably serves (-1: none "
            "yet, or no record)", registry=r)
        self.rotation_min_dwell = Gauge("pki_rotation_min_dwell_seconds",
                                        "The min_dwell setting: seconds every phase lasts at "
                                        "least", registry=r)
        self.rotation_stable = Gauge("pki_rotation_stable",
                                     "1 when the rotation has completed", registry=r)
        self.keeper = Gauge("pki_rotation_keeper",
                            "1 while this participant holds the cluster's barrier-keeper lock",
                            registry=r)
        self.keeper_acquisitions = Counter(
            "pki_rotation_keeper_acquisitions_total",
            "Times this participant became the barrier keeper", registry=r)
        self.keeper_participants = Gauge(
            "pki_rotation_registered_participants",
            "Registered participants the keeper sees (0 on the others)", registry=r)
        self.watch_wakeups = Counter(
            "pki_consul_watch_wakeups_total",
            "Consul blocking queries that returned (changed or not), by watched key",
            ["key"], registry=r)
        self.errors = Counter("pki_errors_total", "Errors by kind", ["kind"], registry=r)
        self.rotation_served_phase.set(-1)
        for result in RENEWAL_RESULTS:
            self.renewals.labels(result=result)
        for reason in CONSUL_REASONS:
            self.consul_errors.labels(reason=reason)
        for key in ("rotation", "keeper"):  # every participant watches these two keys
            self.watch_wakeups.labels(key=key)

    def observe_vault(self, operation: str, seconds: float, outcome: str) -> None:
        label = operation.split(" with ")[0].split(" of ")[0].replace(" ", "_")
        self.vault_latency.labels(operation=label, outcome=outcome).observe(seconds)
