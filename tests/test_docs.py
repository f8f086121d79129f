"""The docs stay true: generated reference tables, the test command, the site's build."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from sidecar.docs import fill_tables, tables

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"


def test_configuration_reference_matches_the_code() -> None:
    page = CONFIGURATION.read_text()
    for name, table in tables().items():
        block = f"<!-- config:{name} -->\n{table}\n<!-- /config:{name} -->"
        assert block in page, f"stale {name} table: python -m sidecar.docs --write {CONFIGURATION}"


def test_the_build_hook_fills_stale_tables_and_adds_none() -> None:
    stale = "x\n<!-- config:tls-monitor -->\n| old |\n<!-- /config:tls-monitor -->\ny\n"
    filled = fill_tables(stale)
    assert tables()["tls-monitor"] in filled and "| old |" not in filled
    assert "config:auth-manager" not in filled
    assert fill_tables("no tables here\n") == "no tables here\n"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    setup = readme.split("## Set-up: the two commands", 1)[1].split("```sh\n", 1)[1]
    commands = [line.split("#")[0].strip() for line in setup.split("```", 1)[0].splitlines()]
    assert "make test" in commands
    assert ci.rstrip().splitlines()[-1] == "make test"


def test_readme_is_short_and_links_only_to_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for target in re.findall(r"\]\((docs/[^)#]*)", readme):
        assert (ROOT / target).exists(), target


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    nav = {page for entry in config["nav"] for page in entry.values()}
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    assert nav == pages
