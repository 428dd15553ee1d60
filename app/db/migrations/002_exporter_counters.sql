-- Counters behind the Prometheus exporter (`posegen exporter`), kept by triggers in the same
-- transactions that write generations, generation_poses, credit_ledger and error_events (the domain
-- code does not know about them). A scrape sums a few dozen rows, whatever the size of the history.
--
-- What is counted:
--   generations/created            one per inserted generation
--   generations/completed|failed   one per transition of a generation into that terminal status
--   generations_in_progress/queued|processing   current number in that status (a gauge: goes up and down)
--   poses/completed|failed         one per transition of a pose slot into that terminal status
--   poses_pending                  current number of pending pose slots (a gauge)
--   errors/<error_type>            one per error_events row
--   credits_spent|credits_refunded sum of ledger charge|refund amounts
--   last_finished_generation_ms    latest finished_at of a terminal generation (epoch milliseconds)
-- Counters only ever grow: deleting rows does not lower them (gauges follow deletes).
-- Histograms: one observation per terminal transition, from the row's *_ms column when not NULL.
--
-- Contention: each counter is spread over rows ("shards"). A writer adds to the first shard that no
-- other transaction holds (FOR UPDATE SKIP LOCKED), or opens a new shard when all are held, so
-- counting never waits on another transaction and cannot deadlock whatever order the domain code
-- touches things in. The number of shards follows peak concurrency per counter, not history.

-- Writers wait until the triggers exist and the backfill below has read what is already there.
LOCK TABLE generations, generation_poses, credit_ledger, error_events IN SHARE ROW EXCLUSIVE MODE;

CREATE SEQUENCE exporter_shard_seq;

CREATE TABLE exporter_counters (
    metric  text NOT NULL,
    label   text NOT NULL DEFAULT '',
    shard   bigint NOT NULL,
    value   bigint NOT NULL,
    PRIMARY KEY (metric, label, shard)
) WITH (fillfactor = 50);

-- Bucket upper bounds in seconds, ascending; the +Inf bucket is implied.
CREATE TABLE exporter_histogram_bounds (
    metric  text PRIMARY KEY,
    bounds  float8[] NOT NULL
);
INSERT INTO exporter_histogram_bounds (metric, bounds) VALUES
    ('generation_duration', '{10,30,60,120,300}'),
    ('provider_call', '{0.1,0.5,1,2,5,10,30,60,120,300}'),
    ('upload', '{0.1,0.5,1,2,5,10,30,60,120,300}'),
    ('queue_wait', '{0.1,0.5,1,2,5,10,30,60,120,300}'),
    ('pose_duration', '{0.1,0.5,1,2,5,10,30,60,120,300}');

-- Observations per bucket, not cumulative: `le` is the bucket's upper bound ('Infinity' for the last).
CREATE TABLE exporter_histograms (
    metric  text NOT NULL,
    le      float8 NOT NULL,
    shard   bigint NOT NULL,
    count   bigint NOT NULL,
    sum_ms  bigint NOT NULL,
    PRIMARY KEY (metric, le, shard)
) WITH (fillfactor = 50);


