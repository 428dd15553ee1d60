-- Many creates in one transaction: the API gathers concurrent POST /generations into one call, so they
-- share one commit. Per create, PostgreSQL spent more on committing (the WAL flush everyone queues
-- behind, the bookkeeping at commit) than on the create itself: pgbench of posegen_create_generation
-- in transactions of 16 did about 40% more creates per second than one per transaction, on less CPU.
--
-- Each item runs posegen_create_generation in its own subtransaction, so one item's failure (not
-- enough credits, a vanished idempotency key, anything else) undoes that item alone and is returned
-- as its outcome 'error' with the SQLSTATE, message and detail. Items run in user order, so two
-- batches lock balance rows in one order and cannot deadlock on them. Callers keep batches well
-- under 64 items (PostgreSQL caches 64 subtransaction ids per backend; more slows every snapshot).
--
-- The bookkeeping of the batch is written once, at the end (metrics_rows_inserted.sql): while the items
-- run, the insert triggers of the counted tables skip, and metrics_generations_created then counts the
-- generations created, their slots and charges, in three statements instead of three trigger calls each.
--
-- SECURITY DEFINER (as the schema's owner): the application's role creates generations and their pose slots
-- through this function only (it holds no INSERT on those tables), and the counting at the end writes the
-- derived tables it may only read (app/db/grants.sql). search_path pinned, as PostgreSQL's docs ask.
--
-- p_items: a JSON array of {"id", "userId", "prompt", "poseIds": [...], "idempotencyKey", "traceContext"}.
-- One row per item, "item" being its 0-based position in p_items.
CREATE OR REPLACE FUNCTION posegen_create_generations(
    p_items jsonb, p_price_per_pose integer, p_queued_check_seconds double precision
) RETURNS TABLE (
    item integer, outcome text, generation_id text, status text, credits_charged bigint, attempt integer,
    created_at timestamptz, balance bigint, missing text[], error_state text, error_message text,
    error_detail text
) LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    entry record;
    created record;
    counted_by_caller text := current_setting('posegen.metrics_counted_by_caller', true);
    created_ids text[] := '{}';
BEGIN
    PERFORM set_config('posegen.metrics_counted_by_caller', 'on', true);
    FOR entry IN
        SELECT (e.position - 1)::integer AS position, e.value AS v
          FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(value, position)
         ORDER BY e.value->>'userId' COLLATE "C", e.position
    LOOP
        item := entry.position;
        BEGIN
            SELECT * INTO STRICT created FROM posegen_create_generation(
                entry.v->>'id', entry.v->>'userId', entry.v->>'prompt',
                ARRAY(SELECT jsonb_array_elements_text(entry.v->'poseIds')), p_price_per_pose,
                entry.v->>'idempotencyKey', nullif(entry.v->'traceContext', 'null'::jsonb),
                p_queued_check_seconds);
            outcome := created.outcome;
            generation_id := created.generation_id;
            status := created.status;
            credits_charged := created.credits_charged;
            attempt := created.attempt;
            created_at := created.created_at;
            balance := created.balance;
            missing := created.missing;
            error_state := NULL;
            error_message := NULL;
            error_detail := NULL;
            IF created.outcome = 'created' THEN
                created_ids := created_ids || created.generation_id;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            outcome := 'error';
            generation_id := NULL;
            status := NULL;
            credits_charged := NULL;
            attempt := NULL;
            created_at := NULL;
            balance := NULL;
            missing := NULL;
            GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT,
                                    error_detail = PG_EXCEPTION_DETAIL;
        END;
        RETURN NEXT;
    END LOOP;
    PERFORM metrics_generations_created(created_ids);
    PERFORM set_config('posegen.metrics_counted_by_caller', coalesce(counted_by_caller, ''), true);
END;
$$;
