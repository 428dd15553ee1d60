#!/bin/sh
# The application's database role (docs/configuration.md "Database roles"): created when missing, as a plain LOGIN role that
# owns nothing, its password kept in step with POSEGEN_APP_DB_PASSWORD. `posegen migrate` (as the owner) then
# grants it exactly what the API, workers and exporter use. Run by compose's postgres-roles service with the
# owner's PG* variables, before every migrate, so a database created before the role existed gets it too.
set -eu
psql -v ON_ERROR_STOP=1 -v role="${POSEGEN_APP_DB_ROLE:-posegen_app}" -v password="$POSEGEN_APP_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" PASSWORD :'password';
SQL
