"""The standalone Prometheus exporter (``posegen exporter``): queue state from Redis and domain counters
from PostgreSQL, read at scrape time by custom collectors (:mod:`exporter.collectors`) and served by
:mod:`exporter.server`."""
