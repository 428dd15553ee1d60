-- Exemplars: per histogram bucket, the latest traced observation (trace id and generation id), so the
-- exporter's histograms link a slow bucket to its Datadog trace. Writers never wait for one another here:
-- a bucket's row held by another transaction is skipped (an exemplar is any recent observation).
CREATE OR REPLACE FUNCTION exporter_note_exemplar(p_metric text, p_ms bigint, p_trace_id text, p_generation_id text)
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
