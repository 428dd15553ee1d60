"""Alert backtesting: replay every alert of ``alerts/rules`` over a Prometheus's history.

``posegen alerts backtest --prometheus URL --since 7d [--override ALERT=THRESHOLD]`` evaluates each
alert's expression with the HTTP API's ``query_range`` (one point per ``--step``, the evaluation
interval) from the first point where Prometheus holds any history, emulates ``for`` and
``keep_firing_for`` the way the rule manager does, and prints when each
alert would have fired and its firings per day (pages per day for critical ones) — and, for an
override, the same before and after the new threshold, so a change is judged on real traffic.

Recorded series (``posegen:*``, ``posegen_slo:*``) are expanded into their recording rules' expressions
before querying: the replay shows what today's rules would have done, even over history recorded by
older rules or none at all (a backfilled TSDB). What it cannot see: state from before ``--since`` (an
alert already pending then starts its ``for`` at the first point) and annotation templates.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

RULES_DIR = Path(__file__).resolve().parent / "rules"
# Longer than any retention worth replaying (Prometheus keeps 15 days by default).
MAX_SINCE_SECONDS = 400 * 86400
# Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS = 10_000
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The first comparison with a number: by convention the alert's threshold comes first, guards after.
_THRESHOLD = re.compile(r"(>=|<=|==|!=|>|<)(\s*)(-?\d+(?:\.\d+)?(?:e-?\d+)?)")


class BacktestError(ValueError):
    """Bad arguments or an unusable Prometheus answer; the message says which."""


def seconds(duration: str) -> int:
    """A Prometheus duration (``90s``, ``5m``, ``7d``, ``1h30m``) in seconds."""
    parts = _DURATION.findall(duration)
    order = [_UNIT_SECONDS[u] for _, u in parts]
    if not parts or "".join(n + u for n, u in parts) != duration or order != sorted(set(order), reverse=True):
        raise BacktestError(f"duration {duration!r}: expected e.g. 30m, 6h, 7d")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


@dataclass
class AlertRule:
    name: str
    expr: str
    for_seconds: int
    keep_firing_seconds: int
    labels: dict[str, str]


def load_rules(rules_dir: Path = RULES_DIR) -> tuple[list[AlertRule], dict[str, list[dict[str, Any]]]]:
    """Alert rules in file order, and recording rules by recorded name."""
    alerts: list[AlertRule] = []
    records: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    records.setdefault(rule["record"], []).append(rule)
                else:
                    alerts.append(AlertRule(rule["alert"], rule["expr"], seconds(rule.get("for", "0s")),
                                            seconds(rule.get("keep_firing_for", "0s")), dict(rule.get("labels", {}))))
    return alerts, records


def inline(expr: str, records: dict[str, list[dict[str, Any]]], step: str = "1m") -> str:
    """``expr`` with every recorded series replaced by its recording rule's expression, recursively.

    A reference with equality matchers (``name{slo="x"}``) picks the rule whose labels match them; a
    range over a recorded series (``avg_over_time(name[15m])``) becomes a subquery at ``step``, the
    evaluation interval at which the rule would have been recorded.
    """
    if not records:
        return expr
    names = "|".join(re.escape(name) for name in sorted(records, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w:])({names})(?![\w:])(\{{[^}}]*\}})?(?:\[([^\]:]+)\])?")

    def replace(match: re.Match[str]) -> str:
        name, matchers, window = match.group(1), match.group(2) or "", match.group(3)
        wanted = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))
        if re.search(r"!=|=~|!~", matchers):
            raise BacktestError(f"{name}{matchers}: only equality matchers on recorded series can be replayed")
        found = [r for r in records[name] if all(r.get("labels", {}).get(k) == v for k, v in wanted.items())]
        if len(found) != 1:
            raise BacktestError(f"{name}{matchers}: {len(found)} recording rules match, expected one")
        inlined = f"({found[0]['expr'].strip()})"
        return f"{inlined}[{window}:{step}]" if window else inlined

    for _ in range(10):
        expanded = pattern.sub(replace, expr)
        if expanded == expr:
            return expr
        expr = expanded
    raise BacktestError("recording rules nest more than 10 deep")


def override_threshold(expr: str, threshold: float) -> str:
    """``expr`` with its first numeric comparison's threshold replaced."""
    if not _THRESHOLD.search(expr):
        raise BacktestError(f"no numeric threshold in {expr.strip()!r}")
    return _THRESHOLD.sub(lambda m: f"{m.group(1)}{m.group(2)}{threshold:g}", expr, count=1)


