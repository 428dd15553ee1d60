-- Counts no source row keeps (the reaper's re-queues and exhausted attempts), folded into the exporter's totals.
CREATE OR REPLACE FUNCTION exporter_count(p_metric text, p_label text, p_delta bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO metrics_exporter_deltas (metric, label, value) VALUES (p_metric, p_label, p_delta)
$$;
