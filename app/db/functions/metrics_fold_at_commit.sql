-- At commit of a transaction that created a generation or recorded an error: fold, briefly, in one of
-- every 16 such transactions (each fold then moves the deltas of about 16 at once; readers fold before
-- they read and add whatever is left, so figures stay exact). A failing fold must never fail the business
-- transaction; the deltas simply wait for the next one.
CREATE OR REPLACE FUNCTION metrics_fold_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('posegen.metrics_folded', true) = 'yes' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('posegen.metrics_folded', 'yes', true);
    IF nextval('metrics_fold_ticket') % 16 <> 0 THEN
        RETURN NULL;
    END IF;
    BEGIN
        PERFORM metrics_fold(1000);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'metrics_fold skipped: %', SQLERRM;
    END;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS metrics_fold_after_generation ON generations;
CREATE CONSTRAINT TRIGGER metrics_fold_after_generation AFTER INSERT ON generations
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION metrics_fold_at_commit();

DROP TRIGGER IF EXISTS metrics_fold_after_error ON error_events;
CREATE CONSTRAINT TRIGGER metrics_fold_after_error AFTER INSERT ON error_events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION metrics_fold_at_commit();
