-- One observation per timing that is not NULL, in one statement.
CREATE OR REPLACE FUNCTION metrics_observe(p_observations text[], p_ms bigint[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO metrics_histogram_deltas (metric, le, count, sum_ms)
    SELECT o.metric, exporter_bucket(o.metric, o.ms), 1, o.ms
      FROM unnest(p_observations, p_ms) AS o (metric, ms)
     WHERE o.ms IS NOT NULL
$$;
