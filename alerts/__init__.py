"""Alert tooling: the platform config and the SLO spec, the rules and promtool tests built from them (linked to
the dashboards' panels), and alerts replayed over history (``alerts.backtest``)."""