@dataclass
class Firing:
    labels: dict[str, str]
    start: float
    end: float | None  # None: still firing at the end of the range


Window = tuple[float, float | None]


def emulate(points: list[float], grid: list[float], for_seconds: int, keep_seconds: int) -> list[Window]:
    """Firing windows of one series given the evaluation times where its expression returned a sample.

    As the rule manager does: pending from the first point, firing once it has lasted ``for``; a
    firing alert whose expression stops keeps firing for ``keep_firing_for``, then resolves.
    """
    present = set(points)
    windows: list[Window] = []
    active_since = firing_since = absent_since = None
    for t in grid:
        if t in present:
            absent_since = None
            if active_since is None:
                active_since = t
            if firing_since is None and t - active_since >= for_seconds:
                firing_since = t
            continue
        if firing_since is not None:
            absent_since = t if absent_since is None else absent_since
            if t - absent_since < keep_seconds:
                continue
            windows.append((firing_since, t))
        active_since = firing_since = absent_since = None
    if firing_since is not None:
        windows.append((firing_since, None))
    return windows


class Prometheus:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=60)

    def query_range(self, expr: str, start: float, end: float, step: int) -> list[dict[str, Any]]:
        """Every series of ``expr`` over [start, end], in chunks Prometheus accepts."""
        merged: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        chunk_start = start
        while chunk_start <= end:
            chunk_end = min(end, chunk_start + step * (MAX_POINTS - 1))
            try:
                answer = self.http.get("/api/v1/query_range", params={
                    "query": expr, "start": chunk_start, "end": chunk_end, "step": step})
            except httpx.HTTPError as exc:
                raise BacktestError(f"cannot reach Prometheus at {self.http.base_url}: {exc}") from None
            body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
            if answer.status_code != 200 or body.get("status") != "success":
                raise BacktestError(f"Prometheus answered {answer.status_code}: {body.get('error', answer.text[:300])}")
            for series in body["data"]["result"]:
                key = tuple(sorted(series["metric"].items()))
                merged.setdefault(key, {"metric": series["metric"], "values": []})["values"] += series["values"]
            chunk_start = chunk_end + step
        return list(merged.values())


# A scrape happened (any target's ``up``), or, in a backfilled history without scrapes, the seed's counter.
HISTORY_PROBES = ("count(up)", "count(pose_generations_total)")


def history_start(prom: Prometheus, start: float, end: float, step: int) -> float | None:
    """The first evaluation time in [start, end] at which Prometheus holds any history (see
    :data:`HISTORY_PROBES`), or None when it holds none. Before it, every absent-series alert would "fire"
    on a TSDB that simply did not exist yet, so the replay starts there."""
    for probe in HISTORY_PROBES:
        times = [float(t) for series in prom.query_range(probe, start, end, step) for t, _ in series["values"]]
        if times:
            return min(times)
    return None


@dataclass
class Result:
    rule: AlertRule
    firings: list[Firing] = field(default_factory=list)


