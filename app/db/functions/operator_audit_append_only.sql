-- The operators' audit (migration 009) is append-only: updates, deletes and truncates are refused.
-- The application's role holds no UPDATE, DELETE or TRUNCATE on the table at all (app/db/grants.sql); these
-- triggers hold for every other role, and fire ALWAYS: a plain trigger is skipped under
-- session_replication_role = replica, which a superuser may set to rewrite rows past it.
CREATE OR REPLACE FUNCTION operator_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE OR REPLACE TRIGGER operator_audit_no_update_or_delete BEFORE UPDATE OR DELETE ON operator_audit
    FOR EACH ROW EXECUTE FUNCTION operator_audit_append_only();

CREATE OR REPLACE TRIGGER operator_audit_no_truncate BEFORE TRUNCATE ON operator_audit
    FOR EACH STATEMENT EXECUTE FUNCTION operator_audit_append_only();

-- CREATE OR REPLACE TRIGGER leaves a trigger plainly enabled: made ALWAYS again here, in the same transaction.
ALTER TABLE operator_audit ENABLE ALWAYS TRIGGER operator_audit_no_update_or_delete,
    ENABLE ALWAYS TRIGGER operator_audit_no_truncate;
