-- A pose slot of a traced generation leaving pending: exemplars of its provider call and duration.
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION exporter_generation_pose_exemplar() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    trace text;
BEGIN
    SELECT trace_context ->> 'x-datadog-trace-id' INTO trace FROM generations WHERE id = NEW.generation_id;
    IF trace IS NOT NULL THEN
        PERFORM exporter_note_exemplar('provider_call', NEW.provider_ms, trace, NEW.generation_id);
        PERFORM exporter_note_exemplar('pose_duration', NEW.duration_ms, trace, NEW.generation_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER exporter_generation_poses_exemplar AFTER UPDATE OF status ON generation_poses
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed') AND OLD.status = 'pending')
    EXECUTE FUNCTION exporter_generation_pose_exemplar();
