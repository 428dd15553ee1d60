-- One mapping from the bookkeeping's delta rows to the exporter's figures, read by both of its readers: the fold
-- (metrics_fold() adds the rows it moves into metrics_exporter_totals) and the exporter's scrape (which adds the
-- rows not folded yet to those totals, exporter/collectors.py). Until now each wrote the mapping out on its own.
--
-- metrics_exporter_pending: one row per (delta row, figure): which delta table (source) and row (delta_id) it
-- comes from, and the figure (metric, label, value) as metrics_exporter_totals keys it.
--   metrics_generation_deltas  (generations, created|completed|failed), (generations_in_progress,
--                              queued|processing) and (last_finished_generation_ms, '': NULL when the row
--                              finished nothing)
--   metrics_pose_deltas        (poses_pending, ''), (poses, completed|failed)
--   metrics_exporter_deltas    the reaper's counts (exporter_count()) as they are
-- last_finished_generation_ms combines by max, every other figure by sum (app/bookkeeping.py).
CREATE OR REPLACE VIEW metrics_exporter_pending (source, delta_id, metric, label, value) AS
SELECT 'generation'::text, d.id, e.metric, e.label, e.value
  FROM metrics_generation_deltas d
 CROSS JOIN LATERAL (VALUES ('generations', 'created', d.created_total::bigint),
                            ('generations', 'completed', d.completed_total),
                            ('generations', 'failed', d.failed_total),
                            ('generations_in_progress', 'queued', d.queued),
                            ('generations_in_progress', 'processing', d.processing),
                            ('last_finished_generation_ms', '', d.last_finished_ms)) AS e (metric, label, value)
UNION ALL
SELECT 'pose', d.id, e.metric, e.label, e.value
  FROM metrics_pose_deltas d
 CROSS JOIN LATERAL (VALUES ('poses_pending', '', d.pending::bigint), ('poses', 'completed', d.completed_total),
                            ('poses', 'failed', d.failed_total)) AS e (metric, label, value)
UNION ALL
SELECT 'exporter', id, metric, label, value FROM metrics_exporter_deltas;
