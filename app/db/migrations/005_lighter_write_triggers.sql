-- Lighter bookkeeping on the write path (migrations 002 and 003 keep their meaning; only cost changes).
--
-- Measured with pgbench calling posegen_create_generation from 10 clients (bench figures in docs/performance.md):
-- the row triggers and the fold at commit made a create cost about three times what it costs without
-- them, the fold alone about a third of it, though a fold right after another moves only a few rows.
--
-- 1. Folding at commit runs in one of every 16 transactions that create a generation or record an
--    error, so each fold moves the deltas of about 16 transactions at once. Readers still fold before
--    they read and add whatever is left, so every figure stays exact; deltas simply wait a little longer.
-- 2. The delta triggers take a short path for plain inserts (every create), which need no old-row
--    arithmetic; a pose slot inserted pending changes no generation figure, so it skips that insert.
--
-- The functions are in app/db/functions/ (metrics_fold_at_commit, metrics_*_changed); this keeps the
-- fold's ticket.

CREATE SEQUENCE metrics_fold_ticket;

