-- Admin rollup deltas, as metrics_generation_changed.sql describes.
-- Ledger charges and refunds: deletes and updates (inserts: metrics_rows_inserted.sql).
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION metrics_credit_changed() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO metrics_credit_deltas (hour, charged, refunded)
    SELECT date_trunc('hour', c.created_at, 'UTC'),
           coalesce(sum(c.sign * c.amount) FILTER (WHERE c.kind = 'charge'), 0),
           coalesce(sum(c.sign * c.amount) FILTER (WHERE c.kind = 'refund'), 0)
      FROM (SELECT -1 AS sign, OLD.created_at, OLD.kind, OLD.amount
            UNION ALL
            SELECT 1, NEW.created_at, NEW.kind, NEW.amount WHERE TG_OP <> 'DELETE') c
     WHERE c.kind IN ('charge', 'refund')
     GROUP BY 1;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_credit_ledger_delete AFTER DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION metrics_credit_changed();

CREATE OR REPLACE TRIGGER metrics_credit_ledger_update AFTER UPDATE OF kind, amount, created_at ON credit_ledger
    FOR EACH ROW
    WHEN (OLD.kind IS DISTINCT FROM NEW.kind OR OLD.amount IS DISTINCT FROM NEW.amount
          OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION metrics_credit_changed();
