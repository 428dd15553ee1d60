-- Counting inserted ledger rows, as metrics_generations_added.sql describes: charges and refunds per hour.
CREATE OR REPLACE FUNCTION metrics_credits_added(p_rows credit_ledger[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metrics_credit_deltas (hour, charged, refunded)
    SELECT date_trunc('hour', l.created_at, 'UTC'), coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0),
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'refund'), 0)
      FROM unnest(p_rows) AS l
     WHERE l.kind IN ('charge', 'refund')
     GROUP BY 1;
END;
$$;
