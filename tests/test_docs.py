"""The docs stay true: generated reference tables, the test command, the site's build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


def test_the_built_site_has_the_tables_of_the_code_even_from_a_stale_page(tmp_path: Path) -> None:
    """The build hook fills the tables in: a stale copy in the page cannot reach the site."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "configuration.md"
    stale = re.sub(r"(<!-- config:(\S+) -->\n).*?(\n<!-- /config:\2 -->)",
                   r"\1| stale |\3", page.read_text(), flags=re.S)
    assert "PKI_SUBJECT" not in stale and stale.count("| stale |") == len(tables())
    page.write_text(stale)
    mkdocs = Path(sys.executable).parent / "mkdocs"
    built = subprocess.run([str(mkdocs), "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, check=False)
    assert built.returncode == 0, built.stderr
    html = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "| stale |" not in html and "<td>stale</td>" not in html
    for env in ("PKI_SUBJECT", "MONITOR_VOLUME_DIR", "CONSUL_HTTP_TOKEN_FILE"):
        assert f"<code>{env}</code>" in html, env