def backtest(prom: Prometheus, alerts: list[AlertRule], records: dict[str, list[dict[str, Any]]],
             start: float, end: float, step: int) -> list[Result]:
    """Replay ``alerts`` over [start, end] every ``step`` seconds."""
    grid = [start + i * step for i in range(int((end - start) // step) + 1)]
    results = []
    for rule in alerts:
        result = Result(rule)
        for series in prom.query_range(inline(rule.expr, records, f"{step}s"), start, end, step):
            points = [float(t) for t, _ in series["values"]]
            labels = {k: v for k, v in series["metric"].items() if k != "__name__"} | rule.labels
            result.firings += [Firing(labels, s, e) for s, e in emulate(points, grid, rule.for_seconds,
                                                                         rule.keep_firing_seconds)]
        results.append(result)
    return results


def _when(t: float | None) -> str:
    return "still firing" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(results: list[Result], days: float, title: str) -> list[str]:
    """Lines: per alert name, its firings per day, then each firing window."""
    lines = [title, f"{'ALERT':32} {'SEVERITY':16} {'FIRINGS':>7} {'PER DAY':>8}"]
    by_name: dict[str, list[Result]] = {}
    for result in results:
        by_name.setdefault(result.rule.name, []).append(result)
    pages = 0
    for name, group in by_name.items():
        firings = sorted((f for r in group for f in r.firings), key=lambda f: f.start)
        severity = "/".join(dict.fromkeys(r.rule.labels.get("severity", "") for r in group))
        lines.append(f"{name:32} {severity:16} {len(firings):>7} {len(firings) / days:>8.2f}")
        for firing in firings:
            extra = {k: v for k, v in firing.labels.items() if k not in ("severity", "area")}
            lines.append(f"    {_when(firing.start)} .. {_when(firing.end)}  {extra or ''}".rstrip())
            pages += firing.labels.get("severity") == "critical"
    lines.append(f"pages (critical firings): {pages} in {days:g} days = {pages / days:.2f} per day")
    return lines


def parse_overrides(items: list[str], alerts: list[AlertRule]) -> dict[str, float]:
    known = {rule.name for rule in alerts}
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known:
            raise BacktestError(f"--override {item!r}: no alert named {name!r}")
        try:
            overrides[name] = float(value)
        except ValueError:
            raise BacktestError(f"--override {item!r}: expected ALERT=THRESHOLD with a number") from None
        if not math.isfinite(overrides[name]):
            raise BacktestError(f"--override {item!r}: the threshold must be a finite number")
        rule = next(r for r in alerts if r.name == name)
        if not _THRESHOLD.search(rule.expr):
            raise BacktestError(f"--override {item!r}: {name} has no numeric threshold to override")
    return overrides


def run_backtest(args: argparse.Namespace) -> int:
    """The CLI: print the replay (and each override's before/after); exit 2 on bad input or Prometheus errors."""
    try:
        alerts, records = load_rules()
        since, step = seconds(args.since), seconds(args.step)
        if step <= 0:
            raise BacktestError(f"--step {args.step}: must be at least 1s")
        if since > MAX_SINCE_SECONDS:
            raise BacktestError(f"--since {args.since}: at most {MAX_SINCE_SECONDS // 86400}d (Prometheus keeps "
                                f"15d by default)")
        if step > since:
            raise BacktestError(f"--step {args.step} is longer than --since {args.since}")
        overrides = parse_overrides(args.override, alerts)
        end = float(int(time.time()) // step * step)
        prom = Prometheus(args.prometheus)
        first = history_start(prom, end - since, end, step)
        if first is None:
            raise BacktestError(f"Prometheus at {args.prometheus} holds no history in the last {args.since} "
                                f"(no {' and no '.join(HISTORY_PROBES)})")
        start = max(end - since, first)
        days = (end - start) / 86400
        clipped = f"; history begins {_when(start)}" if start > end - since else ""
        header = (f"over {args.since} ({_when(start)} .. {_when(end)}{clipped}), step {args.step}, "
                  f"from {args.prometheus}")
        before = backtest(prom, alerts, records, start, end, step)
        print("\n".join(report(before, days, f"Backtest of {len(alerts)} alert rules {header}")))
        for name, threshold in overrides.items():
            changed = [AlertRule(r.name, override_threshold(r.expr, threshold), r.for_seconds,
                                 r.keep_firing_seconds, r.labels) for r in alerts if r.name == name]
            after = backtest(prom, changed, records, start, end, step)
            was = [r for r in before if r.rule.name == name]
            old = _THRESHOLD.search(was[0].rule.expr)
            print(f"\nOverride {name}: threshold {old.group(3) if old else '?'} -> {threshold:g}")
            print("\n".join(["before:", *report(was, days, "")[2:]]))
            print("\n".join(["after:", *report(after, days, "")[2:]]))
    except BacktestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
