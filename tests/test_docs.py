"""The README stays true: generated reference tables and the test command match the code."""

from __future__ import annotations

from pathlib import Path

from sidecar.docs import tables

ROOT = Path(__file__).resolve().parent.parent


def test_readme_configuration_reference_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, table in tables().items():
        block = f"<!-- config:{name} -->\n{table}\n<!-- /config:{name} -->"
        assert block in readme, f"stale {name} table: python -m sidecar.docs --write README.md"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme.split("## How it works")[0]
    assert ci.rstrip().splitlines()[-1] == "make test"
