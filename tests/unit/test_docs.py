"""The README and docs/ stay short where they must, link only to what exists, and show the tables the code
declares.

The reference tables each have a test against the code: the security table (tests/unit/test_security_table.py),
every other table (routes and alerts among them: tests/unit/test_reference_tables.py) and the Layout
(tests/unit/test_layout.py); the settings and metrics tables are generated from the code (``posegen docs build``,
checked here); tests/test_readme.py runs every command block.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.docs_tables import GENERATED, DocsError, build_docs, stale_pages

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_BYTES = 10 * 1024
# [text](target): the target up to its closing parenthesis (no spaces, as written in our docs).
LINK = re.compile(r"\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (?P<title>.+?)\s*#*$")
FENCE = re.compile(r"^```")


def _prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside its fenced blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text``: lower case, punctuation dropped, spaces as hyphens,
    a repeated one suffixed ``-1``, ``-2``..."""
    anchors: set[str] = set()
    for line in _prose_lines(text):
        heading = HEADING.match(line)
        if heading is None:
            continue
        base = re.sub(r"[^\w\- ]", "", heading["title"].lower()).replace(" ", "-")
        anchor, repeat = base, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{base}-{repeat}"
        anchors.add(anchor)
    return anchors


def test_the_readme_is_at_most_10_kib() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move the reference into docs/"


def test_every_relative_link_of_the_readme_and_docs_reaches_a_file_and_its_heading() -> None:
    assert DOCS, "docs/ has no pages"
    broken = []
    for page in [README, *DOCS]:
        for line in _prose_lines(page.read_text()):
            for match in LINK.finditer(line):
                target = match["target"]
                if re.match(r"[a-z]+:", target):
                    continue  # an absolute URL
                path, _, anchor = target.partition("#")
                destination = (page.parent / path).resolve() if path else page
                if not destination.exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                elif anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination.read_text()):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_generated_tables_are_what_the_code_declares() -> None:
    """The settings table (docs/configuration.md) and the metrics table (docs/observability.md) are rendered
    from the settings' declarations and the metric catalogue (app/docs_tables.py): a page edited by hand, or
    code changed without ``posegen docs build``, fails here."""
    stale = stale_pages(ROOT / "docs")
    assert not stale, f"docs/ tables differ from the code: {stale}; run `posegen docs build`"


def test_docs_build_rewrites_a_drifted_table_and_refuses_a_page_without_markers(tmp_path: Path) -> None:
    for page in GENERATED:
        (tmp_path / page).write_text((ROOT / "docs" / page).read_text())
    page = tmp_path / "observability.md"
    page.write_text(page.read_text().replace("| `pose_queue_depth` |", "| `pose_queue_depht` |"))
    assert stale_pages(tmp_path) == ["observability.md"]
    assert build_docs(tmp_path) == [page] and not stale_pages(tmp_path)
    page.write_text("# Observability\n\nno markers\n")
    with pytest.raises(DocsError, match="docs/observability.md: no '<!-- generated: metrics table -->'"):
        build_docs(tmp_path)
    with pytest.raises(DocsError, match="missing/configuration.md: no such page"):
        build_docs(tmp_path / "missing")
