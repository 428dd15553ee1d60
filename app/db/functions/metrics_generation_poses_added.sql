-- Counting inserted pose slots, as metrics_generations_added.sql describes: one delta row per pose id;
-- slots inserted already finished also give observations and count towards their generation's hour and
-- user (a slot inserted pending, the usual case, changes no generation figure).
CREATE OR REPLACE FUNCTION metrics_generation_poses_added(p_rows generation_poses[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metrics_pose_deltas (pose_id, slots, pending, completed_total, failed_total)
    SELECT p.pose_id, count(*), count(*) FILTER (WHERE p.status = 'pending'),
           count(*) FILTER (WHERE p.status = 'completed'), count(*) FILTER (WHERE p.status = 'failed')
      FROM unnest(p_rows) AS p GROUP BY p.pose_id;
    IF NOT EXISTS (SELECT 1 FROM unnest(p_rows) AS p WHERE p.status <> 'pending' OR p.duration_ms IS NOT NULL) THEN
        RETURN;
    END IF;
    PERFORM metrics_observe(array_agg(o.metric), array_agg(o.ms))
       FROM unnest(p_rows) AS p
      CROSS JOIN LATERAL (VALUES ('provider_call', p.provider_ms::bigint), ('upload', p.upload_ms),
                                 ('queue_wait', p.queue_wait_ms), ('pose_duration', p.duration_ms)) AS o (metric, ms)
      WHERE p.status IN ('completed', 'failed');
    INSERT INTO metrics_generation_deltas (hour, user_id, poses_delivered, pose_duration_sum_ms, pose_duration_count)
    SELECT date_trunc('hour', g.created_at, 'UTC'), g.user_id, count(*) FILTER (WHERE p.status = 'completed'),
           coalesce(sum(p.duration_ms), 0), count(p.duration_ms)
      FROM unnest(p_rows) AS p JOIN generations g ON g.id = p.generation_id
     WHERE p.status = 'completed' OR p.duration_ms IS NOT NULL
     GROUP BY 1, 2;
END;
$$;
