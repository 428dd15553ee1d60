"""The alert and recording rules read only what the metric catalogue promises (moved from tests/test_alerts.py,
whose tests need promtool: this one reads files only, so ``make test-fast`` runs it and a metric renamed in the
catalogue but not in the rules fails there)."""

from __future__ import annotations

from tests.support.alerts import CONTRACT_METRICS, load_rules, metric_names


def test_rules_read_only_contract_metrics() -> None:
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    allowed = CONTRACT_METRICS | recorded | {"up", "ALERTS"}  # ALERTS: the suppression (alerts/suppression.py)
    for rule in rules:
        unknown = metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('record') or rule.get('alert')} reads unknown metrics {unknown}"
