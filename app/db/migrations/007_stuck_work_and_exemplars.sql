-- What explains an incident, kept where the writes happen (read by `posegen exporter` at scrape time).
--
-- 1. attempt_started_at: when the current attempt of a generation began (claim_generation sets it;
--    started_at keeps the first attempt's start). The exporter's oldest running generation is
--    now() - min(attempt_started_at) over generations in 'processing', found through the partial index.
-- 2. Re-queues and exhausted attempts are counted by the reaper in exporter_counters, in its own
--    transaction (metrics generation_requeues / generation_attempts_exhausted, label = reason). No row
--    keeps their history, so exporter_counters_rebuild() (bulk loads, bench) restarts them at 0, which
--    Prometheus reads as a counter reset.
-- 3. Exemplars: per histogram bucket, the latest traced observation (trace id and generation id), so the
--    exporter's histograms link a slow bucket to its Datadog trace. A generation is traced when the API
--    stored its trace context; its poses' spans are in the same trace. Writers never wait for one
--    another here: a bucket's row held by another transaction is skipped (an exemplar is any recent
--    observation, not every one).

ALTER TABLE generations ADD COLUMN attempt_started_at timestamptz;
-- Attempts running while this migrates: their first start is the best figure there is.
UPDATE generations SET attempt_started_at = started_at WHERE status = 'processing';
CREATE INDEX generations_processing_attempt ON generations (attempt_started_at) WHERE status = 'processing';

CREATE TABLE exporter_histogram_exemplars (
    metric         text NOT NULL,
    le             float8 NOT NULL,
    trace_id       text NOT NULL,
    generation_id  text,
    value_ms       bigint NOT NULL,
    observed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (metric, le)
);

CREATE FUNCTION exporter_note_exemplar(p_metric text, p_ms bigint, p_trace_id text, p_generation_id text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    bucket float8;
BEGIN
    IF p_ms IS NULL OR p_trace_id IS NULL THEN
        RETURN;
    END IF;
    bucket := exporter_bucket(p_metric, p_ms);
    PERFORM 1 FROM exporter_histogram_exemplars WHERE metric = p_metric AND le = bucket FOR UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE exporter_histogram_exemplars
           SET trace_id = p_trace_id, generation_id = p_generation_id, value_ms = p_ms, observed_at = now()
         WHERE metric = p_metric AND le = bucket;
    ELSE
        INSERT INTO exporter_histogram_exemplars (metric, le, trace_id, generation_id, value_ms)
        VALUES (p_metric, bucket, p_trace_id, p_generation_id, p_ms)
        ON CONFLICT DO NOTHING;
    END IF;
END;
$$;

CREATE FUNCTION exporter_generation_exemplar() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM exporter_note_exemplar('generation_duration', NEW.duration_ms,
                                   NEW.trace_context ->> 'x-datadog-trace-id', NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER exporter_generations_exemplar AFTER UPDATE OF status ON generations
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed') AND OLD.status NOT IN ('completed', 'failed')
          AND NEW.trace_context IS NOT NULL)
    EXECUTE FUNCTION exporter_generation_exemplar();

CREATE FUNCTION exporter_generation_pose_exemplar() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    trace text;
BEGIN
    SELECT trace_context ->> 'x-datadog-trace-id' INTO trace FROM generations WHERE id = NEW.generation_id;
    IF trace IS NOT NULL THEN
        PERFORM exporter_note_exemplar('provider_call', NEW.provider_ms, trace, NEW.generation_id);
        PERFORM exporter_note_exemplar('pose_duration', NEW.duration_ms, trace, NEW.generation_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER exporter_generation_poses_exemplar AFTER UPDATE OF status ON generation_poses
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed') AND OLD.status = 'pending')
    EXECUTE FUNCTION exporter_generation_pose_exemplar();
