"""docs/layout.md's Layout says what the tree holds: every path it names exists, every package and every module of
the top levels (``app/``, ``exporter/``, ``alerts/``, ``dashboards/``) has its line, and every module an import
contract of ``pyproject.toml`` names is described, with the contracts counted."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ROOT / "docs" / "layout.md"
PACKAGES = ("app", "exporter", "alerts", "dashboards")
# A code span naming a file or folder of the tree (not a class, a command or a setting).
PATH = re.compile(r"[\w./-]+(?:\.(?:py|yml|toml|sql|md)|/)")


def layout_section() -> str:
    """The Layout section of docs/layout.md (to the next second-level heading)."""
    return LAYOUT.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def bullets() -> list[str]:
    """The Layout's list items, each joined with its continuation lines."""
    items: list[str] = []
    for line in layout_section().splitlines():
        if line.startswith("- "):
            items.append(line[2:])
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return items


def named_paths() -> dict[str, list[str]]:
    """{path the Layout names, relative to the clone: the spans that name it}, and ``"?"``: the spans that name
    nothing. A span resolves from the clone's folder or from a folder its own list item names."""
    named: dict[str, list[str]] = {}
    prose = layout_section().split("\n- ", 1)[0] + "\n" + layout_section().rsplit("\n\n", 1)[-1]
    for text in [prose, *bullets()]:
        spans = [span for span in re.findall(r"`([^`]+)`", text) if PATH.fullmatch(span)]
        folders = [ROOT, *(ROOT / span for span in spans if span.endswith("/") and (ROOT / span).is_dir())]
        for span in spans:
            found = next((base / span for base in folders if (base / span).exists()), None)
            key = str(found.relative_to(ROOT)) if found else "?"
            named.setdefault(key, []).append(span)
    return named


def test_every_path_the_layout_names_exists() -> None:
    named = named_paths()
    assert len(named) > 40, named
    assert "?" not in named, f"docs/layout.md names paths that do not exist: {named.get('?')}"


def test_every_package_has_its_line_and_every_top_level_module_is_named() -> None:
    leading = {match[1] for item in bullets() if (match := re.match(r"`([\w/]+/)`", item))}
    packages = {f"{path.parent.relative_to(ROOT)}/" for package in PACKAGES
                for path in (ROOT / package).glob("**/__init__.py") if "build" not in path.parts}
    assert packages <= leading, f"docs/layout.md's Layout has no line for {sorted(packages - leading)}"
    modules = {str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).glob("*.py")
               if path.name != "__init__.py" or package == "dashboards"}
    missing = modules - set(named_paths())
    assert not missing, f"docs/layout.md's Layout does not name {sorted(missing)}"


def test_every_import_contract_is_described_and_counted() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"{len(contracts)} contracts in all" in " ".join(layout_section().split())
    named = set(named_paths())
    undescribed = set()
    for contract in contracts:
        modules = [*contract.get("source_modules", []), *contract.get("forbidden_modules", []),
                   *contract.get("ancestors", []), *contract.get("layers", []),
                   *(side for rule in contract.get("ignore_imports", []) for side in rule.split(" -> "))]
        for module in (name.strip() for entry in modules for name in entry.split("|")):
            path = module.removesuffix(".**").replace(".", "/")
            if path not in named and f"{path}.py" not in named:
                undescribed.add(module)
    assert not undescribed, f"docs/layout.md does not describe {sorted(undescribed)}, which contracts name"


def test_test_files_share_helpers_through_tests_support_only() -> None:
    """A helper two test files need lives in tests/support/ (or a module of tests/ that is not a test file):
    a test file importing another runs that file's module-level code and ties the two together."""
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "tests").rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.match(r"\s*(from|import) tests(\.\w+)*\.test_\w+", line)]
    assert not offenders, f"test files imported by other tests: {offenders}"
