-- Creating a generation in one round trip: check the poses, insert the generation (or find the one an
-- Idempotency-Key already made), charge the account with its ledger row, and insert the pose slots.
--
-- The same steps as separate statements cost seven round trips, with the transaction (and the user's
-- balance row lock) held open across all of them; as one function call the API pays one. Called
-- outside an explicit transaction it is atomic by itself: an error leaves nothing written.
--
-- Outcomes (column "outcome"):
--   created        the new generation; "balance" is the balance after the charge
--   existing       the generation this user's Idempotency-Key made first; nothing charged
--   unknown_poses  "missing" lists the unknown pose ids in request order; nothing written
-- Not enough credits raises SQLSTATE PG402 with the current balance as the DETAIL, rolling back the
-- generation row inserted before the charge.
CREATE OR REPLACE FUNCTION posegen_create_generation(
    p_id text, p_user_id text, p_prompt text, p_pose_ids text[], p_price_per_pose integer,
    p_idempotency_key text, p_trace_context jsonb, p_queued_check_seconds double precision
) RETURNS TABLE (
    outcome text, generation_id text, status text, credits_charged bigint, attempt integer,
    created_at timestamptz, balance bigint, missing text[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_cost bigint := cardinality(p_pose_ids)::bigint * p_price_per_pose;
    v_missing text[];
    v_created_at timestamptz;
    v_balance bigint;
BEGIN
    SELECT array_agg(m.pose_id ORDER BY m.first_position) INTO v_missing
    FROM (
        SELECT t.pose_id, min(t.position) AS first_position
        FROM unnest(p_pose_ids) WITH ORDINALITY AS t(pose_id, position)
        WHERE NOT EXISTS (SELECT 1 FROM poses p WHERE p.pose_id = t.pose_id)
        GROUP BY t.pose_id
    ) m;
    IF v_missing IS NOT NULL THEN
        RETURN QUERY SELECT 'unknown_poses'::text, NULL::text, NULL::text, NULL::bigint, NULL::integer,
            NULL::timestamptz, NULL::bigint, v_missing;
        RETURN;
    END IF;

    -- Two requests racing with one key serialise here on the unique constraint.
    INSERT INTO generations AS g (id, user_id, prompt, status, poses_count, price_per_pose, credits_charged,
                                  idempotency_key, trace_context, lease_expires_at)
    VALUES (p_id, p_user_id, p_prompt, 'queued', cardinality(p_pose_ids), p_price_per_pose, v_cost,
            p_idempotency_key, p_trace_context, now() + make_interval(secs => p_queued_check_seconds))
    ON CONFLICT ON CONSTRAINT generations_idempotency DO NOTHING
    RETURNING g.created_at INTO v_created_at;
    IF v_created_at IS NULL THEN
        RETURN QUERY SELECT 'existing'::text, g.id, g.status, g.credits_charged, g.attempt, g.created_at,
            NULL::bigint, NULL::text[]
        FROM generations g WHERE g.user_id = p_user_id AND g.idempotency_key = p_idempotency_key;
        IF NOT FOUND THEN  -- the first request rolled back after we saw its key: the client retries
            RAISE EXCEPTION 'idempotency key conflict vanished; retry the request' USING ERRCODE = '40001';
        END IF;
        RETURN;
    END IF;

    UPDATE credit_accounts AS a SET balance = a.balance - v_cost, updated_at = now()
    WHERE a.user_id = p_user_id AND a.balance >= v_cost
    RETURNING a.balance INTO v_balance;
    IF v_balance IS NULL THEN
        SELECT a.balance INTO v_balance FROM credit_accounts a WHERE a.user_id = p_user_id;
        RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'PG402', DETAIL = coalesce(v_balance, 0)::text;
    END IF;
    INSERT INTO credit_ledger (user_id, kind, amount, balance_after, generation_id)
    VALUES (p_user_id, 'charge', v_cost, v_balance, p_id);

    INSERT INTO generation_poses (generation_id, position, pose_id)
    SELECT p_id, t.position - 1, t.pose_id FROM unnest(p_pose_ids) WITH ORDINALITY AS t(pose_id, position);

    RETURN QUERY SELECT 'created'::text, p_id, 'queued'::text, v_cost, 1, v_created_at, v_balance,
        NULL::text[];
END;
$$;
