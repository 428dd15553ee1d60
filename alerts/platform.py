"""The platform config (``alerts/platform.yml``): how our monitoring bundle fits the Prometheus that watches us.

The monitoring-mixin convention: one config holds each job's selector, the labels that separate
environments (``group_labels``), the labels that separate replicas of one source (``replica_labels``),
per-alert switches and thresholds, and the link bases. The hand-written rule templates
(``alerts/templates/*.yml``) are rendered with it into ``alerts/rules/`` (:func:`render_template`), and the
SLO rules, dashboards and Alertmanager's ``group_by`` read it too.

Template macros (``[[name args]]``; PromQL and Go templates never contain ``[[``):

``[[api]]`` ``[[exporter]]`` ``[[worker]]`` ``[[canary]]``  the job's matchers, e.g. ``job="posegen-api"``
``[[by]]`` / ``[[by error_type]]``  ``by (cluster, namespace)`` / ``by (cluster, namespace, error_type)``
``[[on]]``                          ``on (cluster, namespace)``
``[[dedup]]``                       ``max without (instance, pod)``: one copy of a replicated source's series
``[[threshold 0.10]]``              the alert's threshold: 0.10, or the config's override
``[[top_error_type]]``              the annotation naming the environment's top error type of the hour
``[[missing exporter M{a="b"}]]``   1 per environment that scrapes the exporter but has no such series, or
                                    with no label at all when the job is scraped nowhere (absent())
``[[missing_job api]]``             1 per environment that has some of our jobs but not this one (or none
                                    anywhere), labelled ``job``
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alerts.jobs import JOBS
from alerts.slo_spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "alerts" / "platform.yml"
TEMPLATES = ROOT / "alerts" / "templates"
RULES_DIR = ROOT / "alerts" / "rules"
ALERTMANAGER = ROOT / "alerts" / "alertmanager.yml"
# The jobs ScrapeJobAbsent watches: the canary is optional (another deployment may not run it).
WATCHED_JOBS = ("api", "worker", "exporter")

_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_MACRO = re.compile(r"\[\[(\w+)(?: ([^\]]*))?\]\]")
_YAML_UNSAFE = re.compile(r"\s#|:\s")
_URL = re.compile(r"https?://[^\s/]+\S*")


class PlatformError(ValueError):
    """alerts/platform.yml (or a template) is wrong; the message is one line naming the field."""


@dataclass(frozen=True)
class AlertOverride:
    """``enabled`` false drops the alert; ``threshold`` replaces its ``[[threshold N]]`` level."""

    enabled: bool = True
    threshold: float | None = None


@dataclass(frozen=True)
class Platform:
    """The loaded config. ``selectors`` maps a job (api, exporter, worker, canary) to its PromQL matchers."""

    selectors: dict[str, str]
    group_labels: tuple[str, ...]
    replica_labels: tuple[str, ...]
    alerts: dict[str, AlertOverride] = field(default_factory=dict)
    runbook_base: str = ""
    grafana_url: str = ""

    @property
    def labels(self) -> str:
        """The grouping labels as PromQL lists them: ``"cluster, namespace"`` (may be empty)."""
        return ", ".join(self.group_labels)

    def by(self, *extra: str) -> str:
        """``by (cluster, namespace[, extra...])``."""
        return f"by ({', '.join((*self.group_labels, *extra))})"

    def on(self) -> str:
        """``on (cluster, namespace)``: match one environment's series with the same environment's."""
        return f"on ({self.labels})"

    def dedup(self) -> str:
        """``max without (instance, pod)``: one copy of the series a replicated exporter reports."""
        return f"max without ({', '.join(self.replica_labels)})"

    def job_name(self, job: str) -> str:
        """The value of the job's ``job`` matcher (e.g. ``posegen-api``), else the config's key (``api``)."""
        match = re.search(r'(?:^|,)\s*job\s*=\s*"([^"]+)"', self.selectors[job])
        return match.group(1) if match else job

    def select(self, job: str, selector: str) -> str:
        """``selector`` (``name`` or ``name{...}``) with the job's matchers added first."""
        name, brace, rest = selector.partition("{")
        inner = rest.rstrip().removesuffix("}").strip() if brace else ""
        return f"{name.strip()}{{{self.selectors[job]}{',' + inner if inner else ''}}}"

    def enabled(self, alert: str) -> bool:
        return self.alerts.get(alert, AlertOverride()).enabled


