"""``posegen docs build``: the reference tables of ``docs/`` written from their one declaration, so they cannot
drift: the settings table of ``docs/configuration.md`` from the settings' declarations (``app/settings.py``) and
the metrics table of ``docs/observability.md`` from the metric catalogue (``app/metric_catalogue.py``).

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in its page; the prose around
it is written by hand. ``tests/unit/test_docs.py`` fails when a page's table differs from what this renders.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from app.metric_catalogue import render_metrics_table
from app.settings import render_configuration_table

END = "<!-- end generated -->"
# page (relative to docs/) -> (the table's marker name, its renderer)
GENERATED: dict[str, tuple[str, Callable[[], str]]] = {
    "configuration.md": ("settings table", render_configuration_table),
    "observability.md": ("metrics table", render_metrics_table),
}


class DocsError(Exception):
    """A page lacks its generated table's markers (the one-line message names the page and the markers)."""


def rendered_page(text: str, page: str, name: str, table: str) -> str:
    """``text`` with the part between ``<!-- generated: name -->`` and the next end marker replaced by
    ``table``. Raises :class:`DocsError` when the markers are missing."""
    begin = f"<!-- generated: {name} -->"
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise DocsError(f"docs/{page}: no '{begin}' ... '{END}' markers around the {name}")
    return pattern.sub(lambda _: f"{begin}\n{table.rstrip()}\n{END}", text, count=1)


def stale_pages(docs_dir: Path) -> list[str]:
    """The pages (relative names) whose generated table differs from what :data:`GENERATED` renders now.
    Raises :class:`DocsError` when a page or its markers are missing."""
    stale = []
    for page, (name, render) in GENERATED.items():
        if not (docs_dir / page).is_file():
            raise DocsError(f"{docs_dir / page}: no such page (the {name} is generated into it)")
        text = (docs_dir / page).read_text()
        if rendered_page(text, page, name, render()) != text:
            stale.append(page)
    return stale


def build_docs(docs_dir: Path) -> list[Path]:
    """Rewrite the generated tables of ``docs_dir``'s pages; the pages written (those that changed)."""
    written = []
    for page in stale_pages(docs_dir):
        name, render = GENERATED[page]
        path = docs_dir / page
        path.write_text(rendered_page(path.read_text(), page, name, render()))
        written.append(path)
    return written
