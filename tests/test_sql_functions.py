"""SQL functions and their triggers live in app/db/functions/, one file each, re-applied by every `posegen migrate`;
migrations hold schema changes only."""

from __future__ import annotations

import os
import re

import psycopg

from app.db.migrate import function_files, migrate, migration_files
from tests.stack import create_database, drop_database

FUNCTION = re.compile(r"^CREATE OR REPLACE FUNCTION (\w+)\(.*?\$\$(.*?)\$\$;", re.M | re.S)
TRIGGER = re.compile(r"^CREATE (?:OR REPLACE |CONSTRAINT )TRIGGER (\w+) .*? ON (\w+)", re.M | re.S)


def declared() -> tuple[dict[str, str], set[tuple[str, str]]]:
    """Function bodies by name, and (trigger, table) pairs, as the function files state them."""
    bodies: dict[str, str] = {}
    triggers: set[tuple[str, str]] = set()
    for name, sql in function_files():
        found = FUNCTION.findall(sql)
        assert [function for function, _ in found] == [name], f"{name}.sql must define the function {name} alone"
        bodies[name] = found[0][1]
        triggers |= set(TRIGGER.findall(sql))
    return bodies, triggers


def test_migrations_create_no_function_or_trigger() -> None:
    for version, sql in migration_files():
        assert not re.search(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?(CONSTRAINT\s+)?(FUNCTION|TRIGGER)\b", sql,
                             re.M | re.I), version


def test_migrate_applies_every_function_file_idempotently() -> None:
    bodies, triggers = declared()
    assert {"metrics_fold", "metrics_rebuild", "posegen_create_generations"} <= set(bodies)
    assert ("metrics_generations_insert", "generations") in triggers
    name = "posegen_functions_" + os.urandom(4).hex()
    url = create_database(name)
    try:
        assert migrate(url)[0] == "001_core"
        assert migrate(url) == []  # up to date: the function files are applied again, changing nothing
        with psycopg.connect(url) as conn:
            in_database = dict(conn.execute(
                "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'public'").fetchall())
            database_triggers = set(conn.execute(
                "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE NOT t.tgisinternal").fetchall())
    finally:
        drop_database(name)
    assert in_database == bodies
    assert database_triggers == triggers
