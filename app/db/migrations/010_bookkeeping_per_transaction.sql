-- Bookkeeping per statement and per transaction, and folding off the write path (no schema change; the
-- functions and triggers are in app/db/functions/).
--
-- Measured with pgbench of posegen_create_generations (bench/bookkeeping_cost.py), the bookkeeping of 008
-- still cost a create batch about 1.4x what it costs without: three trigger calls and three delta rows per
-- create, a deferred trigger call per create, and a fold inside one commit in 16.
-- 1. Inserts are counted per statement (metrics_rows_inserted, from transition tables), and a caller
--    that inserts row after row in one transaction may count them itself, once, at the end: the batch
--    create counts its 16 creates in three statements (posegen.metrics_counted_by_caller).
-- 2. Nothing folds at commit any more: the workers (app/worker/reaper.py) and the exporter
--    (exporter/folding.py) fold on a timer, and every reader (exporter scrape, admin metrics) folds
--    before it reads and adds what is left, as before.
-- Updates and deletes keep their row triggers.

-- Replaced by the statement-level metrics_*_insert triggers (in a database migrated from 001 none of
-- these exist yet: functions and triggers are applied after the migrations).
DROP TRIGGER IF EXISTS metrics_generations_insert_delete ON generations;
DROP TRIGGER IF EXISTS metrics_credit_ledger_insert_delete ON credit_ledger;
DROP TRIGGER IF EXISTS metrics_generation_poses_insert ON generation_poses;
DROP FUNCTION IF EXISTS metrics_generation_poses_inserted();

DROP TRIGGER IF EXISTS metrics_fold_after_generation ON generations;
DROP TRIGGER IF EXISTS metrics_fold_after_error ON error_events;
DROP FUNCTION IF EXISTS metrics_fold_at_commit();
DROP SEQUENCE metrics_fold_ticket;
