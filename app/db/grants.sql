-- Who may do what in the schema, re-applied by every `posegen migrate` after the functions, in its transaction.
--
-- Two roles: the owner, who runs `posegen migrate` (POSEGEN_MIGRATION_DATABASE_URL) and owns every table and
-- function, and the application's role (POSEGEN_APP_DB_ROLE), which the API, the workers and the exporter
-- connect as (DATABASE_URL). The application's role owns nothing and is no superuser, so it cannot change the
-- schema (CREATE, ALTER, DROP), turn a trigger off, or set session_replication_role; it holds exactly the
-- privileges below, found by reading every statement of app/, exporter/ and the functions it calls.
--
-- The bookkeeping (the metrics_* deltas and rollups, the exporter's totals, histograms and exemplars) is
-- derived from the source tables by triggers and folded by metrics_fold(). Those trigger functions, the fold,
-- exporter_count() and posegen_create_generations() are SECURITY DEFINER: they run as the owner, so the
-- application's role only reads the derived tables and every figure follows from the rows it wrote. Run as the
-- invoker instead, they would need INSERT, UPDATE and DELETE on all sixteen derived tables for the
-- application's role, which could then write any figure it liked.

-- Every function runs for the roles granted it below, not for every role that can connect (PostgreSQL's
-- default): the SECURITY DEFINER ones would otherwise act as the owner for anyone. Only functions of ours, not
-- an extension's that someone installed in this schema.
DO $$
DECLARE
    ours regprocedure;
BEGIN
    FOR ours IN
        SELECT p.oid FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = current_user::regrole
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', ours);
    END LOOP;
END;
$$;

-- the application's role:
-- From nothing, so a privilege taken out of this file is taken away from the role on the next run.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {app_role};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {app_role};
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {app_role};
REVOKE ALL ON SCHEMA public FROM {app_role};
-- PostgreSQL 15's default for new databases; older ones let every role create objects here.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE {database} TO {app_role};
GRANT USAGE ON SCHEMA public TO {app_role};

-- The pose library: read by the API and the workers; written by `posegen seed`, as the owner.
GRANT SELECT ON poses TO {app_role};

-- Credits: accounts are opened by a grant and their balances move; the ledger is append-only.
GRANT SELECT, INSERT, UPDATE ON credit_accounts TO {app_role};
GRANT SELECT, INSERT ON credit_ledger TO {app_role};
GRANT USAGE ON SEQUENCE credit_ledger_id_seq TO {app_role};

-- Generations and pose slots: inserted by posegen_create_generations() only; the workers, the reaper, refunds
-- and retries update them (and lock them with FOR UPDATE); nothing deletes them.
GRANT SELECT, UPDATE ON generations, generation_poses TO {app_role};
GRANT EXECUTE ON FUNCTION posegen_create_generations(jsonb, integer, double precision) TO {app_role};

-- Recorded errors and the history of retries: appended, read by the admin metrics and search.
GRANT SELECT, INSERT ON error_events, generation_runs, generation_pose_attempts TO {app_role};
GRANT USAGE ON SEQUENCE error_events_id_seq TO {app_role};

-- The operators' audit: appended and read, never updated, deleted or truncated (nor by anyone: the triggers
-- of app/db/functions/operator_audit_append_only.sql fire ALWAYS). The sequence: audit ids reserved ahead.
GRANT SELECT, INSERT ON operator_audit TO {app_role};
GRANT USAGE ON SEQUENCE operator_audit_id_seq TO {app_role};

-- The bookkeeping: read by the admin metrics and the exporter, written only by the functions above.
GRANT SELECT ON metrics_generation_deltas, metrics_generation_hourly, metrics_user_totals, metrics_pose_deltas,
    metrics_pose_usage, metrics_credit_deltas, metrics_credit_hourly, metrics_error_deltas, metrics_error_hourly,
    metrics_error_totals, metrics_histogram_deltas, metrics_histogram_totals, metrics_exporter_deltas,
    metrics_exporter_totals, metrics_exporter_pending, exporter_histogram_bounds, exporter_histogram_exemplars
    TO {app_role};
GRANT EXECUTE ON FUNCTION metrics_fold(integer), exporter_count(text, text, bigint) TO {app_role};
