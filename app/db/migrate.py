"""Apply the numbered ``.sql`` files in ``migrations/`` once each, recorded in ``schema_migrations``, then the
current definition of every SQL function and of the triggers that call it, from ``functions/``.

Migrations hold schema changes; each function (with its triggers) lives in one file of ``functions/``,
written to be re-applied (``CREATE OR REPLACE``), applied on every run in file-name order, so the body a
reader finds there is the body the database runs. A file whose SQL-language body calls another function
must sort after that function's file. A migration's data step that needs the functions (a backfill
through ``metrics_rebuild()``) follows a line :data:`AFTER_FUNCTIONS` and runs once they are in place.
Then the privileges (``grants.sql``, :mod:`app.db.privileges`): every run re-applies them, for the
application's role when one is named. Pending migrations, the functions, those data steps and the privileges
commit together, or not at all. Run it as the role that owns the schema.
"""

from __future__ import annotations

from importlib import resources

import psycopg

from app.connections import pg_connect
from app.db.privileges import apply_grants

# One advisory lock id, so two processes migrating at once apply each file once.
_MIGRATION_LOCK = 7_402_511
# In a migration, what follows this line runs after the functions are (re)applied.
AFTER_FUNCTIONS = "-- after functions:"


def sql_files(folder_name: str) -> list[tuple[str, str]]:
    """``(name without .sql, text)`` of the ``.sql`` files in ``app/db/<folder_name>``, in name order."""
    folder = resources.files("app.db") / folder_name
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def migration_files() -> list[tuple[str, str]]:
    return sql_files("migrations")


def function_files() -> list[tuple[str, str]]:
    return sql_files("functions")


def migrate(database_url: str, migrations: list[tuple[str, str]] | None = None,
            functions: list[tuple[str, str]] | None = None, *, app_role: str | None = None) -> list[str]:
    """Apply pending migrations, then every function file, then the privileges, granting ``app_role`` (when
    given) exactly what the processes use; returns the migration versions applied now (empty when up to date).
    Raises psycopg's errors, or :class:`~app.db.privileges.AppRoleError` for an unfit ``app_role``, with nothing
    of this run committed. ``migrations`` and ``functions`` (``(name, sql)`` in order) replace this package's
    files: a benchmark builds an earlier design from git history with them."""
    applied: list[str] = []
    with pg_connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            with conn.transaction():
                data_steps: list[str] = []
                for version, sql in migration_files() if migrations is None else migrations:
                    if version in done:
                        continue
                    schema, _, after_functions = sql.partition(AFTER_FUNCTIONS)
                    conn.execute(schema)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                    applied.append(version)
                    data_steps.append(after_functions)
                for _, sql in function_files() if functions is None else functions:
                    conn.execute(sql)
                for step in data_steps:
                    if step.strip():
                        conn.execute(step)
                apply_grants(conn, app_role)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def ensure_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` when it does not exist; True when created."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = str(info.get("dbname") or "postgres")
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with pg_connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return True
