"""Generated promtool scenarios proving the SLO rules of :mod:`alerts.slo`, per SLO from its ``test_series``.

Each tier fires just above its burn rate and stays quiet just below (after a healthy history long
enough that the slower tier of the same severity stays quiet; what else honestly fires on that data,
e.g. the ticket over a short history, is computed and expected too), a quiet hour's two bad events
page nobody, a low-traffic total outage pages, and an idle system records a full budget and no ratio.
A scenario too close to a threshold to be certain is refused at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alerts import links, page_context
from alerts.slo import RULES_OUT, SLOW_TESTS_OUT, TESTS_OUT, alert_rule
from alerts.slo_spec import RECORD_PREFIX, SLO, Spec, SpecError, Tier, minutes, record_name

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
    annotations.update(page_context.UNKNOWN)  # nor pose_build_info, process start times, users affected
    return {"exp_labels": rule["labels"], "exp_annotations": annotations}


def scenario(verb: str, text: str, slo: SLO, series: dict[str, str], checks: list[dict[str, Any]], interval: int,
             exprs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A promtool test group named "<fires|quiet>: <slo> <text>" feeding ``series`` by what each input counts."""
    test: dict[str, Any] = {
        "name": f"{verb}: {slo.name} {text}",
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
    fires_at = {tier.name + tier.long: first_firing(spec, slo, tier, phases, at, interval) for tier, _ in fired}
    pages = [fires_at[tier.name + tier.long] for tier, _ in fired if tier.severity == "critical"]
    # A ticket (warning) is held back while a page tier (critical, same area) fires, unless it fired first
    # (alerts/suppression.py).
    return [(tier, burn) for tier, burn in fired
            if tier.severity != "warning" or not any(page <= fires_at[tier.name + tier.long] for page in pages)]


def first_firing(spec: Spec, slo: SLO, tier: Tier, phases: list[Phase], at: int, interval: int) -> int:
    """The minute ``tier``, firing at ``at``, began to fire: its condition held at every evaluation since, plus
    its ``for``. An evaluation too close to the threshold to tell ends the search."""
    since = at
    while since - interval >= 0:
        try:
            if not tier_condition(spec, slo, tier, phases, since - interval):
                break
        except SpecError:
            break
        since -= interval
    return since + minutes(tier.for_)


def not_held_back(fired: list[Tier]) -> list[Tier]:
    """The tiers of ``fired`` that fire when every condition starts at once: the pages fire first (the shortest
    ``for``) and hold back the tickets (alerts/suppression.py)."""
    if any(tier.severity == "critical" for tier in fired):
        return [tier for tier in fired if tier.severity != "warning"]
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
                verb, f"{tier.name} {tier.long} tier at burn rate {factor * burn:.3g} "
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
    tests.append(scenario("quiet", "[quiet hour] two bad events in an idle hour page nobody", slo, quiet,
                          [check(70, []), check(110, [])], 1))
    # 12 events an hour, every one bad: the guard needs 10 in the window, so nothing at 40 minutes, then
    # every tier (all of the short history is bad).
    outage = {counts: stepped_values(120, 5, counts) for counts in ("good", "bad", "all")}
    tests.append(scenario("fires", "[low-traffic outage] 12 events an hour, all bad", slo, outage,
                          [check(40, []), check(90, not_held_back(list(spec.tiers)))], 1))
    idle = {"good": "5000x180", "bad": "12x180", "all": "5012x180"}
    budget = f"{RECORD_PREFIX}:error_budget_remaining:ratio"
    tests.append(scenario(
        "quiet", "idle, no events for three hours", slo, idle, [check(180, [])], 1,
        [{"expr": f"{budget}{slo.selector}", "eval_time": "180m",
          "exp_samples": [{"labels": f'{budget}{{area="{slo.area}",slo="{slo.name}"}}', "value": 1}]},
         {"expr": f"{record_name('sli_error', '1h')}{slo.selector}", "eval_time": "180m", "exp_samples": []}],
    ))
    # The budget window from the 5m recordings weighs every event alike: two hours at 10 a minute with
    # 2% bad, then an hour at 100 a minute with none bad spend 24 bad events of 7200. A mean of the 5m
    # ratios would say two thirds of the time ran at 2% and spend four times more of the budget.
    phases = [Phase(120, BUSY_PER_MINUTE, 0.02), Phase(60, 10 * BUSY_PER_MINUTE, 0.0)]
    total, bad = window_counts(phases, 180, "30d")
    remaining = 1 - bad / total / slo.budget
    mean_of_ratios = 1 - (120 * 0.02 / 180) / slo.budget
    low, high = remaining - 0.015, remaining + 0.015
    if low <= mean_of_ratios <= high:
        raise SpecError(f"slo {slo.name}: the budget scenario cannot tell events from a mean of ratios")
    weighted = {counts: series_values(phases, counts) for counts in ("good", "bad", "all")}
    tests.append(scenario(
        "quiet", f"[budget window] error budget remaining is events over events ({remaining:.3f}), "
        f"not a mean of 5m ratios ({mean_of_ratios:.3f})", slo, weighted, [check(180, [])], 1,
        [{"expr": f"({budget}{slo.selector} > bool {low:.4f}) * ({budget}{slo.selector} < bool {high:.4f})",
          "eval_time": "180m", "exp_samples": [{"labels": f'{{area="{slo.area}",slo="{slo.name}"}}', "value": 1}]}],
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
