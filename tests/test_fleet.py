"""The fleet simulator, small: traffic per participant stays flat, and a killed keeper is
replaced. The 1,000-participant figures are a benchmark (docs/benchmarks.md), not a test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
LAST_LINE = re.compile(r"^participants=(\d+) rotation_seconds=([\d.]+) "
                       r"entries_per_participant=([\d.]+) wakeups_per_participant=([\d.]+)$")


def simulate(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    figures = tmp_path / "figures.json"
    # Against the Consul double, or a real Consul when CONSUL_HTTP_ADDR is set.
    done = subprocess.run([sys.executable, "-m", "tests.fleet", "--settle", "0.5",
                           "--json", str(figures), *args], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(figures.read_text()), done.stdout


@pytest.mark.timeout(600)
def test_fifty_participants_read_and_wake_a_bounded_amount(tmp_path: Path) -> None:
    figures, out = simulate(tmp_path, "--participants", "50", "--workers", "2")
    last = LAST_LINE.match(out.strip().splitlines()[-1])
    assert last is not None, out[-500:]
    assert int(last.group(1)) == 50
    for direction in ("there", "back"):
        d = figures[direction]
        # The previous scheme returned about N entries per report round to every participant
        # (1,093 per participant per rotation at N=10); the keeper's reads are the only O(N).
        assert d["entries_mean"] <= 50, d
        assert d["entries_max_follower"] <= 20, d
        assert d["wakeups_mean"] <= 20 and d["wakeups_max"] <= 40, d
        assert [phase for phase, _ in d["phases"]] == [1, 2, 3], d
        assert d["unseen"] == 0, d
    assert figures["keeper_acquisitions"] == 1, figures["handovers"]
    assert figures["errors"] == 0, out[-2000:]


@pytest.mark.timeout(600)
def test_a_killed_keeper_is_replaced_and_the_rotation_completes(tmp_path: Path) -> None:
    figures, out = simulate(tmp_path, "--participants", "12", "--kill-keeper",
                            "--session-ttl", "10")
    assert any("killed keeper" in note for note in figures["notes"]), out[-2000:]
    took = [line for line in figures["handovers"] if "took the keeper lock" in line]
    assert len(took) >= 2, figures["handovers"]
    assert [phase for phase, _ in figures["there"]["phases"]] == [1, 2, 3]


@pytest.mark.timeout(600)
def test_two_datacenters_cross_the_wan_only_through_their_keepers(tmp_path: Path) -> None:
    if os.environ.get("CONSUL_HTTP_ADDR") and not os.environ.get("CONSUL_HTTP_ADDR_DC2"):
        pytest.skip("a real federation needs CONSUL_HTTP_ADDR_DC2 (dc2's agent) too")
    # The size: each datacenter's keeper reads its reports at a spacing that grows
    # with its participants, so a small fleet's mean sits near the bound (30: about 48).
    figures, out = simulate(tmp_path, "--participants", "300", "--datacenters", "2")
    last = out.strip().splitlines()[-1]
    assert LAST_LINE.match(last.rsplit(" wan_requests_per_participant=", 1)[0]), last
    for direction in ("there", "back"):
        d = figures[direction]
        assert d["converged"] and [phase for phase, _ in d["phases"]] == [1, 2, 3], d
        assert d["entries_mean"] <= 50 and d["wakeups_mean"] <= 20, d
        # Two keepers watch one key each across the WAN: a few requests per phase in all.
        assert 0 < d["wan_requests"] <= 60 and d["wan_requests_mean"] <= 2, d
    assert figures["errors"] == 0, out[-2000:]


def test_the_counting_store_counts_a_product_whose_call_takes_no_acl_rule() -> None:
    """``--product`` runs older revisions (a7bebfd, the previous scheme) whose ConsulStore._call
    has no ``need`` parameter: the counting store passes what that signature takes."""
    from tests.fleet import Traffic, counting_store_class

    class Old:
        def _call(self, what: str, call: Any, timeout: float | None = None) -> Any:
            return (what, call(), timeout)

    class New:
        def _call(self, what: str, call: Any, timeout: float | None = None,
                  need: str | None = None) -> Any:
            return (what, call(), timeout, need)

    for base, expected in ((Old, ("read", 1, 2.0)), (New, ("read", 1, 2.0, "key read"))):
        store = counting_store_class(base)()
        store.traffic = Traffic()
        assert store._call("read", lambda: 1, 2.0, "key read") == expected
        assert store.traffic.requests == 1
