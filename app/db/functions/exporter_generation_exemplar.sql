-- A traced generation entering completed or failed: an exemplar of its duration.
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION exporter_generation_exemplar() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM exporter_note_exemplar('generation_duration', NEW.duration_ms,
                                   NEW.trace_context ->> 'x-datadog-trace-id', NEW.id);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER exporter_generations_exemplar AFTER UPDATE OF status ON generations
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed') AND OLD.status NOT IN ('completed', 'failed')
          AND NEW.trace_context IS NOT NULL)
    EXECUTE FUNCTION exporter_generation_exemplar();
