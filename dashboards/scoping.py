"""Fit the built dashboards to a shared Prometheus (``alerts/platform.yml``): one environment at a time, and the
exporter's replicas counted once.

Every dashboard gets a template variable per grouping label (``cluster``, ``namespace``: each lists the values
our processes report, narrowed by the ones before it; "All" matches series without the label too), and every
query (panel targets, annotations, the other variables' ``label_values``) selects ``label=~"$label"`` for each.
In panel targets a series of the exporter's domain families (:data:`EXPORTER_FAMILIES`, which every replica
reports alike, read from the same PostgreSQL and Redis) is selected with the exporter job's matchers and
reduced to one copy, ``max without (instance, pod)``, before any sum; the API's and workers' series are
distinct processes and stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

from alerts.platform import Platform

# Metric families the exporter reports from PostgreSQL and Redis (exporter/collectors.py), the fleet's counters and
# histograms kept in Redis among them: the same numbers on every replica. What describes the replica itself (its
# health, its build, the servers its own connections reach) is per replica. tests/unit/test_dashboard_scoping.py
# ties this set to the metric catalogue's exporter entries.
EXPORTER_FAMILIES = frozenset({
    "pose_credits_refunded", "pose_credits_spent", "pose_errors", "pose_generation_attempts_exhausted",
    "pose_generation_duration_seconds", "pose_generation_oldest_running_age_seconds", "pose_generation_requeues",
    "pose_generation_time_limit_seconds", "pose_generations", "pose_generations_in_progress", "pose_intake_paused",
    "pose_job_failures", "pose_last_finished_generation_timestamp_seconds", "pose_operator_actions",
    "pose_pose_duration_seconds", "pose_poses", "pose_poses_pending", "pose_provider_call_duration_seconds",
    "pose_provider_rate_limited", "pose_provider_retries", "pose_provider_slot_wait_seconds",
    "pose_provider_slots_in_use", "pose_provider_slots_limit", "pose_provider_task_duration_seconds",
    "pose_queue_depth", "pose_queue_jobs", "pose_queue_oldest_waiting_job_age_seconds",
    "pose_queue_wait_duration_seconds", "pose_upload_duration_seconds", "pose_users_with_failed_generations",
    "pose_workers", "pose_workers_paused",
})
_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "Inf", "NaN", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\{[^}]*\})?")


def exporter_series(name: str) -> bool:
    """Whether ``name`` is a series of one of :data:`EXPORTER_FAMILIES`."""
    return any(name.removesuffix(suffix) in EXPORTER_FAMILIES for suffix in _SUFFIXES if name.endswith(suffix))


def _mask(expr: str) -> tuple[str, list[str]]:
    """``expr`` with its strings and grouping clauses replaced by ``\\x00<n>\\x00`` (restored by :func:`_unmask`)."""
    kept: list[str] = []

    def keep(match: re.Match[str]) -> str:
        kept.append(match.group(0))
        return f"\x00{len(kept) - 1}\x00"

    return _CLAUSE.sub(keep, _STRING.sub(keep, expr)), kept


def _unmask(text: str, kept: list[str]) -> str:
    while "\x00" in text:
        text = re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)
    return text


def env_matchers(platform: Platform) -> str:
    """``cluster=~"$cluster",namespace=~"$namespace"``: the environment variables as label matchers."""
    return ",".join(f'{label}=~"${label}"' for label in platform.group_labels)


def scope_expr(expr: str, platform: Platform, *, dedup: bool = True) -> str:
    """``expr`` with the environment matchers on every selector and, with ``dedup``, each exporter series
    selected with the exporter job's matchers and reduced to one replica's copy: ``fn(sel[w])`` becomes
    ``max without (...) (fn(sel[w]))`` and a bare ``sel`` becomes ``max without (...) (sel)``."""
    matchers = env_matchers(platform)
    text, kept = _mask(expr)
    out: list[str] = []
    position = 0
    for match in _SELECTOR.finditer(text):
        name, braces = match.group(1), match.group(2)
        after = text[match.end():]
        if name in _KEYWORDS or (not braces and after.lstrip().startswith(("(", "\x00"))):
            continue  # a keyword, a function call or an aggregation (`sum by (...) (`)
        inner = braces.strip()[1:-1].strip() if braces else ""  # its strings stay masked until the end
        if dedup and exporter_series(name):
            inner = f"{platform.selectors['exporter']},{inner}" if inner else platform.selectors["exporter"]
        if matchers:
            inner = f"{inner},{matchers}" if inner else matchers
        out.append(text[position:match.start()])
        out.append(f"{name}{{{inner}}}")
        position = match.end()
    out.append(text[position:])
    scoped = "".join(out)
    if dedup:
        scoped = _dedup(scoped, platform)
    return _unmask(scoped, kept)


def _dedup(text: str, platform: Platform) -> str:
    reduce = platform.dedup()
    # fn(series{...}[window]) -> max without (...) (fn(series{...}[window]))
    ranged = re.compile(r"(?<![\w:])([a-z_]+)\(\s*([a-zA-Z_:][\w:]*)\{([^}]*)\}\[([^\]]+)\]\s*\)")

    def wrap_range(match: re.Match[str]) -> str:
        if not exporter_series(match.group(2)):
            return match.group(0)
        return f"{reduce} ({match.group(0)})"

    text = ranged.sub(wrap_range, text)
    # A bare exporter selector (not already inside a range) -> max without (...) (series{...})
    bare = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)\{([^}]*)\}(?!\s*\[)")

    def wrap_bare(match: re.Match[str]) -> str:
        if not exporter_series(match.group(1)):
            return match.group(0)
        before = text[:match.start()].rstrip()
        if before.endswith(f"{reduce} ("):
            return match.group(0)
        return f"{reduce} ({match.group(0)})"

    return bare.sub(wrap_bare, text)


def _label_values(query: str, platform: Platform, before: list[str] | None = None) -> str:
    """A ``label_values(series, label)`` query with the environment matchers (or only ``before``'s) added."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
    if not match:
        return query
    selector, label = match.groups()
    name, _, rest = selector.partition("{")
    inner = rest.rstrip("}").strip()
    labels = platform.group_labels if before is None else before
    extra = ",".join(f'{label_name}=~"${label_name}"' for label_name in labels)
    inner = ",".join(part for part in (extra, inner) if part)
    return f"label_values({name}{{{inner}}}, {label})" if inner else f"label_values({name}, {label})"


def environment_variables(platform: Platform, datasource: dict[str, str]) -> list[dict[str, Any]]:
    """One query variable per grouping label, each narrowed by the ones before it; "All" is ``.*``."""
    variables = []
    for index, label in enumerate(platform.group_labels):
        query = _label_values(f"label_values(pose_build_info, {label})", platform,
                              list(platform.group_labels[:index]))
        variables.append({
            "name": label, "label": label.replace("_", " ").capitalize(), "type": "query",
            "datasource": datasource, "query": query, "definition": query, "refresh": 2,
            "includeAll": True, "multi": False, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "options": [], "hide": 0, "sort": 1,
        })
    return variables


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def scope_dashboard(board: dict[str, Any], platform: Platform) -> dict[str, Any]:
    """The dashboard JSON with environment variables and every query scoped (see the module docstring)."""
    variables = board["templating"]["list"]
    datasource = next((v for v in variables if v.get("type") == "datasource"), None)
    for variable in variables:
        if variable.get("type") == "query":
            variable["query"] = _label_values(variable["query"], platform)
            if "definition" in variable:
                variable["definition"] = variable["query"]
    position = variables.index(datasource) + 1 if datasource else 0
    source = {"type": "prometheus", "uid": f"${{{datasource['name']}}}"} if datasource else {}
    variables[position:position] = environment_variables(platform, source)
    for annotation in board.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            annotation["expr"] = scope_expr(annotation["expr"], platform, dedup=False)
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                target["expr"] = scope_expr(target["expr"], platform)
    return board
