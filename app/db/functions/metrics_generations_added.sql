-- Counting inserted generations (the insert path of the admin rollups and the exporter's figures; see
-- metrics_generation_changed.sql for updates and deletes): one delta row per (hour, user) of p_rows, an
-- observation per row already finished. Called with the rows of one INSERT statement
-- (metrics_rows_inserted) or with a whole transaction's creates (posegen_create_generations), so a batch
-- of creates costs one delta statement, not one per create.
CREATE OR REPLACE FUNCTION metrics_generations_added(p_rows generations[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metrics_generation_deltas (hour, user_id, generations, queued, processing, completed, failed,
                                           poses_requested, duration_sum_ms, duration_count, created_total,
                                           completed_total, failed_total, last_finished_ms)
    SELECT date_trunc('hour', g.created_at, 'UTC'), g.user_id, count(*), count(*) FILTER (WHERE g.status = 'queued'),
           count(*) FILTER (WHERE g.status = 'processing'), count(*) FILTER (WHERE g.status = 'completed'),
           count(*) FILTER (WHERE g.status = 'failed'), sum(g.poses_count), coalesce(sum(g.duration_ms), 0),
           count(g.duration_ms), count(*), count(*) FILTER (WHERE g.status = 'completed'),
           count(*) FILTER (WHERE g.status = 'failed'),
           (extract(epoch FROM max(g.finished_at) FILTER (WHERE g.status IN ('completed', 'failed'))) * 1000)::bigint
      FROM unnest(p_rows) AS g
     GROUP BY 1, 2;
    IF EXISTS (SELECT 1 FROM unnest(p_rows) AS g WHERE g.status IN ('completed', 'failed')) THEN
        PERFORM metrics_observe(array_agg('generation_duration'::text), array_agg(g.duration_ms))
           FROM unnest(p_rows) AS g WHERE g.status IN ('completed', 'failed');
    END IF;
END;
$$;
