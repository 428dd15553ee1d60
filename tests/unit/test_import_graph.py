"""No module of ``app/``, ``exporter/``, ``alerts/`` and ``dashboards/`` imports itself through others.

``lint-imports``' ``acyclic_siblings`` contract looks for circles among the children of each of the four packages;
a circle that runs through two of them (``alerts.backtest`` -> ``dashboards.panels`` -> ``alerts.backtest``) has no
common parent there, and the layers contract of ``alerts/`` and ``dashboards/`` binds only the modules it lists.
This test reads the whole module graph as import-linter does (grimp: module-level, lazy and TYPE_CHECKING
imports alike) and fails on any circle, whichever packages it crosses.
"""

from __future__ import annotations

import grimp

PACKAGES = ("app", "exporter", "alerts", "dashboards")


def import_circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module (or a module importing itself),
    each sorted: every set of modules that import one another round a circle."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        imported = graph.find_modules_directly_imported_by(module)
        for other in sorted(imported):
            if other not in index:
                visit(other)
                lowest[module] = min(lowest[module], lowest[other])
            elif other in stack:
                lowest[module] = min(lowest[module], index[other])
        if lowest[module] == index[module]:
            component = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(component) > 1 or module in imported:
                circles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_through_others_across_the_packages() -> None:
    circles = import_circles(grimp.build_graph(*PACKAGES, cache_dir=None))
    assert circles == [], f"import circles: {circles}"


def test_a_circle_across_two_packages_is_found() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in (("alerts.backtest", "dashboards.panels"), ("dashboards.panels", "alerts.backtest"),
                               ("dashboards.panels", "alerts.platform")):
        graph.add_import(importer=importer, imported=imported)
    assert import_circles(graph) == [["alerts.backtest", "dashboards.panels"]]
