-- Admin rollup deltas (tables of migrations 003 and 008). Each trigger adds the new row's contribution and
-- subtracts the old one's, so status transitions (either way, e.g. the reaper's re-queue), rewrites and
-- deletes all stay exact. The rows also carry what the exporter counts (see 008). Inserts are counted
-- per statement or per transaction instead (metrics_rows_inserted.sql).
-- Generations: deletes, and updates of the columns the figures depend on.
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION metrics_generation_changed() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    moved_delivered integer := 0;
    moved_pose_ms bigint := 0;
    moved_pose_n integer := 0;
    entered boolean;  -- the row enters completed or failed with this write
BEGIN
    entered := TG_OP = 'UPDATE' AND NEW.status IN ('completed', 'failed')
               AND OLD.status NOT IN ('completed', 'failed');
    IF TG_OP = 'UPDATE' AND (date_trunc('hour', OLD.created_at, 'UTC') <> date_trunc('hour', NEW.created_at, 'UTC')
                             OR OLD.user_id <> NEW.user_id) THEN
        -- The generation moves to another hour or user: its poses' contributions move with it.
        SELECT count(*) FILTER (WHERE status = 'completed'), coalesce(sum(duration_ms), 0), count(duration_ms)
          INTO moved_delivered, moved_pose_ms, moved_pose_n
          FROM generation_poses WHERE generation_id = NEW.id;
    END IF;
    INSERT INTO metrics_generation_deltas (hour, user_id, generations, queued, processing, completed, failed,
                                           poses_requested, poses_delivered, duration_sum_ms, duration_count,
                                           pose_duration_sum_ms, pose_duration_count, completed_total, failed_total,
                                           last_finished_ms)
    SELECT date_trunc('hour', c.created_at, 'UTC'), c.user_id, sum(c.sign),
           sum(c.sign * (c.status = 'queued')::int), sum(c.sign * (c.status = 'processing')::int),
           sum(c.sign * (c.status = 'completed')::int), sum(c.sign * (c.status = 'failed')::int),
           sum(c.sign * c.poses_count), sum(c.sign * moved_delivered),
           sum(c.sign * coalesce(c.duration_ms, 0)), sum(c.sign * (c.duration_ms IS NOT NULL)::int),
           sum(c.sign * moved_pose_ms), sum(c.sign * moved_pose_n),
           count(*) FILTER (WHERE c.sign = 1 AND entered AND c.status = 'completed'),
           count(*) FILTER (WHERE c.sign = 1 AND entered AND c.status = 'failed'),
           max(c.finished_ms) FILTER (WHERE c.sign = 1 AND entered)
      FROM (SELECT -1 AS sign, OLD.created_at, OLD.user_id, OLD.status, OLD.poses_count, OLD.duration_ms,
                   NULL::bigint AS finished_ms
            UNION ALL
            SELECT 1, NEW.created_at, NEW.user_id, NEW.status, NEW.poses_count, NEW.duration_ms,
                   (extract(epoch FROM NEW.finished_at) * 1000)::bigint
             WHERE TG_OP <> 'DELETE') c
     GROUP BY 1, 2;
    IF entered THEN
        PERFORM metrics_observe('{generation_duration}', ARRAY[NEW.duration_ms]);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_generations_delete AFTER DELETE ON generations
    FOR EACH ROW EXECUTE FUNCTION metrics_generation_changed();

CREATE OR REPLACE TRIGGER metrics_generations_update AFTER UPDATE OF status, poses_count, duration_ms, created_at, user_id
    ON generations FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.poses_count IS DISTINCT FROM NEW.poses_count
          OR OLD.duration_ms IS DISTINCT FROM NEW.duration_ms OR OLD.created_at IS DISTINCT FROM NEW.created_at
          OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION metrics_generation_changed();
