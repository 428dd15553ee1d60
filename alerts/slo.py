"""SLOs as code: ``alerts/slos.yml`` compiled to Prometheus rules and to the promtool tests that prove them.

For every SLO the rules are (all series labelled ``slo`` and ``area``):

``posegen_slo:sli_error:ratio_rate<w>``       bad / total events over ``w`` (5m .. 3d and the budget window);
                                              no sample when nothing happened (never NaN)
``posegen_slo:sli_events:increase<w>``        total events over each tier's long window (the guard's volume)
``posegen_slo:objective:ratio``               the objective, for dashboards
``posegen_slo:error_budget_remaining:ratio``  1 - error ratio over the budget window / (1 - objective);
                                              1 when idle, below 0 once the budget is spent
``<Alert>`` per tier                          multi-window multi-burn-rate: long and short window both
                                              burning faster than the tier's rate, plus the low-traffic
                                              guard; the alert's value is the long window's burn rate

The tests are scenarios on synthetic counters, generated per SLO from its ``test_series``: each tier
fires just above its burn rate and stays quiet just below (after a healthy history long enough that
the slower tiers stay quiet), a quiet hour's two bad events page nobody, a low-traffic total outage
pages, and an idle system records a full budget and no ratio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alerts import links

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "alerts" / "slos.yml"
RULES_OUT = ROOT / "alerts" / "rules" / "slo.rules.yml"
TESTS_OUT = ROOT / "alerts" / "tests" / "slo.test.yml"
SLOW_TESTS_OUT = ROOT / "alerts" / "tests" / "slo-ticket.test.yml"
SLI_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
RECORD_PREFIX = "posegen_slo"
# The dominant error type of the last hour (recorded by alerts/rules/pose-generator.rules.yml),
# rendered by Prometheus at each evaluation, so the notification says it without a lookup.
TOP_ERROR_TYPE = (
    '{{ with query "topk(1, posegen:errors:increase1h > 0)" }}{{ . | first | label "error_type" }} '
    '({{ . | first | value | humanize }} in the last hour){{ else }}none recorded{{ end }}'
)

_UNITS = {"m": 1, "h": 60, "d": 1440}


class SpecError(ValueError):
    """alerts/slos.yml is malformed; the message names the field."""


def minutes(duration: str) -> int:
    """``"5m"``, ``"6h"``, ``"3d"`` in minutes."""
    match = re.fullmatch(r"(\d+)([mhd])", duration)
    if not match:
        raise SpecError(f"duration {duration!r}: expected a number and m, h or d")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Tier:
    """One burn-rate tier: ``budget_share`` of the budget gone within ``long`` pages (or tickets)."""

    name: str
    budget_share: float
    long: str
    short: str
    severity: str
    for_: str

    def burn_rate(self, window: str) -> float:
        return round(self.budget_share * minutes(window) / minutes(self.long), 6)


@dataclass(frozen=True)
class TestSeries:
    series: str
    counts: str  # good, bad or all


@dataclass(frozen=True)
class SLO:
    name: str
    alert: str
    area: str
    title: str
    description: str
    objective: float
    good: str
    total: str
    test_series: tuple[TestSeries, ...]

    @property
    def budget(self) -> float:
        """The error budget as a ratio of events (1 - objective)."""
        return round(1 - self.objective, 9)

    @property
    def labels(self) -> dict[str, str]:
        return {"slo": self.name, "area": self.area}

    @property
    def selector(self) -> str:
        return f'{{slo="{self.name}"}}'


@dataclass(frozen=True)
class Spec:
    window: str
    tiers: tuple[Tier, ...]
    min_events: int
    min_bad_events: int
    slos: tuple[SLO, ...]


def load_spec(path: Path = SPEC) -> Spec:
    """Read and check the SLO spec; :class:`SpecError` names what is wrong."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        tiers = tuple(
            Tier(t["name"], float(t["budget_share"]), t["long"], t["short"], t["severity"], t["for"])
            for t in raw["tiers"]
        )
        slos = tuple(
            SLO(
                name=s["name"], alert=s["alert"], area=s["area"], title=s["title"], description=s["description"],
                objective=float(s["objective"]), good=s["sli"]["good"], total=s["sli"]["total"],
                test_series=tuple(TestSeries(t["series"], t["counts"]) for t in s["test_series"]),
            )
            for s in raw["slos"]
        )
        spec = Spec(raw["window"], tiers, int(raw["guard"]["min_events"]), int(raw["guard"]["min_bad_events"]), slos)
    except (KeyError, TypeError) as exc:
        raise SpecError(f"{path}: missing or malformed field {exc}") from None
    for slo in spec.slos:
        if not 0 < slo.objective < 1:
            raise SpecError(f"slo {slo.name}: objective must be between 0 and 1, not {slo.objective}")
        if {t.counts for t in slo.test_series} - {"good", "bad", "all"}:
            raise SpecError(f"slo {slo.name}: test_series counts must be good, bad or all")
        fastest = max(tier.burn_rate(spec.window) for tier in spec.tiers)
        if fastest * 1.1 * slo.budget > 1:
            raise SpecError(f"slo {slo.name}: a budget of {slo.budget} cannot burn {fastest}x (over 100% bad)")
    for tier in spec.tiers:
        if minutes(tier.short) >= minutes(tier.long):
            raise SpecError(f"tier {tier.long}: the short window {tier.short} must be shorter than the long one")
    return spec


