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

-- Databases migrated before functions moved to app/db/functions/ have 002's counting triggers and
-- functions; one migrated since never had them.
DROP TRIGGER IF EXISTS exporter_generations_insert_delete ON generations;
DROP TRIGGER IF EXISTS exporter_generations_status ON generations;
DROP TRIGGER IF EXISTS exporter_generation_poses_insert_delete ON generation_poses;
DROP TRIGGER IF EXISTS exporter_generation_poses_status ON generation_poses;
DROP TRIGGER IF EXISTS exporter_credit_ledger_insert ON credit_ledger;
DROP TRIGGER IF EXISTS exporter_error_events_insert ON error_events;
DROP FUNCTION IF EXISTS exporter_generation_changed();
DROP FUNCTION IF EXISTS exporter_generation_pose_changed();
DROP FUNCTION IF EXISTS exporter_credit_recorded();
DROP FUNCTION IF EXISTS exporter_error_recorded();
DROP FUNCTION IF EXISTS exporter_counters_rebuild();
DROP FUNCTION IF EXISTS exporter_record_latest(text, bigint);
DROP FUNCTION IF EXISTS exporter_observe(text, bigint);
DROP TABLE exporter_counters, exporter_histograms;
DROP SEQUENCE exporter_shard_seq;
-- Kept from 002: exporter_histogram_bounds and exporter_bucket(metric, ms); exporter_count() (the
-- reaper's counts of 007, events no row keeps) now appends to metrics_exporter_deltas, below.
-- The functions and triggers are in app/db/functions/ (metrics_observe, metrics_fold, metrics_rebuild,
-- metrics_generation_poses_inserted and the metrics_*_changed trigger functions).

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

-- Observations per bucket, not cumulative.
CREATE TABLE metrics_histogram_totals (
    metric  text NOT NULL,
    le      float8 NOT NULL,
    count   bigint NOT NULL,
    sum_ms  bigint NOT NULL,
    PRIMARY KEY (metric, le)
);

-- 003's row trigger on pose slot inserts gives way to a statement-level one (metrics_generation_poses_insert).
DROP TRIGGER IF EXISTS metrics_generation_poses_insert_delete ON generation_poses;

-- after functions:
-- Backfill: every figure from the rows already there (the deltas written before now lack the new columns).
SELECT metrics_rebuild();
INSERT INTO metrics_exporter_totals (metric, label, value) SELECT metric, label, value FROM carried_exporter_counts;
