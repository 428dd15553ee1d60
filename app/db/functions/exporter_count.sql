-- Counts no source row keeps (the reaper's re-queues and exhausted attempts), folded into the exporter's totals.
-- SECURITY DEFINER (as the schema's owner): the application's role reads the derived tables and adds to these
-- two counters through this function only, so it cannot write any other figure (app/db/grants.sql).
CREATE OR REPLACE FUNCTION exporter_count(p_metric text, p_label text, p_delta bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF p_metric NOT IN ('generation_requeues', 'generation_attempts_exhausted') OR p_delta <= 0 THEN
        RAISE EXCEPTION 'exporter_count counts re-queues and exhausted attempts only, upwards'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO metrics_exporter_deltas (metric, label, value) VALUES (p_metric, p_label, p_delta);
END;
$$;