# --- rules -----------------------------------------------------------------------------------------


def record_name(kind: str, window: str) -> str:
    return f"{RECORD_PREFIX}:{kind}:{'ratio_rate' if kind == 'sli_error' else 'increase'}{window}"


def error_ratio_expr(slo: SLO, window: str) -> str:
    total = f"sum(rate({slo.total}[{window}]))"
    # No good series yet (every event bad) counts as zero good events, not as no data.
    good = f"(sum(rate({slo.good}[{window}])) or vector(0))"
    return f"({total} - {good})\n  / ({total} > 0)"


def _literal(value: float) -> str:
    return f"{value:.6g}"


def alert_rule(spec: Spec, slo: SLO, tier: Tier) -> dict[str, Any]:
    burn = tier.burn_rate(spec.window)
    per_budget = _literal(1 / slo.budget)
    sel = slo.selector
    long_ratio = f"{record_name('sli_error', tier.long)}{sel}"
    short_ratio = f"{record_name('sli_error', tier.short)}{sel}"
    events = f"{record_name('sli_events', tier.long)}{sel}"
    expr = (
        f"{long_ratio} * {per_budget} > {_literal(burn)}\n"
        f"  and {short_ratio} * {per_budget} > {_literal(burn)}\n"
        f"  and {events} >= {spec.min_events}\n"
        f"  and {long_ratio} * {events} >= {spec.min_bad_events}\n"
    )
    share = f"{tier.budget_share:.0%}"
    return {
        "alert": slo.alert,
        "expr": expr,
        "for": tier.for_,
        "labels": {
            "severity": tier.severity,
            **slo.labels,
            "tier": tier.name,
            "burn_window": tier.long,
        },
        "annotations": {
            "summary": f"{slo.title} SLO: {share} of the {spec.window} error budget burnt within {tier.long}",
            "description": (
                f"Over the last {tier.long} (and {tier.short}) the SLI \"{slo.description}\" failed at "
                f"{{{{ printf \"%.1f\" $value }}}}x the rate the {slo.objective:.1%} objective allows "
                f"(this tier: above {_literal(burn)}x, {share} of the {spec.window} budget in {tier.long}). "
                f"Guard: only with at least {spec.min_events} events and {spec.min_bad_events} bad ones "
                f"in the {tier.long}."
            ),
            **({"top_error_type": TOP_ERROR_TYPE} if slo.area == "generation" else {}),
            # Placeholder: relink() writes the absolute runbook and dashboard URLs.
            "runbook_url": slo.alert,
        },
    }


