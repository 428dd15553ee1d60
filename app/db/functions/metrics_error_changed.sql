-- Admin rollup deltas, as metrics_generation_changed.sql describes.
-- Error events.
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION metrics_error_changed() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO metrics_error_deltas (hour, error_type, events)
    SELECT date_trunc('hour', c.occurred_at, 'UTC'), c.error_type, sum(c.sign)
      FROM (SELECT -1 AS sign, OLD.occurred_at, OLD.error_type WHERE TG_OP <> 'INSERT'
            UNION ALL
            SELECT 1, NEW.occurred_at, NEW.error_type WHERE TG_OP <> 'DELETE') c
     GROUP BY 1, 2 HAVING sum(c.sign) <> 0;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_error_events_insert_delete AFTER INSERT OR DELETE ON error_events
    FOR EACH ROW EXECUTE FUNCTION metrics_error_changed();

CREATE OR REPLACE TRIGGER metrics_error_events_update AFTER UPDATE OF error_type, occurred_at ON error_events
    FOR EACH ROW
    WHEN (OLD.error_type IS DISTINCT FROM NEW.error_type OR OLD.occurred_at IS DISTINCT FROM NEW.occurred_at)
    EXECUTE FUNCTION metrics_error_changed();
