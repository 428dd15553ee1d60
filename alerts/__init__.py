"""Alert tooling: SLOs compiled to rules and tests (``alerts.slo``), alerts replayed over history."""
