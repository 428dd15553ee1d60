-- Admin rollup deltas, as metrics_generation_changed.sql describes.
-- Ledger charges and refunds.
CREATE OR REPLACE FUNCTION metrics_credit_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.kind IN ('charge', 'refund') THEN
            INSERT INTO metrics_credit_deltas (hour, charged, refunded)
            VALUES (date_trunc('hour', NEW.created_at, 'UTC'),
                    CASE WHEN NEW.kind = 'charge' THEN NEW.amount ELSE 0 END,
                    CASE WHEN NEW.kind = 'refund' THEN NEW.amount ELSE 0 END);
        END IF;
        RETURN NULL;
    END IF;
    INSERT INTO metrics_credit_deltas (hour, charged, refunded)
    SELECT date_trunc('hour', c.created_at, 'UTC'),
           coalesce(sum(c.sign * c.amount) FILTER (WHERE c.kind = 'charge'), 0),
           coalesce(sum(c.sign * c.amount) FILTER (WHERE c.kind = 'refund'), 0)
      FROM (SELECT -1 AS sign, OLD.created_at, OLD.kind, OLD.amount WHERE TG_OP <> 'INSERT'
            UNION ALL
            SELECT 1, NEW.created_at, NEW.kind, NEW.amount WHERE TG_OP <> 'DELETE') c
     WHERE c.kind IN ('charge', 'refund')
     GROUP BY 1;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_credit_ledger_insert_delete AFTER INSERT OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION metrics_credit_changed();

CREATE OR REPLACE TRIGGER metrics_credit_ledger_update AFTER UPDATE OF kind, amount, created_at ON credit_ledger
    FOR EACH ROW
    WHEN (OLD.kind IS DISTINCT FROM NEW.kind OR OLD.amount IS DISTINCT FROM NEW.amount
          OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION metrics_credit_changed();
