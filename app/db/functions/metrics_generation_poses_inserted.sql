-- Pose slots are inserted several per statement (a create inserts all of its slots at once): one
-- statement-level trigger counts them all, instead of one trigger call and one delta row per slot.
CREATE OR REPLACE FUNCTION metrics_generation_poses_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metrics_pose_deltas (pose_id, slots, pending, completed_total, failed_total)
    SELECT pose_id, count(*), count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'completed'),
           count(*) FILTER (WHERE status = 'failed')
      FROM inserted GROUP BY pose_id;
    IF NOT EXISTS (SELECT 1 FROM inserted WHERE status <> 'pending' OR duration_ms IS NOT NULL) THEN
        RETURN NULL;  -- slots inserted pending, the usual case: no timing, no generation figure changes
    END IF;
    PERFORM metrics_observe(array_agg(o.metric), array_agg(o.ms))
       FROM inserted i
      CROSS JOIN LATERAL (VALUES ('provider_call', i.provider_ms::bigint), ('upload', i.upload_ms),
                                 ('queue_wait', i.queue_wait_ms), ('pose_duration', i.duration_ms)) AS o (metric, ms)
      WHERE i.status IN ('completed', 'failed');
    INSERT INTO metrics_generation_deltas (hour, user_id, poses_delivered, pose_duration_sum_ms, pose_duration_count)
    SELECT date_trunc('hour', g.created_at, 'UTC'), g.user_id, count(*) FILTER (WHERE i.status = 'completed'),
           coalesce(sum(i.duration_ms), 0), count(i.duration_ms)
      FROM inserted i JOIN generations g ON g.id = i.generation_id
     WHERE i.status = 'completed' OR i.duration_ms IS NOT NULL
     GROUP BY 1, 2;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_generation_poses_insert AFTER INSERT ON generation_poses
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION metrics_generation_poses_inserted();