def _matchers(job: str, text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PlatformError(f"selectors.{job}: expected label matchers like 'job=\"posegen-{job}\"'")
    parts = re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', text)
    for part in parts:
        if not _MATCHER.fullmatch(part):
            raise PlatformError(f"selectors.{job}: {part.strip()!r} is not a label matcher (label=\"value\")")
        if _YAML_UNSAFE.search(part):
            # The matchers are written into the rule files' plain YAML scalars: " #" starts a comment there
            # (the expression is cut short) and ": " a mapping (the file does not parse).
            raise PlatformError(f"selectors.{job}: {part.strip()!r} holds ' #' or ': ', which the rule files' "
                                "YAML cannot carry unquoted")
    return ",".join(part.strip() for part in parts)


def _labels(key: str, value: Any, *, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise PlatformError(f"{key}: expected a list of label names")
    for label in value:
        if not isinstance(label, str) or not _LABEL.fullmatch(label) or label.startswith("__"):
            raise PlatformError(f"{key}: {label!r} is not a label name")
    if len(set(value)) != len(value):
        raise PlatformError(f"{key}: a label is listed twice")
    return tuple(value)


def parse(raw: Any, source: str = "alerts/platform.yml") -> Platform:
    """Check a parsed config; :class:`PlatformError` says, in one line, what is wrong with which field."""
    if not isinstance(raw, dict):
        raise PlatformError(f"{source}: expected a mapping")
    unknown = set(raw) - {"selectors", "group_labels", "replica_labels", "alerts", "links"}
    if unknown:
        raise PlatformError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
    selectors = raw.get("selectors")
    if not isinstance(selectors, dict) or set(selectors) != set(JOBS):
        raise PlatformError(f"selectors: expected exactly the jobs {', '.join(JOBS)}")
    group = _labels("group_labels", raw.get("group_labels"), allow_empty=True)
    replicas = _labels("replica_labels", raw.get("replica_labels"), allow_empty=False)
    if set(group) & set(replicas):
        raise PlatformError(f"replica_labels: {sorted(set(group) & set(replicas))} also separate environments")
    alerts: dict[str, AlertOverride] = {}
    for name, override in (raw.get("alerts") or {}).items():
        if not isinstance(override, dict) or set(override) - {"enabled", "threshold"} or not override:
            raise PlatformError(f"alerts.{name}: expected 'enabled: false' and/or 'threshold: <number>'")
        enabled = override.get("enabled", True)
        threshold = override.get("threshold")
        if not isinstance(enabled, bool):
            raise PlatformError(f"alerts.{name}.enabled: expected true or false")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                      or not math.isfinite(threshold)):
            # .nan or .inf would render `> nan` / `> inf`: valid PromQL that never fires.
            raise PlatformError(f"alerts.{name}.threshold: expected a finite number, not {threshold!r}")
        alerts[name] = AlertOverride(enabled, None if threshold is None else float(threshold))
    links = raw.get("links")
    if not isinstance(links, dict) or set(links) != {"runbook_base", "grafana_url"}:
        raise PlatformError("links: expected runbook_base and grafana_url")
    for key, url in links.items():
        if not isinstance(url, str) or not _URL.fullmatch(url):
            raise PlatformError(f"links.{key}: expected an absolute http(s) URL, not {url!r}")
    return Platform(
        selectors={job: _matchers(job, selectors[job]) for job in JOBS},
        group_labels=group, replica_labels=replicas, alerts=alerts,
        runbook_base=links["runbook_base"].rstrip("/"), grafana_url=links["grafana_url"].rstrip("/"),
    )


def load(path: Path = CONFIG) -> Platform:
    """Read and check ``path`` (default ``alerts/platform.yml``); unknown alert names are refused."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PlatformError(f"{path}: {' '.join(str(exc).split())}") from None
    platform = parse(raw, str(path))
    known, thresholds = template_alerts()
    slo_alerts = _slo_alerts()
    for name, override in platform.alerts.items():
        if name in slo_alerts:
            raise PlatformError(f"alerts.{name}: an SLO alert; change its objective or tiers in alerts/slos.yml")
        if name not in known:
            raise PlatformError(f"alerts.{name}: no such alert in alerts/templates")
        if override.threshold is not None and name not in thresholds:
            raise PlatformError(f"alerts.{name}.threshold: this alert has no threshold to override")
    return platform


def _slo_alerts() -> set[str]:
    return {slo.alert for slo in load_spec().slos}


_ALERT = re.compile(r"^(\s*)- alert: (\w+)\s*$")


def template_alerts() -> tuple[set[str], set[str]]:
    """(every alert of the templates, those with a ``[[threshold N]]``)."""
    alerts: set[str] = set()
    thresholds: set[str] = set()
    for path in sorted(TEMPLATES.glob("*.yml")):
        current = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := _ALERT.match(line):
                current = match.group(2)
                alerts.add(current)
            elif "[[threshold" in line and current:
                thresholds.add(current)
    return alerts, thresholds


def _drop_disabled(text: str, platform: Platform) -> str:
    """The template without the rules of disabled alerts (each from its `- alert:` line to the next rule)."""
    out: list[str] = []
    skipping: int | None = None
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip())
        if skipping is not None:
            if not line.strip() or indent > skipping:
                continue
            skipping = None  # the next rule, or a comment on it
        match = _ALERT.match(line)
        if match and not platform.enabled(match.group(2)):
            skipping = len(match.group(1))
            continue
        out.append(line)
    return "\n".join(out)


def _number(value: float) -> str:
    return f"{value:g}"


def expand(text: str, platform: Platform, alert: str | None = None) -> str:
    """``text`` with every ``[[macro]]`` replaced (see the module docstring); ``alert`` owns ``[[threshold]]``."""

    def replace(match: re.Match[str]) -> str:
        name, arg = match.group(1), (match.group(2) or "").strip()
        if name in JOBS and not arg:
            return platform.selectors[name]
        if name == "by":
            return platform.by(*[a.strip() for a in arg.split(",") if a.strip()])
        if name == "on" and not arg:
            return platform.on()
        if name == "dedup" and not arg:
            return platform.dedup()
        if name == "threshold" and arg and alert:
            override = platform.alerts.get(alert, AlertOverride()).threshold
            return arg if override is None else _number(override)
        if name == "missing" and arg:
            job, selector = arg.split(" ", 1)
            return missing_series(platform, job, selector)
        if name == "top_error_type" and not arg:
            return top_error_type(platform).replace("'", "''")  # inside a single-quoted YAML scalar
        if name == "missing_job" and arg in JOBS:
            return missing_job(platform, arg)
        raise PlatformError(f"unknown template macro {match.group(0)}")

    return _MACRO.sub(replace, text)


def top_error_type(platform: Platform) -> str:
    """The ``top_error_type`` annotation: the most frequent error type of the last hour *in the alert's own
    environment* (``posegen:errors:increase1h`` selected by the alert's grouping labels, rendered by
    Prometheus at each evaluation), or "none recorded"."""
    if platform.group_labels:
        matchers = ",".join(f"{label}=%q" for label in platform.group_labels)
        args = " ".join(f"$labels.{label}" for label in platform.group_labels)
        query = f'(printf "topk(1, posegen:errors:increase1h{{{matchers}}} > 0)" {args})'
    else:
        query = '"topk(1, posegen:errors:increase1h > 0)"'
    return (f'{{{{ with query {query} }}}}{{{{ . | first | label "error_type" }}}} '
            '({{ . | first | value | humanize }} in the last hour){{ else }}none recorded{{ end }}')


def missing_series(platform: Platform, job: str, selector: str) -> str:
    """1 per environment scraping ``job`` without a ``selector`` series; 1 without labels when ``job`` is
    scraped nowhere and the series is absent (absent() semantics, for one Prometheus per environment)."""
    series = platform.select(job, selector)
    up = platform.select(job, "up")
    by, on = platform.by(), platform.on()
    return (f"(group {by} ({up}) unless {on} group {by} ({series}))"
            f" or (sum(absent({series})) unless on () group({up}))")


def missing_job(platform: Platform, job: str) -> str:
    """1 per environment that has some of our watched jobs but no target of ``job``; 1 when ``job`` has no
    target anywhere and no other job does either. Labelled ``job`` with the job's name."""
    ours = " or ".join(platform.select(j, "up") for j in WATCHED_JOBS)
    up = platform.select(job, "up")
    by, on = platform.by(), platform.on()
    return (f'label_replace((group {by} ({ours}) unless {on} group {by} ({up}))'
            f' or (sum(absent({up})) unless on () group({ours})), "job", "{platform.job_name(job)}", "", "")')


def render_template(text: str, platform: Platform) -> str:
    """A rule template's text rendered with ``platform``: disabled alerts dropped, macros expanded, and an
    ``threshold_override`` annotation on each alert whose threshold the config replaced. Links are not
    written here (:func:`alerts.links.relink` does)."""
    text = _drop_disabled(text, platform)
    out: list[str] = [GENERATED]
    alert = None
    for line in text.split("\n"):
        if match := _ALERT.match(line):
            alert = match.group(2)
        stripped = line.lstrip()
        override = platform.alerts.get(alert or "", AlertOverride()).threshold
        if stripped.startswith("runbook_url:") and alert and override is not None:
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}threshold_override: alerts/platform.yml sets this alert's threshold to "
                       f"{_number(override)} (the description states the default level)")
        if not line.startswith("# TEMPLATE:"):
            out.append(expand(line, platform, alert))
    return "\n".join(out)


def render_rules(platform: Platform) -> dict[str, str]:
    """Every template rendered (links not yet written), keyed by its file name in ``alerts/rules/``."""
    return {path.name: render_template(path.read_text(encoding="utf-8"), platform)
            for path in sorted(TEMPLATES.glob("*.yml"))}


GENERATED = ("# Rendered by `posegen alerts build` from alerts/templates/ and alerts/platform.yml; do not edit "
             "(a test fails when stale).")
_GROUP_BY = re.compile(r"^(  group_by: )\[.*\]$", re.M)


def alertmanager_config(platform: Platform, text: str) -> str:
    """Alertmanager's config text with the route's ``group_by`` = alertname, area and the grouping labels,
    so one environment's outage is one notification with its own labels."""
    labels = ", ".join(("alertname", "area", *platform.group_labels))
    if not _GROUP_BY.search(text):
        raise PlatformError("alerts/alertmanager.yml: no top-level route `  group_by: [...]` line")
    return _GROUP_BY.sub(lambda m: f"{m.group(1)}[{labels}]", text, count=1)
