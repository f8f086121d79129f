"""MkDocs hook: fill the configuration reference's tables from the code at build time.

Every ``<!-- config:NAME -->`` ... ``<!-- /config:NAME -->`` block of a page is replaced with the
table ``sidecar.docs`` generates from the settings dataclasses and the operator CLI's parser,
so the published reference cannot drift from the code (tests/test_docs.py keeps the copy in the
Markdown source current too, for readers of the source).
"""

from __future__ import annotations

from typing import Any

from sidecar.docs import fill_tables


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """The page with its generated tables brought up to date."""
    return fill_tables(markdown) if "<!-- config:" in markdown else markdown
