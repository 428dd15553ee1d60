-- The upper bound of the bucket an observation falls in; like Prometheus, a bucket includes its bound.
CREATE OR REPLACE FUNCTION exporter_bucket(p_metric text, p_ms bigint) RETURNS float8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(min(b), 'Infinity') FROM exporter_histogram_bounds, unnest(bounds) AS b
     WHERE metric = p_metric AND p_ms::float8 / 1000 <= b
$$;
