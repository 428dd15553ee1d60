-- One bookkeeping family for the exporter and the admin metrics: the insert-only deltas of 003/005 now
-- also carry what the exporter counts, and metrics_fold() folds them into the exporter's totals too.
-- The exporter's own counter triggers of 002 (a row lock and an UPDATE per counter per row written)
-- go: measured with pgbench of posegen_create_generations (bench/bookkeeping_cost.py), they cost a
-- create several times what the create itself costs, while the deltas cost a few percent.
--
-- What the delta rows now also carry (the same rows the admin rollups already wrote: no extra row and
-- no extra trigger call on the create path; pose slots inserted together are now counted by one
-- statement-level trigger, one delta row per pose id, instead of a trigger call and a row per slot):
--   metrics_generation_deltas  created_total / completed_total / failed_total: generations inserted, and
--                              transitions into completed / failed (they never go down, as 002's did);
--                              last_finished_ms: finished_at of a generation entering a terminal status
--   metrics_pose_deltas        pending: change in pending pose slots (a gauge, signed);
--                              completed_total / failed_total: transitions of pose slots into that status
--   metrics_histogram_deltas   (new) one observation per timing of a row entering a terminal status
-- Folded into metrics_exporter_totals (metric, label) and metrics_histogram_totals (metric, le); the
-- exporter reads those plus the deltas not folded yet, and the admin tables for errors and credits,
-- in one statement (exporter/collectors.py). Rebuilding (metrics_rebuild) restarts the exporter's
-- counters from the rows as they are, as 002's exporter_counters_rebuild did (the reaper's counts of 007,
-- which no row keeps, restart at 0: Prometheus reads that as a counter reset).

LOCK TABLE generations, generation_poses, credit_ledger, error_events IN SHARE ROW EXCLUSIVE MODE;

-- The reaper's counts (007) have no rows to be rebuilt from: carried over to the new totals at the end.
CREATE TEMPORARY TABLE carried_exporter_counts ON COMMIT DROP AS
SELECT metric, label, sum(value) AS value FROM exporter_counters
 WHERE metric IN ('generation_requeues', 'generation_attempts_exhausted') GROUP BY metric, label;

