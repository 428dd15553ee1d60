"""Hold back a symptom's alert in Prometheus while its cause pages, so that every notification is resolved.

Alertmanager's inhibition mutes an alert's *resolve* as well as its firing notifications: an alert that
paged, was then inhibited and resolved while inhibited is never resolved at PagerDuty or in chat
(prometheus/alertmanager#2754, #226). So ``alerts/alertmanager.yml`` has no ``inhibit_rules``; the same
suppression is written into each symptom's expression instead, as the build step ``posegen alerts build``
(via :func:`alerts.links.relink`) rewrites every rule file::

    (
      <the alert's own expression>
    )
    unless on (<environment labels>) (
      (
        <its causes: ALERTS{alertstate="firing", ...} of the alerts that make it redundant>
      )
      unless on (<environment labels>) ALERTS{alertstate="firing", alertname="<itself>", <its rule labels>}
    )

- A symptom that starts while a cause fires never fires (its ``for:`` starts over at every evaluation),
  so nothing is sent for it: what inhibition is for.
- A symptom that already fired is exempt (the last line: Prometheus reads its own ``ALERTS`` series of
  the previous evaluation), so it stays firing while its condition holds and is resolved, un-muted,
  when the condition ends: no page or chat message is left open.

Causes (the three inhibit rules this replaces; ``area`` and ``severity`` are the rules' labels):

1. a firing ``critical`` of the same ``area`` holds back a ``warning`` (QueueOverloaded -> QueueDepthHigh);
2. a firing threshold ``critical`` (no ``slo`` label) of the same ``area`` holds back a burn-rate page
   (``critical`` with ``slo``): the seed's threshold alert already pages with its own runbook;
3. ``ExporterSourceDown`` (Redis or PostgreSQL, shared by API and workers, unreadable) holds back every
   alert but those naming another cause (:data:`NOT_HELD_BY_A_DEPENDENCY`).

The exemption is per rule, not per series: while any series of the rule fires, a new series of it is not
held back in its environment. ``on (<environment labels>)`` (``group_labels`` of ``alerts/platform.yml``,
default ``cluster, namespace``): every alert aggregates by them, so its ``ALERTS`` series carries them, and a cause
in one environment holds back only that environment's symptoms; where one Prometheus watches one environment (the
labels come from its external labels, which ``ALERTS`` does not carry) they match as empty, as ``on ()`` would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import yaml

# How a built expression is recognised, so that a rebuild recomputes the suppression instead of adding one.
# (No PromQL comment: the rule tests read every word and slash of an expression.)
_HELD_START = (re.compile(r"unless on \([\w, ]*\) \($"), "  (", '    ALERTS{alertstate="firing", ')
DEPENDENCY_DOWN = "ExporterSourceDown"
# What names a cause of its own (a target down, a scrape job missing) and the dead-man's switch.
NOT_HELD_BY_A_DEPENDENCY = frozenset({"ExporterSourceDown", "ExporterTargetDown", "ApiTargetDown",
                                      "ScrapeJobAbsent", "Watchdog"})

_ALERT = re.compile(r"^\s*-?\s*alert: (\w+)\s*$")
_EXPR = re.compile(r"^(\s*)expr: ?(.*)$")


def _selector(**labels: str) -> str:
    return "ALERTS{" + ", ".join(f'{name}="{value}"' for name, value in labels.items()) + "}"


def causes(alert: str, labels: dict[str, str]) -> list[str]:
    """The ``ALERTS`` selectors (firing only) of what holds back ``alert`` with rule ``labels``; [] for none."""
    found = []
    severity, area = labels.get("severity"), labels.get("area", "")
    if severity == "warning":
        found.append(_selector(alertstate="firing", severity="critical", area=area))
    if severity == "critical" and labels.get("slo"):
        found.append(_selector(alertstate="firing", severity="critical", area=area, slo=""))
    if alert not in NOT_HELD_BY_A_DEPENDENCY:
        found.append(_selector(alertstate="firing", alertname=DEPENDENCY_DOWN))
    return found


def original(expr: str) -> str:
    """``expr`` without the suppression :func:`held_back` added (unchanged when it has none)."""
    lines = expr.rstrip("\n").split("\n")
    for index in range(2, len(lines) - 2):
        if lines[0] == "(" and lines[index - 1] == ")" and _HELD_START[0].match(lines[index]) \
                and lines[index + 1] == _HELD_START[1] and lines[index + 2].startswith(_HELD_START[2]):
            return "\n".join(body[2:] for body in lines[1:index - 1]) + "\n"
    return expr


def held_back(alert: str, labels: dict[str, str], expr: str, group_labels: Sequence[str] = ()) -> str:
    """``expr`` of ``alert`` with its suppression (see the module), matched ``on (group_labels)`` (the
    environment labels), or as it is when nothing holds it back."""
    on = f"on ({', '.join(group_labels)})"
    own = original(expr).rstrip("\n")
    held_by = causes(alert, labels)
    if not held_by:
        return own + "\n"
    itself = _selector(alertstate="firing", alertname=alert, **labels)
    lines = ["(", *(f"  {line}" if line else "" for line in own.split("\n")), ")", f"unless {on} (",
             "  (", f"    {held_by[0]}", *(f"    or {selector}" for selector in held_by[1:]), "  )",
             f"  unless {on} {itself}", ")"]
    return "\n".join(lines) + "\n"


def _alerts(text: str) -> list[dict[str, Any]]:
    document = yaml.safe_load(text) or {}
    return [rule for group in document.get("groups", []) for rule in group.get("rules", []) if "alert" in rule]


def apply(text: str, group_labels: Sequence[str] = ()) -> str:
    """A rule file's text with every alert's ``expr`` rewritten by :func:`held_back` (matching on
    ``group_labels``, the environment labels); the rest kept as is.

    Idempotent: an expression that already carries the suppression gets it recomputed, not doubled.
    """
    rules = iter(_alerts(text))
    lines = text.split("\n")
    out: list[str] = []
    rule: dict[str, Any] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if _ALERT.match(line):
            rule = next(rules)
        match = _EXPR.match(line)
        if match and rule is not None:
            indent = match.group(1)
            end = index + 1
            while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip())
                                        > len(indent)):
                end += 1
            while end > index + 1 and not lines[end - 1].strip():
                end -= 1  # blank lines before the next key are not the expression's
            labels = {key: str(value) for key, value in rule.get("labels", {}).items()}
            if not causes(rule["alert"], labels) and original(rule["expr"]) == rule["expr"]:
                rule = None  # nothing holds it back: its expression stays as written
                out.append(line)
                index += 1
                continue
            expr = held_back(rule["alert"], labels, rule["expr"], group_labels)
            out.append(f"{indent}expr: |")
            out.extend(f"{indent}  {part}" if part else "" for part in expr.rstrip("\n").split("\n"))
            rule = None
            index = end
            continue
        out.append(line)
        index += 1
    return "\n".join(out)
