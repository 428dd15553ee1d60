-- A TRUNCATE of a source table leaves no rows to subtract: the rollups are rebuilt.
CREATE OR REPLACE FUNCTION metrics_rebuild_after_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM metrics_rebuild();
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_generations_truncate AFTER TRUNCATE ON generations
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();

CREATE OR REPLACE TRIGGER metrics_generation_poses_truncate AFTER TRUNCATE ON generation_poses
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();

CREATE OR REPLACE TRIGGER metrics_credit_ledger_truncate AFTER TRUNCATE ON credit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();

CREATE OR REPLACE TRIGGER metrics_error_events_truncate AFTER TRUNCATE ON error_events
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_rebuild_after_truncate();
