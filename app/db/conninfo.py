"""Say in one line what is wrong with a ``DATABASE_URL``, without its password."""

from __future__ import annotations

import psycopg


def describe_database_url(database_url: str) -> str:
    """``user@host:port/dbname`` of a libpq URL or conninfo string, the password left out."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return "DATABASE_URL (unparsable)"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"{user}{info.get('host') or 'local socket'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def database_problem(database_url: str, error: Exception) -> str:
    """One line: ``PostgreSQL at user@host:port/db: <what the server (or libpq) said>``.

    ``role "x" does not exist``, ``password authentication failed``, ``Connection refused``
    come through as libpq words them; whitespace, tabs and newlines are folded to single spaces.
    """
    said = " ".join(str(error).split()).removeprefix("connection failed: ")
    return f"PostgreSQL at {describe_database_url(database_url)}: {said}"
