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
--
-- Replaced by the shared bookkeeping of 008, which drops these tables (and, in databases migrated before
-- functions moved to app/db/functions/, the counting functions and triggers this file created then); the
-- bucket bounds and their lookup (app/db/functions/exporter_bucket.sql) stay.

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
