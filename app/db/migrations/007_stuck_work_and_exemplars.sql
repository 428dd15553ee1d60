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
--    observation, not every one). The exemplar functions and triggers are in app/db/functions/.

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

