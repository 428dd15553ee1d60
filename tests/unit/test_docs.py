"""The README and docs/ stay short where they must, link only to what exists, and list the metrics the code
promises.

The reference tables each have a test against the code: routes (tests/test_http_contract.py), settings
(tests/test_settings.py), alerts (tests/test_alerts.py), the security table (tests/unit/test_security_table.py)
and the metrics table (here); tests/test_readme.py runs every command block.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.alerts import CONTRACT_METRICS, HISTOGRAMS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_BYTES = 10 * 1024
# [text](target): the target up to its closing parenthesis (no spaces, as written in our docs).
LINK = re.compile(r"\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (?P<title>.+?)\s*#*$")
FENCE = re.compile(r"^```")
GENERATED_METRICS = re.compile(r"<!-- generated: metrics table -->\n(?P<table>.*?)<!-- end generated -->", re.DOTALL)


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


def documented_metrics() -> set[str]:
    """The metric names of docs/observability.md's metrics table (the first cell of each row)."""
    match = GENERATED_METRICS.search((ROOT / "docs" / "observability.md").read_text())
    assert match, "docs/observability.md: the metrics table must sit between its generated markers"
    rows = [row for row in match["table"].splitlines() if row.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_the_metrics_table_lists_every_contract_metric() -> None:
    families = {name for name in CONTRACT_METRICS
                if not any(name == f"{histogram}_{suffix}" for histogram in HISTOGRAMS
                           for suffix in ("bucket", "sum", "count"))}
    missing = families - documented_metrics()
    assert not missing, f"docs/observability.md's metrics table lacks contract metrics: {sorted(missing)}"


def test_every_metric_of_the_table_is_promised_or_defined_in_the_code() -> None:
    """A row names a contract metric or a metric the code defines (a counter's name without ``_total``, as
    prometheus-client takes it): a renamed or removed metric cannot stay in the table."""
    source = "\n".join(path.read_text() for folder in ("app", "exporter") for path in (ROOT / folder).rglob("*.py"))
    defined = set(re.findall(r"\"(pose_\w+)\"", source))
    unknown = {name for name in documented_metrics() - CONTRACT_METRICS
               if name not in defined and name.removesuffix("_total") not in defined}
    assert not unknown, f"docs/observability.md's metrics table names metrics nobody defines: {sorted(unknown)}"
