"""Our scrape jobs, by the names ``alerts/platform.yml``'s selectors and ``alerts/slos.yml``'s sources use."""

JOBS = ("api", "exporter", "worker", "canary")
