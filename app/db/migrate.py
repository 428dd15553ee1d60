"""Apply the numbered ``.sql`` files in ``migrations/`` once each, recorded in ``schema_migrations``."""

from __future__ import annotations

from importlib import resources

import psycopg

from app.connections import pg_connect

# One advisory lock id, so two processes migrating at once apply each file once.
_MIGRATION_LOCK = 7_402_511


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("app.db") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    applied: list[str] = []
    with pg_connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def ensure_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` when it does not exist; True when created."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = info.get("dbname") or "postgres"
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with pg_connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return True