def slo_group(spec: Spec, slo: SLO) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    for window in (*SLI_WINDOWS, spec.window):
        rules.append({"record": record_name("sli_error", window), "expr": error_ratio_expr(slo, window),
                      "labels": slo.labels})
    for window in dict.fromkeys(tier.long for tier in spec.tiers):
        rules.append({"record": record_name("sli_events", window),
                      "expr": f"sum(increase({slo.total}[{window}]))", "labels": slo.labels})
    rules.append({"record": f"{RECORD_PREFIX}:objective:ratio", "expr": f"vector({slo.objective})",
                  "labels": slo.labels})
    budget_ratio = f"{record_name('sli_error', spec.window)}{slo.selector}"
    rules.append({
        "record": f"{RECORD_PREFIX}:error_budget_remaining:ratio",
        # Idle over the whole window: nothing was spent.
        "expr": f"1 - (sum({budget_ratio}) or vector(0)) * {_literal(1 / slo.budget)}",
        "labels": slo.labels,
    })
    rules.extend(alert_rule(spec, slo, tier) for tier in spec.tiers)
    return {"name": f"posegen-slo-{slo.name}", "rules": rules}


def build_rules(spec: Spec) -> dict[str, Any]:
    return {"groups": [slo_group(spec, slo) for slo in spec.slos]}


# --- tests -----------------------------------------------------------------------------------------

BUSY_PER_MINUTE = 10.0


@dataclass(frozen=True)
class Phase:
    """``minutes`` of traffic at ``per_minute`` events, ``bad`` of them failing (a fraction)."""

    minutes: int
    per_minute: float
    bad: float


def series_values(phases: list[Phase], counts: str, interval: int = 1) -> str:
    """promtool's expanding notation for a counter of ``counts`` events through ``phases``.

    One sample every ``interval`` minutes."""
    parts, value = ["0"], 0.0
    for phase in phases:
        good = phase.per_minute * (1 - phase.bad)
        bad = phase.per_minute * phase.bad
        step = {"good": good, "bad": bad, "all": good + bad}[counts] * interval
        samples = phase.minutes // interval
        parts.append(f"{value + step:.10g}+{step:.10g}x{samples - 1}")
        value += step * samples
    return " ".join(parts)


