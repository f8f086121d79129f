"""The benchmarks run and print their figures (no timing is asserted)."""

from __future__ import annotations

import re

import pytest

from tests import bench


def test_bundle_benchmark_prints_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["bundle", "--runs", "2", "--keytool-runs", "1"])
    out = capsys.readouterr().out
    assert re.search(r"^ratio_vs_keytool=\d+(\.\d+)?$", out, re.MULTILINE), out
    assert "pki-auth-manager (all formats)" in out and "keytool+openssl" in out
