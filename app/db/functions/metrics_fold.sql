-- Folding: move up to max_rows of each kind of delta into the rollups (the admin metrics' and the
-- exporter's totals and histograms); returns how many moved. Only one folder at a time (so rollup rows
-- are never contended); a busy lock means someone is folding. Outside READ COMMITTED a snapshot could
-- miss another folder's deletes, so those transactions skip.
-- The exporter's figures of the moved generation and pose deltas come from the view metrics_exporter_pending, which
-- the exporter's scrape reads too (migration 011): every part of one statement reads the same snapshot, in which
-- the rows being deleted are still there. The batch's id range bounds that read to the batch (an index range scan,
-- not the whole backlog).
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION metrics_fold(max_rows integer DEFAULT 10000) RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    moved_generations bigint;
    moved_poses bigint;
    moved_credits bigint;
    moved_errors bigint;
    moved_observations bigint;
    moved_counts bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' OR NOT pg_try_advisory_xact_lock(7402600) THEN
        RETURN 0;
    END IF;

    WITH batch AS MATERIALIZED (
        SELECT id FROM metrics_generation_deltas ORDER BY id LIMIT max_rows
    ), moved AS (
        DELETE FROM metrics_generation_deltas WHERE id IN (SELECT id FROM batch) RETURNING *
    ), by_hour AS (
        INSERT INTO metrics_generation_hourly AS h
        SELECT hour, sum(generations), sum(queued), sum(processing), sum(completed), sum(failed),
               sum(poses_requested), sum(poses_delivered), sum(duration_sum_ms), sum(duration_count),
               sum(pose_duration_sum_ms), sum(pose_duration_count)
          FROM moved GROUP BY hour
        ON CONFLICT (hour) DO UPDATE SET
            generations = h.generations + EXCLUDED.generations, queued = h.queued + EXCLUDED.queued,
            processing = h.processing + EXCLUDED.processing, completed = h.completed + EXCLUDED.completed,
            failed = h.failed + EXCLUDED.failed, poses_requested = h.poses_requested + EXCLUDED.poses_requested,
            poses_delivered = h.poses_delivered + EXCLUDED.poses_delivered,
            duration_sum_ms = h.duration_sum_ms + EXCLUDED.duration_sum_ms,
            duration_count = h.duration_count + EXCLUDED.duration_count,
            pose_duration_sum_ms = h.pose_duration_sum_ms + EXCLUDED.pose_duration_sum_ms,
            pose_duration_count = h.pose_duration_count + EXCLUDED.pose_duration_count
    ), by_user AS (
        INSERT INTO metrics_user_totals AS u
        SELECT user_id, sum(generations), sum(completed), sum(poses_delivered)
          FROM moved GROUP BY user_id
        ON CONFLICT (user_id) DO UPDATE SET
            generations = u.generations + EXCLUDED.generations, completed = u.completed + EXCLUDED.completed,
            poses_delivered = u.poses_delivered + EXCLUDED.poses_delivered
    ), for_exporter AS (
        INSERT INTO metrics_exporter_totals AS t
        SELECT f.metric, f.label,
               CASE WHEN f.metric = 'last_finished_generation_ms' THEN max(f.value) ELSE sum(f.value) END
          FROM moved JOIN metrics_exporter_pending f ON f.source = 'generation' AND f.delta_id = moved.id
         WHERE f.delta_id BETWEEN (SELECT min(id) FROM batch) AND (SELECT max(id) FROM batch)
           AND f.value IS NOT NULL
         GROUP BY f.metric, f.label
        ON CONFLICT (metric, label) DO UPDATE SET value = CASE
            WHEN t.metric = 'last_finished_generation_ms' THEN greatest(t.value, EXCLUDED.value)
            ELSE t.value + EXCLUDED.value END
    )
    SELECT count(*) INTO moved_generations FROM moved;

    WITH batch AS MATERIALIZED (
        SELECT id FROM metrics_pose_deltas ORDER BY id LIMIT max_rows
    ), moved AS (
        DELETE FROM metrics_pose_deltas WHERE id IN (SELECT id FROM batch) RETURNING *
    ), by_pose AS (
        INSERT INTO metrics_pose_usage AS p SELECT pose_id, sum(slots) FROM moved GROUP BY pose_id
        ON CONFLICT (pose_id) DO UPDATE SET slots = p.slots + EXCLUDED.slots
    ), for_exporter AS (
        INSERT INTO metrics_exporter_totals AS t
        SELECT f.metric, f.label, sum(f.value)
          FROM moved JOIN metrics_exporter_pending f ON f.source = 'pose' AND f.delta_id = moved.id
         WHERE f.delta_id BETWEEN (SELECT min(id) FROM batch) AND (SELECT max(id) FROM batch)
         GROUP BY f.metric, f.label
        ON CONFLICT (metric, label) DO UPDATE SET value = t.value + EXCLUDED.value
    )
    SELECT count(*) INTO moved_poses FROM moved;

    WITH moved AS (
        DELETE FROM metrics_histogram_deltas
         WHERE id IN (SELECT id FROM metrics_histogram_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
    ), by_bucket AS (
        INSERT INTO metrics_histogram_totals AS h
        SELECT metric, le, sum(count), sum(sum_ms) FROM moved GROUP BY metric, le
        ON CONFLICT (metric, le) DO UPDATE SET count = h.count + EXCLUDED.count, sum_ms = h.sum_ms + EXCLUDED.sum_ms
    )
    SELECT count(*) INTO moved_observations FROM moved;

    WITH moved AS (
        DELETE FROM metrics_exporter_deltas
         WHERE id IN (SELECT id FROM metrics_exporter_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
    ), by_metric AS (
        INSERT INTO metrics_exporter_totals AS t SELECT metric, label, sum(value) FROM moved GROUP BY metric, label
        ON CONFLICT (metric, label) DO UPDATE SET value = t.value + EXCLUDED.value
    )
    SELECT count(*) INTO moved_counts FROM moved;

    WITH moved AS (
        DELETE FROM metrics_credit_deltas
         WHERE id IN (SELECT id FROM metrics_credit_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
    ), by_hour AS (
        INSERT INTO metrics_credit_hourly AS h SELECT hour, sum(charged), sum(refunded) FROM moved GROUP BY hour
        ON CONFLICT (hour) DO UPDATE SET charged = h.charged + EXCLUDED.charged,
                                         refunded = h.refunded + EXCLUDED.refunded
    )
    SELECT count(*) INTO moved_credits FROM moved;

    WITH moved AS (
        DELETE FROM metrics_error_deltas
         WHERE id IN (SELECT id FROM metrics_error_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
    ), by_hour AS (
        INSERT INTO metrics_error_hourly AS h
        SELECT hour, error_type, sum(events) FROM moved GROUP BY hour, error_type
        ON CONFLICT (hour, error_type) DO UPDATE SET events = h.events + EXCLUDED.events
    ), by_type AS (
        INSERT INTO metrics_error_totals AS t SELECT error_type, sum(events) FROM moved GROUP BY error_type
        ON CONFLICT (error_type) DO UPDATE SET events = t.events + EXCLUDED.events
    )
    SELECT count(*) INTO moved_errors FROM moved;

    RETURN moved_generations + moved_poses + moved_observations + moved_counts + moved_credits + moved_errors;
END;
$$;
