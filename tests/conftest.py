"""Shared fixtures: the Vault and Consul targets (doubles, or real servers when
VAULT_ADDR/VAULT_TOKEN or CONSUL_HTTP_ADDR are set); the figures the proofs record."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.consul_setup", "tests.vault_setup"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every ``record_property("figure", line)`` of the run (also with ``-q``)."""
    figures = [str(value) for reports in terminalreporter.stats.values() for report in reports
               if getattr(report, "when", None) == "call"
               for name, value in getattr(report, "user_properties", ()) if name == "figure"]
    if figures:
        terminalreporter.section("figures")
        for line in figures:
            terminalreporter.write_line(line)