CREATE FUNCTION exporter_count(p_metric text, p_label text, p_delta bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    free_shard bigint;
BEGIN
    SELECT shard INTO free_shard FROM exporter_counters
     WHERE metric = p_metric AND label = p_label ORDER BY shard LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE exporter_counters SET value = value + p_delta
         WHERE metric = p_metric AND label = p_label AND shard = free_shard;
    ELSE
        INSERT INTO exporter_counters (metric, label, shard, value)
        VALUES (p_metric, p_label, nextval('exporter_shard_seq'), p_delta);
    END IF;
END;
$$;

CREATE FUNCTION exporter_record_latest(p_metric text, p_value bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    free_shard bigint;
BEGIN
    SELECT shard INTO free_shard FROM exporter_counters
     WHERE metric = p_metric AND label = '' ORDER BY shard LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE exporter_counters SET value = greatest(value, p_value)
         WHERE metric = p_metric AND label = '' AND shard = free_shard;
    ELSE
        INSERT INTO exporter_counters (metric, label, shard, value)
        VALUES (p_metric, '', nextval('exporter_shard_seq'), p_value);
    END IF;
END;
$$;

-- The upper bound of the bucket an observation falls in; like Prometheus, a bucket includes its bound.
CREATE FUNCTION exporter_bucket(p_metric text, p_ms bigint) RETURNS float8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(min(b), 'Infinity') FROM exporter_histogram_bounds, unnest(bounds) AS b
     WHERE metric = p_metric AND p_ms::float8 / 1000 <= b
$$;

CREATE FUNCTION exporter_observe(p_metric text, p_ms bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    bucket float8;
    free_shard bigint;
BEGIN
    IF p_ms IS NULL THEN
        RETURN;
    END IF;
    bucket := exporter_bucket(p_metric, p_ms);
    SELECT shard INTO free_shard FROM exporter_histograms
     WHERE metric = p_metric AND le = bucket ORDER BY shard LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE exporter_histograms SET count = count + 1, sum_ms = sum_ms + p_ms
         WHERE metric = p_metric AND le = bucket AND shard = free_shard;
    ELSE
        INSERT INTO exporter_histograms (metric, le, shard, count, sum_ms)
        VALUES (p_metric, bucket, nextval('exporter_shard_seq'), 1, p_ms);
    END IF;
END;
$$;


CREATE FUNCTION exporter_generation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_status text;
    new_status text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM exporter_count('generations', 'created', 1);
    ELSE
        old_status := OLD.status;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_status := NEW.status;
    END IF;
    IF old_status IN ('queued', 'processing') THEN
        PERFORM exporter_count('generations_in_progress', old_status, -1);
    END IF;
    IF new_status IN ('queued', 'processing') THEN
        PERFORM exporter_count('generations_in_progress', new_status, 1);
    END IF;
    IF new_status IN ('completed', 'failed') AND coalesce(old_status, '') NOT IN ('completed', 'failed') THEN
        PERFORM exporter_count('generations', new_status, 1);
        PERFORM exporter_observe('generation_duration', NEW.duration_ms);
        IF NEW.finished_at IS NOT NULL THEN
            PERFORM exporter_record_latest('last_finished_generation_ms',
                                           (extract(epoch FROM NEW.finished_at) * 1000)::bigint);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER exporter_generations_insert_delete AFTER INSERT OR DELETE ON generations
    FOR EACH ROW EXECUTE FUNCTION exporter_generation_changed();
CREATE TRIGGER exporter_generations_status AFTER UPDATE OF status ON generations
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION exporter_generation_changed();

CREATE FUNCTION exporter_generation_pose_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_status text;
    new_status text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_status := OLD.status;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_status := NEW.status;
    END IF;
    IF old_status = 'pending' THEN
        PERFORM exporter_count('poses_pending', '', -1);
    END IF;
    IF new_status = 'pending' THEN
        PERFORM exporter_count('poses_pending', '', 1);
    END IF;
    IF new_status IN ('completed', 'failed') AND coalesce(old_status, '') NOT IN ('completed', 'failed') THEN
        PERFORM exporter_count('poses', new_status, 1);
        PERFORM exporter_observe('provider_call', NEW.provider_ms);
        PERFORM exporter_observe('upload', NEW.upload_ms);
        PERFORM exporter_observe('queue_wait', NEW.queue_wait_ms);
        PERFORM exporter_observe('pose_duration', NEW.duration_ms);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER exporter_generation_poses_insert_delete AFTER INSERT OR DELETE ON generation_poses
    FOR EACH ROW EXECUTE FUNCTION exporter_generation_pose_changed();
CREATE TRIGGER exporter_generation_poses_status AFTER UPDATE OF status ON generation_poses
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION exporter_generation_pose_changed();

CREATE FUNCTION exporter_credit_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM exporter_count(CASE NEW.kind WHEN 'charge' THEN 'credits_spent' ELSE 'credits_refunded' END, '',
                           NEW.amount);
    RETURN NULL;
END;
$$;

CREATE TRIGGER exporter_credit_ledger_insert AFTER INSERT ON credit_ledger
    FOR EACH ROW WHEN (NEW.kind IN ('charge', 'refund')) EXECUTE FUNCTION exporter_credit_recorded();

CREATE FUNCTION exporter_error_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM exporter_count('errors', NEW.error_type, 1);
    RETURN NULL;
END;
$$;

CREATE TRIGGER exporter_error_events_insert AFTER INSERT ON error_events
    FOR EACH ROW EXECUTE FUNCTION exporter_error_recorded();


-- Recompute every counter from the rows as they are now: the backfill below, and after bulk loads
-- made with triggers off (bench/exporter_scrape.py). Writers wait while it runs. Counters restart from
-- the current rows, so a rebuild after rows were deleted lowers them: Prometheus reads that as a reset.
CREATE FUNCTION exporter_counters_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE generations, generation_poses, credit_ledger, error_events IN SHARE MODE;
    TRUNCATE exporter_counters, exporter_histograms;

    INSERT INTO exporter_counters (metric, label, shard, value)
    SELECT 'generations', 'created', 0, count(*) FROM generations
    UNION ALL
    SELECT 'generations', status, 0, count(*) FROM generations
     WHERE status IN ('completed', 'failed') GROUP BY status
    UNION ALL
    SELECT 'generations_in_progress', status, 0, count(*) FROM generations
     WHERE status IN ('queued', 'processing') GROUP BY status
    UNION ALL
    SELECT 'poses', status, 0, count(*) FROM generation_poses
     WHERE status IN ('completed', 'failed') GROUP BY status
    UNION ALL
    SELECT 'poses_pending', '', 0, count(*) FROM generation_poses WHERE status = 'pending'
    UNION ALL
    SELECT 'errors', error_type, 0, count(*) FROM error_events GROUP BY error_type
    UNION ALL
    SELECT CASE kind WHEN 'charge' THEN 'credits_spent' ELSE 'credits_refunded' END, '', 0, sum(amount)
      FROM credit_ledger WHERE kind IN ('charge', 'refund') GROUP BY kind
    UNION ALL
    SELECT 'last_finished_generation_ms', '', 0, (extract(epoch FROM max(finished_at)) * 1000)::bigint
      FROM generations WHERE status IN ('completed', 'failed') HAVING max(finished_at) IS NOT NULL;

    -- Observations are grouped by value first, so buckets are looked up once per distinct value.
    INSERT INTO exporter_histograms (metric, le, shard, count, sum_ms)
    SELECT metric, exporter_bucket(metric, ms) AS le, 0, sum(n), sum(n * ms)
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

SELECT exporter_counters_rebuild();
