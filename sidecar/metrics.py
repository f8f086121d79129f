"""Prometheus metrics of the auth manager, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AuthManagerMetrics:
    """Every metric the auth manager exports (names documented in the README)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.not_after = Gauge("pki_certificate_not_after_timestamp_seconds",
                               "Expiry of the certificate on the volume (unix time)", registry=r)
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
        self.errors = Counter("pki_errors_total", "Errors by kind", ["kind"], registry=r)

    def observe_vault(self, operation: str, seconds: float, outcome: str) -> None:
        label = operation.split(" with ")[0].split(" of ")[0].replace(" ", "_")
        self.vault_latency.labels(operation=label, outcome=outcome).observe(seconds)