def stepped_values(total_minutes: int, every: int, bad_counts: str) -> str:
    """A low-traffic counter: one event every ``every`` minutes, each bad; ``bad_counts`` is what the series counts."""
    values = [(m // every) if bad_counts in ("bad", "all") else 0 for m in range(total_minutes + 1)]
    out, start = [], 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[end + 1] == values[start]:
            end += 1
        out.append(f"{values[start]}x{end - start}" if end > start else str(values[start]))
        start = end + 1
    return " ".join(out)


def expected(spec: Spec, slo: SLO, tier: Tier, burn: float, at: int) -> dict[str, Any]:
    """The alert of ``tier`` firing at minute ``at`` with its labels and annotations, value ``burn``."""
    rule = alert_rule(spec, slo, tier)
    annotations = dict(rule["annotations"])
    annotations["description"] = annotations["description"].replace('{{ printf "%.1f" $value }}', f"{burn:.1f}")
    if "top_error_type" in annotations:
        annotations["top_error_type"] = "none recorded"  # the SLO tests feed no pose_errors_total
    annotations["runbook_url"] = links.runbook_url(slo.alert)
    annotations["dashboard_url"] = links.rendered_dashboard_url(slo.alert, at * 60)
    return {"exp_labels": rule["labels"], "exp_annotations": annotations}


def scenario(name: str, slo: SLO, series: dict[str, str], checks: list[dict[str, Any]], interval: int,
             exprs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    test: dict[str, Any] = {
        "name": f"{name.split(':')[0]}: {slo.name}{name[name.index(':') + 1:]}",
        "interval": f"{interval}m",
        "input_series": [{"series": t.series, "values": series[t.counts]} for t in slo.test_series],
        "alert_rule_test": checks,
    }
    if exprs:
        test["promql_expr_test"] = exprs
    return test


def window_counts(phases: list[Phase], at: int, window: str) -> tuple[float, float]:
    """(total, bad) events in the ``window`` ending at minute ``at``, clipped to the start of the data."""
    lo, total, bad, start = max(0, at - minutes(window)), 0.0, 0.0, 0
    for phase in phases:
        end = start + phase.minutes
        overlap = max(0, min(end, at) - max(start, lo))
        total += overlap * phase.per_minute
        bad += overlap * phase.per_minute * phase.bad
        start = end
    return total, bad


def tier_condition(spec: Spec, slo: SLO, tier: Tier, phases: list[Phase], at: int) -> bool:
    """Whether the tier's expression holds at ``at``; refuses a scenario too close to a threshold to be sure."""
    burn = tier.burn_rate(spec.window)
    holds = []
    for window in (tier.long, tier.short):
        total, bad = window_counts(phases, at, window)
        ratio = bad / total if total else 0.0
        if total and abs(ratio / slo.budget - burn) < 0.05 * burn:
            raise SpecError(f"slo {slo.name}: a test scenario burns {ratio / slo.budget:.3g}x, too close to {burn}x")
        holds.append(total > 0 and ratio / slo.budget > burn)
    total, bad = window_counts(phases, at, tier.long)
    return all(holds) and total >= spec.min_events and bad >= spec.min_bad_events


def firing(spec: Spec, slo: SLO, phases: list[Phase], at: int, interval: int) -> list[tuple[Tier, float]]:
    """The tiers firing at ``at`` (their condition held since before their ``for``), with the long window's burn."""
    fired = []
    for tier in spec.tiers:
        now = tier_condition(spec, slo, tier, phases, at)
        before = tier_condition(spec, slo, tier, phases, at - minutes(tier.for_) - interval)
        if now != before:
            raise SpecError(f"slo {slo.name}: a test scenario changes the {tier.long} tier within its `for`")
        if now:
            total, bad = window_counts(phases, at, tier.long)
            fired.append((tier, bad / total / slo.budget))
    return fired


def slo_tests(spec: Spec, slo: SLO, tiers: tuple[Tier, ...], interval: int, evaluation: int) -> list[dict[str, Any]]:
    """The scenarios of one SLO for ``tiers``: a sample every ``interval`` min, rules evaluated every ``evaluation``."""
    rate = BUSY_PER_MINUTE
    tests = []

    def phases_series(phases: list[Phase]) -> dict[str, str]:
        return {counts: series_values(phases, counts, interval) for counts in ("good", "bad", "all")}

    def check(at: int, fired: list[tuple[Tier, float]]) -> dict[str, Any]:
        return {"eval_time": f"{at}m", "alertname": slo.alert,
                "exp_alerts": [expected(spec, slo, tier, burn, at) for tier, burn in fired]}

    for tier in tiers:
        burn = tier.burn_rate(spec.window)
        # Ten minutes past the long window, on the evaluation grid (promtool reports the last evaluation).
        span = -(-(minutes(tier.long) + 10) // evaluation) * evaluation
        # A healthy history as long as the next slower tier of the same severity keeps that one quiet.
        slower = [minutes(t.long) for t in spec.tiers
                  if minutes(t.long) > minutes(tier.long) and t.severity == tier.severity]
        prefix = [Phase(min(slower), rate, 0.0)] if slower else []
        at = sum(p.minutes for p in prefix) + span
        for factor, fires in ((1.1, True), (0.9, False)):
            phases = [*prefix, Phase(span, rate, factor * burn * slo.budget)]
            fired = firing(spec, slo, phases, at, evaluation)
            if (tier in [t for t, _ in fired]) != fires:
                raise SpecError(f"slo {slo.name}: the {tier.long} scenario at {factor}x does not test the tier")
            verb = "fires" if fires else "quiet"
            alerting = ", ".join(f"{t.name} {t.long}" for t, _ in fired) or "nothing"
            tests.append(scenario(
                f"{verb}: {tier.name} {tier.long} tier at burn rate {factor * burn:.3g} "
                f"({'above' if fires else 'just below'} {burn:g}: {factor * tier.budget_share:.1%} of the budget "
                f"in {tier.long}{', after ' + str(prefix[0].minutes // 60) + ' h healthy' if prefix else ''}); "
                f"firing: {alerting}",
                slo, phases_series(phases), [check(at, fired)], interval,
            ))
    return tests


def traffic_tests(spec: Spec, slo: SLO) -> list[dict[str, Any]]:
    """Quiet hour, low-traffic outage and idle scenarios of one SLO, one sample a minute."""
    tests = []

    def check(at: int, fired: list[Tier]) -> dict[str, Any]:
        return {"eval_time": f"{at}m", "alertname": slo.alert,
                "exp_alerts": [expected(spec, slo, tier, 1 / slo.budget, at) for tier in fired]}

    # A quiet hour: two bad events, nothing else for two hours.
    quiet = {"good": "0x120", "bad": "0x60 1x5 2x54", "all": "0x60 1x5 2x54"}
    tests.append(scenario("quiet: [quiet hour] two bad events in an idle hour page nobody", slo, quiet,
                          [check(70, []), check(110, [])], 1))
    # 12 events an hour, every one bad: the guard needs 10 in the window, so nothing at 40 minutes, then
    # every tier (all of the short history is bad).
    outage = {counts: stepped_values(120, 5, counts) for counts in ("good", "bad", "all")}
    tests.append(scenario("fires: [low-traffic outage] 12 events an hour, all bad", slo, outage,
                          [check(40, []), check(90, list(spec.tiers))], 1))
    idle = {"good": "5000x180", "bad": "12x180", "all": "5012x180"}
    budget = f"{RECORD_PREFIX}:error_budget_remaining:ratio"
    tests.append(scenario(
        "quiet: idle, no events for three hours", slo, idle, [check(180, [])], 1,
        [{"expr": f"{budget}{slo.selector}", "eval_time": "180m",
          "exp_samples": [{"labels": f'{budget}{{area="{slo.area}",slo="{slo.name}"}}', "value": 1}]},
         {"expr": f"{record_name('sli_error', '1h')}{slo.selector}", "eval_time": "180m", "exp_samples": []}],
    ))
    return tests


# Tiers whose long window is a day or more are tested on coarse samples, or promtool takes minutes.
COARSE_MINUTES = 30
# The other scenarios have a sample a minute (a 5m window needs several) and are evaluated every 5.
EVALUATION_MINUTES = 5


def build_tests(spec: Spec) -> dict[Path, dict[str, Any]]:
    """The generated promtool test files: fast tiers and traffic scenarios, and the slow (ticket) tiers."""
    fast = tuple(t for t in spec.tiers if minutes(t.long) < minutes("1d"))
    slow = tuple(t for t in spec.tiers if minutes(t.long) >= minutes("1d"))
    rule_files = [f"../rules/{RULES_OUT.name}"]
    return {
        TESTS_OUT: {
            "rule_files": rule_files, "evaluation_interval": f"{EVALUATION_MINUTES}m",
            "tests": [test for slo in spec.slos
                      for test in (*slo_tests(spec, slo, fast, 1, EVALUATION_MINUTES), *traffic_tests(spec, slo))],
        },
        SLOW_TESTS_OUT: {
            "rule_files": rule_files, "evaluation_interval": f"{COARSE_MINUTES}m",
            "tests": [test for slo in spec.slos
                      for test in slo_tests(spec, slo, slow, COARSE_MINUTES, COARSE_MINUTES)],
        },
    }


# --- output ----------------------------------------------------------------------------------------

HEADER = "# Generated by `posegen slo build` from alerts/slos.yml; do not edit (a test fails when stale).\n"


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(document: dict[str, Any]) -> str:
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


def built(spec_path: Path = SPEC) -> dict[Path, str]:
    """The generated files and their text, keyed by their path in the repository."""
    spec = load_spec(spec_path)
    rules = links.relink(render(build_rules(spec)))
    return {RULES_OUT: rules, **{path: render(doc) for path, doc in build_tests(spec).items()}}


def write(out_dir: Path | None = None) -> list[Path]:
    """Write the generated rules and tests (into their places, or all into ``out_dir``)."""
    written = []
    for path, text in built().items():
        target = path if out_dir is None else out_dir / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
