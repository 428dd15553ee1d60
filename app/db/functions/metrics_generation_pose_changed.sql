-- Admin rollup deltas, as metrics_generation_changed.sql describes.
-- Updates and deletes of pose slots (the worker's outcomes, the reaper), one row at a time.
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION metrics_generation_pose_changed() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    entered boolean;  -- the slot enters completed or failed with this write
BEGIN
    entered := TG_OP = 'UPDATE' AND NEW.status IN ('completed', 'failed')
               AND OLD.status NOT IN ('completed', 'failed');
    IF TG_OP = 'DELETE' OR OLD.pose_id <> NEW.pose_id OR OLD.status <> NEW.status THEN
        INSERT INTO metrics_pose_deltas (pose_id, slots, pending, completed_total, failed_total)
        SELECT c.pose_id, sum(c.sign), sum(c.sign * (c.status = 'pending')::int),
               count(*) FILTER (WHERE c.sign = 1 AND entered AND c.status = 'completed'),
               count(*) FILTER (WHERE c.sign = 1 AND entered AND c.status = 'failed')
          FROM (SELECT -1 AS sign, OLD.pose_id, OLD.status
                UNION ALL SELECT 1, NEW.pose_id, NEW.status WHERE TG_OP <> 'DELETE') c
         GROUP BY 1
        HAVING sum(c.sign) <> 0 OR sum(c.sign * (c.status = 'pending')::int) <> 0 OR bool_or(c.sign = 1 AND entered);
    END IF;
    IF entered THEN
        PERFORM metrics_observe('{provider_call,upload,queue_wait,pose_duration}',
                                ARRAY[NEW.provider_ms, NEW.upload_ms, NEW.queue_wait_ms, NEW.duration_ms]);
    END IF;
    -- Delivered poses and finished pose durations count towards the owning generation's hour and user.
    INSERT INTO metrics_generation_deltas (hour, user_id, poses_delivered, pose_duration_sum_ms, pose_duration_count)
    SELECT date_trunc('hour', g.created_at, 'UTC'), g.user_id, sum(c.sign * (c.status = 'completed')::int),
           sum(c.sign * coalesce(c.duration_ms, 0)), sum(c.sign * (c.duration_ms IS NOT NULL)::int)
      FROM (SELECT -1 AS sign, OLD.generation_id, OLD.status, OLD.duration_ms
            UNION ALL
            SELECT 1, NEW.generation_id, NEW.status, NEW.duration_ms WHERE TG_OP <> 'DELETE') c
      JOIN generations g ON g.id = c.generation_id
     GROUP BY 1, 2
    HAVING sum(c.sign * (c.status = 'completed')::int) <> 0 OR sum(c.sign * coalesce(c.duration_ms, 0)) <> 0
        OR sum(c.sign * (c.duration_ms IS NOT NULL)::int) <> 0;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_generation_poses_delete AFTER DELETE ON generation_poses
    FOR EACH ROW EXECUTE FUNCTION metrics_generation_pose_changed();

CREATE OR REPLACE TRIGGER metrics_generation_poses_update AFTER UPDATE OF status, duration_ms, pose_id, generation_id
    ON generation_poses FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.duration_ms IS DISTINCT FROM NEW.duration_ms
          OR OLD.pose_id IS DISTINCT FROM NEW.pose_id OR OLD.generation_id IS DISTINCT FROM NEW.generation_id)
    EXECUTE FUNCTION metrics_generation_pose_changed();
