-- Rebuild every rollup, and the exporter's totals and histograms, from the source tables (the migrations'
-- backfills; also after bulk loads made with triggers off, and after a TRUNCATE of a source table). Waits
-- for a running fold, then excludes writers. The reaper's counts, which no row keeps, restart at 0.
CREATE OR REPLACE FUNCTION metrics_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7402600);
    TRUNCATE metrics_generation_deltas, metrics_generation_hourly, metrics_user_totals,
             metrics_pose_deltas, metrics_pose_usage, metrics_credit_deltas, metrics_credit_hourly,
             metrics_error_deltas, metrics_error_hourly, metrics_error_totals,
             metrics_histogram_deltas, metrics_histogram_totals, metrics_exporter_deltas, metrics_exporter_totals;

    WITH per_generation AS MATERIALIZED (
        SELECT date_trunc('hour', g.created_at, 'UTC') AS hour, g.user_id, g.status, g.poses_count, g.duration_ms,
               coalesce(p.delivered, 0) AS delivered, coalesce(p.pose_ms, 0) AS pose_ms,
               coalesce(p.pose_n, 0) AS pose_n
          FROM generations g
          LEFT JOIN (SELECT generation_id, count(*) FILTER (WHERE status = 'completed') AS delivered,
                            sum(duration_ms) AS pose_ms, count(duration_ms) AS pose_n
                       FROM generation_poses GROUP BY generation_id) p ON p.generation_id = g.id
    ), by_hour AS (
        INSERT INTO metrics_generation_hourly
        SELECT hour, count(*), count(*) FILTER (WHERE status = 'queued'),
               count(*) FILTER (WHERE status = 'processing'), count(*) FILTER (WHERE status = 'completed'),
               count(*) FILTER (WHERE status = 'failed'), sum(poses_count), sum(delivered),
               coalesce(sum(duration_ms), 0), count(duration_ms), sum(pose_ms), sum(pose_n)
          FROM per_generation GROUP BY hour
    )
    INSERT INTO metrics_user_totals
    SELECT user_id, count(*), count(*) FILTER (WHERE status = 'completed'), sum(delivered)
      FROM per_generation GROUP BY user_id;

    INSERT INTO metrics_pose_usage SELECT pose_id, count(*) FROM generation_poses GROUP BY pose_id;

    INSERT INTO metrics_credit_hourly
    SELECT date_trunc('hour', created_at, 'UTC'), coalesce(sum(amount) FILTER (WHERE kind = 'charge'), 0),
           coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0)
      FROM credit_ledger WHERE kind IN ('charge', 'refund') GROUP BY 1;

    INSERT INTO metrics_error_hourly
    SELECT date_trunc('hour', occurred_at, 'UTC'), error_type, count(*) FROM error_events GROUP BY 1, 2;
    INSERT INTO metrics_error_totals SELECT error_type, count(*) FROM error_events GROUP BY 1;

    INSERT INTO metrics_exporter_totals (metric, label, value)
    SELECT 'generations', 'created', count(*) FROM generations
    UNION ALL
    SELECT 'generations', s.status, count(g.id) FROM unnest('{completed,failed}'::text[]) AS s (status)
      LEFT JOIN generations g ON g.status = s.status GROUP BY s.status
    UNION ALL
    SELECT 'generations_in_progress', s.status, count(g.id) FROM unnest('{queued,processing}'::text[]) AS s (status)
      LEFT JOIN generations g ON g.status = s.status GROUP BY s.status
    UNION ALL
    SELECT 'poses', s.status, count(p.id) FROM unnest('{completed,failed}'::text[]) AS s (status)
      LEFT JOIN generation_poses p ON p.status = s.status GROUP BY s.status
    UNION ALL
    SELECT 'poses_pending', '', count(*) FROM generation_poses WHERE status = 'pending'
    UNION ALL
    SELECT 'last_finished_generation_ms', '', (extract(epoch FROM max(finished_at)) * 1000)::bigint
      FROM generations WHERE status IN ('completed', 'failed') HAVING max(finished_at) IS NOT NULL;

    -- Observations are grouped by value first, so buckets are looked up once per distinct value.
    INSERT INTO metrics_histogram_totals (metric, le, count, sum_ms)
    SELECT metric, exporter_bucket(metric, ms) AS le, sum(n), sum(n * ms)
      FROM (SELECT metric, ms, count(*) AS n
              FROM (SELECT 'generation_duration' AS metric, duration_ms AS ms FROM generations
                     WHERE status IN ('completed', 'failed') AND duration_ms IS NOT NULL
                    UNION ALL
                    SELECT s.metric, s.ms FROM generation_poses p
                     CROSS JOIN LATERAL (VALUES ('provider_call', p.provider_ms), ('upload', p.upload_ms),
                                                ('queue_wait', p.queue_wait_ms), ('pose_duration', p.duration_ms))
                           AS s (metric, ms)
                     WHERE p.status IN ('completed', 'failed') AND s.ms IS NOT NULL) AS observed
             GROUP BY metric, ms) AS per_value
     GROUP BY metric, le;
END;
$$;
