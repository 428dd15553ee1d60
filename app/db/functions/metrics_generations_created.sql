-- Counting, at the end of a transaction that took the counting over (metrics_rows_inserted.sql), the
-- generations it created: their rows, pose slots and charges as they are now, in three statements.
-- A generation created in this transaction has no pose slot or ledger row from before it (their foreign
-- keys need it), so these are exactly the rows the creates inserted: its slots and its charge (the one
-- ledger row a create writes; filtered on the kinds of the partial index credit_ledger_one_charge, to
-- use it).
--
-- The lookups are by key, so they never scan a table: a plan made while a table looked small (statistics
-- not refreshed yet after a fresh start) would otherwise scan it on every call as it grows.
CREATE OR REPLACE FUNCTION metrics_generations_created(p_ids text[]) RETURNS void LANGUAGE plpgsql
SET enable_seqscan = off AS $$
BEGIN
    IF cardinality(p_ids) = 0 THEN
        RETURN;
    END IF;
    PERFORM metrics_generations_added(ARRAY(SELECT g FROM generations g WHERE g.id = ANY (p_ids)));
    PERFORM metrics_generation_poses_added(ARRAY(SELECT p FROM generation_poses p WHERE p.generation_id = ANY (p_ids)));
    PERFORM metrics_credits_added(ARRAY(SELECT l FROM credit_ledger l
                                         WHERE l.generation_id = ANY (p_ids) AND l.kind IN ('charge', 'waiver')));
END;
$$;