DROP TRIGGER exporter_generations_insert_delete ON generations;
DROP TRIGGER exporter_generations_status ON generations;
DROP TRIGGER exporter_generation_poses_insert_delete ON generation_poses;
DROP TRIGGER exporter_generation_poses_status ON generation_poses;
DROP TRIGGER exporter_credit_ledger_insert ON credit_ledger;
DROP TRIGGER exporter_error_events_insert ON error_events;
DROP FUNCTION exporter_generation_changed();
DROP FUNCTION exporter_generation_pose_changed();
DROP FUNCTION exporter_credit_recorded();
DROP FUNCTION exporter_error_recorded();
DROP FUNCTION exporter_counters_rebuild();
DROP FUNCTION exporter_record_latest(text, bigint);
DROP FUNCTION exporter_observe(text, bigint);
DROP TABLE exporter_counters, exporter_histograms;
DROP SEQUENCE exporter_shard_seq;
-- Kept from 002: exporter_histogram_bounds and exporter_bucket(metric, ms); exporter_count() (the
-- reaper's counts of 007, events no row keeps) now appends to metrics_exporter_deltas, below.

ALTER TABLE metrics_generation_deltas
    ADD COLUMN created_total integer NOT NULL DEFAULT 0,
    ADD COLUMN completed_total integer NOT NULL DEFAULT 0,
    ADD COLUMN failed_total integer NOT NULL DEFAULT 0,
    ADD COLUMN last_finished_ms bigint;

ALTER TABLE metrics_pose_deltas
    ADD COLUMN pending integer NOT NULL DEFAULT 0,
    ADD COLUMN completed_total integer NOT NULL DEFAULT 0,
    ADD COLUMN failed_total integer NOT NULL DEFAULT 0;

CREATE TABLE metrics_histogram_deltas (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    metric  text NOT NULL,
    le      float8 NOT NULL,  -- the bucket's upper bound in seconds ('Infinity' for the last)
    count   integer NOT NULL,
    sum_ms  bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- The exporter's counters and gauges, all time: (generations, created|completed|failed),
-- (generations_in_progress, queued|processing), (poses, completed|failed), (poses_pending, ''),
-- (last_finished_generation_ms, '') - the latter the greatest value folded, the others sums.
CREATE TABLE metrics_exporter_totals (
    metric  text NOT NULL,
    label   text NOT NULL,
    value   bigint NOT NULL,
    PRIMARY KEY (metric, label)
);

-- Counts no source row keeps (the reaper's re-queues and exhausted attempts), added by exporter_count().
CREATE TABLE metrics_exporter_deltas (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    metric  text NOT NULL,
    label   text NOT NULL,
    value   bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

CREATE OR REPLACE FUNCTION exporter_count(p_metric text, p_label text, p_delta bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO metrics_exporter_deltas (metric, label, value) VALUES (p_metric, p_label, p_delta)
$$;

-- Observations per bucket, not cumulative.
CREATE TABLE metrics_histogram_totals (
    metric  text NOT NULL,
    le      float8 NOT NULL,
    count   bigint NOT NULL,
    sum_ms  bigint NOT NULL,
    PRIMARY KEY (metric, le)
);


-- One observation per timing that is not NULL, in one statement.
CREATE FUNCTION metrics_observe(p_observations text[], p_ms bigint[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO metrics_histogram_deltas (metric, le, count, sum_ms)
    SELECT o.metric, exporter_bucket(o.metric, o.ms), 1, o.ms
      FROM unnest(p_observations, p_ms) AS o (metric, ms)
     WHERE o.ms IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION metrics_generation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved_delivered integer := 0;
    moved_pose_ms bigint := 0;
    moved_pose_n integer := 0;
    entered boolean;  -- the row enters completed or failed with this write
BEGIN
    IF TG_OP = 'INSERT' THEN
        entered := NEW.status IN ('completed', 'failed');
        INSERT INTO metrics_generation_deltas (hour, user_id, generations, queued, processing, completed, failed,
                                               poses_requested, duration_sum_ms, duration_count, created_total,
                                               completed_total, failed_total, last_finished_ms)
        VALUES (date_trunc('hour', NEW.created_at, 'UTC'), NEW.user_id, 1, (NEW.status = 'queued')::int,
                (NEW.status = 'processing')::int, (NEW.status = 'completed')::int, (NEW.status = 'failed')::int,
                NEW.poses_count, coalesce(NEW.duration_ms, 0), (NEW.duration_ms IS NOT NULL)::int, 1,
                (NEW.status = 'completed')::int, (NEW.status = 'failed')::int,
                CASE WHEN entered THEN (extract(epoch FROM NEW.finished_at) * 1000)::bigint END);
        IF entered THEN
            PERFORM metrics_observe('{generation_duration}', ARRAY[NEW.duration_ms]);
        END IF;
        RETURN NULL;
    END IF;
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
             WHERE TG_OP <> 'INSERT'
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

-- Pose slots are inserted several per statement (a create inserts all of its slots at once): one
-- statement-level trigger counts them all, instead of one trigger call and one delta row per slot.
CREATE FUNCTION metrics_generation_poses_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
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

DROP TRIGGER metrics_generation_poses_insert_delete ON generation_poses;
CREATE TRIGGER metrics_generation_poses_insert AFTER INSERT ON generation_poses
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION metrics_generation_poses_inserted();
CREATE TRIGGER metrics_generation_poses_delete AFTER DELETE ON generation_poses
    FOR EACH ROW EXECUTE FUNCTION metrics_generation_pose_changed();

-- Updates and deletes of pose slots (the worker's outcomes, the reaper), one row at a time.
CREATE OR REPLACE FUNCTION metrics_generation_pose_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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


-- Folding as in 003, plus the exporter's totals and histograms from the same moved rows.
CREATE OR REPLACE FUNCTION metrics_fold(max_rows integer DEFAULT 10000) RETURNS bigint LANGUAGE plpgsql AS $$
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

    WITH moved AS (
        DELETE FROM metrics_generation_deltas
         WHERE id IN (SELECT id FROM metrics_generation_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
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
        SELECT e.metric, e.label,
               CASE WHEN e.metric = 'last_finished_generation_ms' THEN max(e.value) ELSE sum(e.value) END
          FROM moved
         CROSS JOIN LATERAL (VALUES ('generations', 'created', moved.created_total::bigint),
                                    ('generations', 'completed', moved.completed_total),
                                    ('generations', 'failed', moved.failed_total),
                                    ('generations_in_progress', 'queued', moved.queued),
                                    ('generations_in_progress', 'processing', moved.processing),
                                    ('last_finished_generation_ms', '', moved.last_finished_ms)) AS e (metric, label, value)
         WHERE e.value IS NOT NULL
         GROUP BY e.metric, e.label
        ON CONFLICT (metric, label) DO UPDATE SET value = CASE
            WHEN t.metric = 'last_finished_generation_ms' THEN greatest(t.value, EXCLUDED.value)
            ELSE t.value + EXCLUDED.value END
    )
    SELECT count(*) INTO moved_generations FROM moved;

    WITH moved AS (
        DELETE FROM metrics_pose_deltas
         WHERE id IN (SELECT id FROM metrics_pose_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
    ), by_pose AS (
        INSERT INTO metrics_pose_usage AS p SELECT pose_id, sum(slots) FROM moved GROUP BY pose_id
        ON CONFLICT (pose_id) DO UPDATE SET slots = p.slots + EXCLUDED.slots
    ), for_exporter AS (
        INSERT INTO metrics_exporter_totals AS t
        SELECT e.metric, e.label, sum(e.value)
          FROM moved
         CROSS JOIN LATERAL (VALUES ('poses_pending', '', moved.pending), ('poses', 'completed', moved.completed_total),
                                    ('poses', 'failed', moved.failed_total)) AS e (metric, label, value)
         GROUP BY e.metric, e.label
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


-- Rebuild as in 003, plus the exporter's totals and histograms from the rows as they are now.
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

-- Backfill: every figure from the rows already there (the deltas written before now lack the new columns).
SELECT metrics_rebuild();
INSERT INTO metrics_exporter_totals (metric, label, value) SELECT metric, label, value FROM carried_exporter_counts;
