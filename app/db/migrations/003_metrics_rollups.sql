-- Exact rollups behind the admin /metrics endpoints, maintained by triggers in the same transactions
-- that write generations, generation_poses, credit_ledger and error_events (no domain code knows).
--
-- Write path: row triggers append signed *deltas* (insert-only tables), so concurrent writers never
-- wait on a hot counter row and can never deadlock on rollup rows, whatever order they touch them in.
-- metrics_fold() moves deltas into the rollup tables, one folder at a time (a try-advisory lock: a
-- busy folder is skipped, never waited for). It runs at commit of each transaction that inserts a
-- generation or an error event, and from the metrics readers.
-- Read path: rollup rows + deltas not folded yet + raw rows of the two partial edge hours = exact.
-- Every rollup hour is date_trunc('hour', <timestamp>, 'UTC'): rolling windows need whole UTC hours.

-- Writers wait (all four tables at once, so no lock-order deadlock) until the triggers exist and the
-- backfill at the end has read what is already there: every row is counted exactly once.
LOCK TABLE generations, generation_poses, credit_ledger, error_events IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE metrics_generation_deltas (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour                  timestamptz NOT NULL,  -- the generation's created_at hour
    user_id               text NOT NULL,
    generations           integer NOT NULL DEFAULT 0,
    queued                integer NOT NULL DEFAULT 0,
    processing            integer NOT NULL DEFAULT 0,
    completed             integer NOT NULL DEFAULT 0,
    failed                integer NOT NULL DEFAULT 0,
    poses_requested       integer NOT NULL DEFAULT 0,
    poses_delivered       integer NOT NULL DEFAULT 0,
    duration_sum_ms       bigint NOT NULL DEFAULT 0,
    duration_count        integer NOT NULL DEFAULT 0,
    pose_duration_sum_ms  bigint NOT NULL DEFAULT 0,
    pose_duration_count   integer NOT NULL DEFAULT 0
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- Generations by created_at hour: their current statuses, poses, and finished durations.
CREATE TABLE metrics_generation_hourly (
    hour                  timestamptz PRIMARY KEY,
    generations           bigint NOT NULL,
    queued                bigint NOT NULL,
    processing            bigint NOT NULL,
    completed             bigint NOT NULL,
    failed                bigint NOT NULL,
    poses_requested       bigint NOT NULL,
    poses_delivered       bigint NOT NULL,
    duration_sum_ms       bigint NOT NULL,
    duration_count        bigint NOT NULL,
    pose_duration_sum_ms  bigint NOT NULL,
    pose_duration_count   bigint NOT NULL
) WITH (fillfactor = 70);

-- All-time per user, ranked by an index so top-users reads only the first rows.
CREATE TABLE metrics_user_totals (
    user_id          text PRIMARY KEY,
    generations      bigint NOT NULL,
    completed        bigint NOT NULL,
    poses_delivered  bigint NOT NULL
);
CREATE INDEX metrics_user_totals_rank ON metrics_user_totals (generations DESC, user_id COLLATE "C");

CREATE TABLE metrics_pose_deltas (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pose_id  text NOT NULL,
    slots    integer NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- All-time generation pose slots per pose.
CREATE TABLE metrics_pose_usage (
    pose_id  text PRIMARY KEY,
    slots    bigint NOT NULL
) WITH (fillfactor = 70);

CREATE TABLE metrics_credit_deltas (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour      timestamptz NOT NULL,  -- the ledger row's created_at hour
    charged   bigint NOT NULL,
    refunded  bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- Ledger charge and refund amounts by the ledger rows' created_at hour.
CREATE TABLE metrics_credit_hourly (
    hour      timestamptz PRIMARY KEY,
    charged   bigint NOT NULL,
    refunded  bigint NOT NULL
) WITH (fillfactor = 70);

CREATE TABLE metrics_error_deltas (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour        timestamptz NOT NULL,  -- the event's occurred_at hour
    error_type  text NOT NULL,
    events      integer NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- Error events by type and occurred_at hour, and all time. The last occurrence is not rolled up:
-- readers take max(occurred_at) per type from error_events_type, which stays right when rows go away.
CREATE TABLE metrics_error_hourly (
    hour        timestamptz NOT NULL,
    error_type  text NOT NULL,
    events      bigint NOT NULL,
    PRIMARY KEY (hour, error_type)
) WITH (fillfactor = 70);

CREATE TABLE metrics_error_totals (
    error_type  text PRIMARY KEY,
    events      bigint NOT NULL
) WITH (fillfactor = 70);


-- Deltas. Each trigger adds the new row's contribution and subtracts the old one's, so inserts,
-- status transitions (either way, e.g. the reaper's re-queue), rewrites and deletes all stay exact.

CREATE FUNCTION metrics_generation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moved_delivered integer := 0;
    moved_pose_ms bigint := 0;
    moved_pose_n integer := 0;
BEGIN
    IF TG_OP = 'UPDATE' AND (date_trunc('hour', OLD.created_at, 'UTC') <> date_trunc('hour', NEW.created_at, 'UTC')
                             OR OLD.user_id <> NEW.user_id) THEN
        -- The generation moves to another hour or user: its poses' contributions move with it.
        SELECT count(*) FILTER (WHERE status = 'completed'), coalesce(sum(duration_ms), 0), count(duration_ms)
          INTO moved_delivered, moved_pose_ms, moved_pose_n
          FROM generation_poses WHERE generation_id = NEW.id;
    END IF;
    INSERT INTO metrics_generation_deltas (hour, user_id, generations, queued, processing, completed, failed,
                                           poses_requested, poses_delivered, duration_sum_ms, duration_count,
                                           pose_duration_sum_ms, pose_duration_count)
    SELECT date_trunc('hour', c.created_at, 'UTC'), c.user_id, sum(c.sign),
           sum(c.sign * (c.status = 'queued')::int), sum(c.sign * (c.status = 'processing')::int),
           sum(c.sign * (c.status = 'completed')::int), sum(c.sign * (c.status = 'failed')::int),
           sum(c.sign * c.poses_count), sum(c.sign * moved_delivered),
           sum(c.sign * coalesce(c.duration_ms, 0)), sum(c.sign * (c.duration_ms IS NOT NULL)::int),
           sum(c.sign * moved_pose_ms), sum(c.sign * moved_pose_n)
      FROM (SELECT -1 AS sign, OLD.created_at, OLD.user_id, OLD.status, OLD.poses_count, OLD.duration_ms
             WHERE TG_OP <> 'INSERT'
            UNION ALL
            SELECT 1, NEW.created_at, NEW.user_id, NEW.status, NEW.poses_count, NEW.duration_ms
             WHERE TG_OP <> 'DELETE') c
     GROUP BY 1, 2;
    RETURN NULL;
END;
$$;

CREATE TRIGGER metrics_generations_insert_delete AFTER INSERT OR DELETE ON generations
    FOR EACH ROW EXECUTE FUNCTION metrics_generation_changed();
CREATE TRIGGER metrics_generations_update AFTER UPDATE OF status, poses_count, duration_ms, created_at, user_id
    ON generations FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.poses_count IS DISTINCT FROM NEW.poses_count
          OR OLD.duration_ms IS DISTINCT FROM NEW.duration_ms OR OLD.created_at IS DISTINCT FROM NEW.created_at
          OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION metrics_generation_changed();

CREATE FUNCTION metrics_generation_pose_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR OLD.pose_id <> NEW.pose_id THEN
        INSERT INTO metrics_pose_deltas (pose_id, slots)
        SELECT c.pose_id, sum(c.sign)
          FROM (SELECT -1 AS sign, OLD.pose_id WHERE TG_OP <> 'INSERT'
                UNION ALL SELECT 1, NEW.pose_id WHERE TG_OP <> 'DELETE') c
         GROUP BY 1 HAVING sum(c.sign) <> 0;
    END IF;
    -- Delivered poses and finished pose durations count towards the owning generation's hour and user.
    INSERT INTO metrics_generation_deltas (hour, user_id, poses_delivered, pose_duration_sum_ms, pose_duration_count)
    SELECT date_trunc('hour', g.created_at, 'UTC'), g.user_id, sum(c.sign * (c.status = 'completed')::int),
           sum(c.sign * coalesce(c.duration_ms, 0)), sum(c.sign * (c.duration_ms IS NOT NULL)::int)
      FROM (SELECT -1 AS sign, OLD.generation_id, OLD.status, OLD.duration_ms WHERE TG_OP <> 'INSERT'
            UNION ALL
            SELECT 1, NEW.generation_id, NEW.status, NEW.duration_ms WHERE TG_OP <> 'DELETE') c
      JOIN generations g ON g.id = c.generation_id
     GROUP BY 1, 2
    HAVING sum(c.sign * (c.status = 'completed')::int) <> 0 OR sum(c.sign * coalesce(c.duration_ms, 0)) <> 0
        OR sum(c.sign * (c.duration_ms IS NOT NULL)::int) <> 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER metrics_generation_poses_insert_delete AFTER INSERT OR DELETE ON generation_poses
    FOR EACH ROW EXECUTE FUNCTION metrics_generation_pose_changed();
CREATE TRIGGER metrics_generation_poses_update AFTER UPDATE OF status, duration_ms, pose_id, generation_id
    ON generation_poses FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.duration_ms IS DISTINCT FROM NEW.duration_ms
          OR OLD.pose_id IS DISTINCT FROM NEW.pose_id OR OLD.generation_id IS DISTINCT FROM NEW.generation_id)
    EXECUTE FUNCTION metrics_generation_pose_changed();

CREATE FUNCTION metrics_credit_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metrics_credit_deltas (hour, charged, refunded)
    SELECT date_trunc('hour', c.created_at, 'UTC'),
           coalesce(sum(c.sign * c.amount) FILTER (WHERE c.kind = 'charge'), 0),
           coalesce(sum(c.sign * c.amount) FILTER (WHERE c.kind = 'refund'), 0)
      FROM (SELECT -1 AS sign, OLD.created_at, OLD.kind, OLD.amount WHERE TG_OP <> 'INSERT'
            UNION ALL
            SELECT 1, NEW.created_at, NEW.kind, NEW.amount WHERE TG_OP <> 'DELETE') c
     WHERE c.kind IN ('charge', 'refund')
     GROUP BY 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER metrics_credit_ledger_insert_delete AFTER INSERT OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION metrics_credit_changed();
CREATE TRIGGER metrics_credit_ledger_update AFTER UPDATE OF kind, amount, created_at ON credit_ledger
    FOR EACH ROW
    WHEN (OLD.kind IS DISTINCT FROM NEW.kind OR OLD.amount IS DISTINCT FROM NEW.amount
          OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION metrics_credit_changed();

CREATE FUNCTION metrics_error_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metrics_error_deltas (hour, error_type, events)
    SELECT date_trunc('hour', c.occurred_at, 'UTC'), c.error_type, sum(c.sign)
      FROM (SELECT -1 AS sign, OLD.occurred_at, OLD.error_type WHERE TG_OP <> 'INSERT'
            UNION ALL
            SELECT 1, NEW.occurred_at, NEW.error_type WHERE TG_OP <> 'DELETE') c
     GROUP BY 1, 2 HAVING sum(c.sign) <> 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER metrics_error_events_insert_delete AFTER INSERT OR DELETE ON error_events
    FOR EACH ROW EXECUTE FUNCTION metrics_error_changed();
CREATE TRIGGER metrics_error_events_update AFTER UPDATE OF error_type, occurred_at ON error_events
    FOR EACH ROW
    WHEN (OLD.error_type IS DISTINCT FROM NEW.error_type OR OLD.occurred_at IS DISTINCT FROM NEW.occurred_at)
    EXECUTE FUNCTION metrics_error_changed();


-- Folding: move up to max_rows of each kind of delta into the rollups; returns how many moved.
-- Only one folder at a time (so rollup rows are never contended); a busy lock means someone is folding.
-- Outside READ COMMITTED a snapshot could miss another folder's deletes, so those transactions skip.
CREATE FUNCTION metrics_fold(max_rows integer DEFAULT 10000) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved_generations bigint;
    moved_poses bigint;
    moved_credits bigint;
    moved_errors bigint;
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
    )
    SELECT count(*) INTO moved_generations FROM moved;

    WITH moved AS (
        DELETE FROM metrics_pose_deltas
         WHERE id IN (SELECT id FROM metrics_pose_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
    ), by_pose AS (
        INSERT INTO metrics_pose_usage AS p SELECT pose_id, sum(slots) FROM moved GROUP BY pose_id
        ON CONFLICT (pose_id) DO UPDATE SET slots = p.slots + EXCLUDED.slots
    )
    SELECT count(*) INTO moved_poses FROM moved;

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

    RETURN moved_generations + moved_poses + moved_credits + moved_errors;
END;
$$;

-- At commit of a transaction that created a generation or recorded an error: fold once, briefly.
-- A failing fold must never fail the business transaction; the deltas simply wait for the next one.
CREATE FUNCTION metrics_fold_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('posegen.metrics_folded', true) = 'yes' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('posegen.metrics_folded', 'yes', true);
    BEGIN
        PERFORM metrics_fold(1000);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'metrics_fold skipped: %', SQLERRM;
    END;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER metrics_fold_after_generation AFTER INSERT ON generations
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION metrics_fold_at_commit();
CREATE CONSTRAINT TRIGGER metrics_fold_after_error AFTER INSERT ON error_events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION metrics_fold_at_commit();


-- Rebuild every rollup from the source tables (the backfill below; also after bulk loads made with
-- triggers off, and after a TRUNCATE of a source table). Waits for a running fold, then excludes writers.
CREATE FUNCTION metrics_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7402600);
    TRUNCATE metrics_generation_deltas, metrics_generation_hourly, metrics_user_totals,
             metrics_pose_deltas, metrics_pose_usage, metrics_credit_deltas, metrics_credit_hourly,
             metrics_error_deltas, metrics_error_hourly, metrics_error_totals;

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
END;
$$;

CREATE FUNCTION metrics_rebuild_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM metrics_rebuild();
    RETURN NULL;
END;
$$;

CREATE TRIGGER metrics_generations_truncate AFTER TRUNCATE ON generations
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();
CREATE TRIGGER metrics_generation_poses_truncate AFTER TRUNCATE ON generation_poses
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();
CREATE TRIGGER metrics_credit_ledger_truncate AFTER TRUNCATE ON credit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();
CREATE TRIGGER metrics_error_events_truncate AFTER TRUNCATE ON error_events
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();

-- Backfill from the rows already there.
SELECT metrics_rebuild();
