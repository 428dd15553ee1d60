-- Inserts into the counted tables are counted per statement (metrics_*_added, from the statement's
-- transition table): one trigger call and a few delta rows per statement, however many rows it inserts.
--
-- A caller that inserts row after row in one transaction can take the counting over: while the setting
-- posegen.metrics_counted_by_caller is 'on' (transaction-local), these triggers skip, and the caller
-- passes the rows it inserted, as they are at the end, to the same metrics_*_added functions once before
-- clearing the setting (posegen_create_generations does: 16 creates, three delta statements). Only
-- inserts are handed over: updates and deletes are always counted by their row triggers, so a caller must
-- not update or delete the rows it has not counted yet.
-- SECURITY DEFINER (as the schema's owner): the application's role may only read the derived tables it
-- writes (app/db/grants.sql); search_path pinned, as PostgreSQL's docs ask of such functions.
CREATE OR REPLACE FUNCTION metrics_rows_inserted() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    CASE TG_TABLE_NAME
        WHEN 'generations' THEN
            PERFORM metrics_generations_added(ARRAY(SELECT i::generations FROM inserted i));
        WHEN 'generation_poses' THEN
            PERFORM metrics_generation_poses_added(ARRAY(SELECT i::generation_poses FROM inserted i));
        WHEN 'credit_ledger' THEN
            PERFORM metrics_credits_added(ARRAY(SELECT i::credit_ledger FROM inserted i));
    END CASE;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER metrics_generations_insert AFTER INSERT ON generations
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    WHEN (current_setting('posegen.metrics_counted_by_caller', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION metrics_rows_inserted();

CREATE OR REPLACE TRIGGER metrics_generation_poses_insert AFTER INSERT ON generation_poses
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    WHEN (current_setting('posegen.metrics_counted_by_caller', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION metrics_rows_inserted();

CREATE OR REPLACE TRIGGER metrics_credit_ledger_insert AFTER INSERT ON credit_ledger
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT
    WHEN (current_setting('posegen.metrics_counted_by_caller', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION metrics_rows_inserted();
