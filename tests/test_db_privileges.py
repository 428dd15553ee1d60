"""Operators' powers stay in operators' hands: the processes connect as a role that owns nothing and is no
superuser, holding exactly what `posegen migrate` grants it (app/db/grants.sql).

Each attack is made as the role an attacker would hold: the application's (its credentials leaked, or SQL
injected into one of its statements), with the privileges `posegen migrate --app-role` gave it, and once as the
owner itself in replica mode. Every role and database made here has a unique name and is dropped at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import errors, sql

from app.api.auth import Role
from app.db.privileges import url_as_role
from app.settings import Settings, SettingsError
from tests.dev_commands import admin_token, banner_lines, dev_env, drop_dev_role, wait_for_banner
from tests.stack import (
    ROOT,
    Stack,
    check_ledger_invariants,
    create_database,
    database_url,
    drop_database,
    free_port,
    running_stack,
)
from tests.support.dev_stack import four_pose_generation_completes
from tests.support.exporter import (
    StartExporter,
    assert_exporter_matches_database,
    expected_from_database,
    exporter_fixture,  # noqa: F401 - the start_exporter fixture
    parse,
    scrape,
)

POSES = ["pose_tree_pose", "pose_arms_crossed", "pose_waving_hello"]


def posegen(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def _admin_conn() -> psycopg.Connection[Any]:
    return psycopg.connect(database_url("postgres"), autocommit=True)


@pytest.fixture(scope="module")
def app_role() -> Iterator[str]:
    """A plain LOGIN role of this test run, as an operator creates the application's (dropped at the end, after
    the databases holding its privileges)."""
    name = f"posegen_app_test_{uuid.uuid4().hex[:8]}"
    with _admin_conn() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    with _admin_conn() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def granted_db(app_role: str) -> Iterator[str]:
    """A database migrated and seeded through the CLI, as an operator does: `posegen migrate` and `posegen seed`
    as the owner (POSEGEN_MIGRATION_DATABASE_URL), granting the application's role (POSEGEN_APP_DB_ROLE).

    It starts as a database made before PostgreSQL 15 was (every role could create objects in the public
    schema), so `posegen migrate` must take that away too."""
    name = f"posegen_priv_{uuid.uuid4().hex[:8]}"
    owner_url = create_database(name)
    try:
        with psycopg.connect(owner_url, autocommit=True) as conn:
            conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        env = {"POSEGEN_MIGRATION_DATABASE_URL": owner_url, "POSEGEN_APP_DB_ROLE": app_role,
               # The processes' URL: migrate and seed never use it.
               "DATABASE_URL": url_as_role(owner_url, app_role)}
        migrated = posegen("migrate", **env)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert "applied: 001_core" in migrated.stdout
        assert f"privileges of the application's role {app_role}: granted" in migrated.stdout
        seeded = posegen("seed", **env)
        assert seeded.returncode == 0 and "poses" in seeded.stdout, seeded.stdout + seeded.stderr
        yield name
    finally:
        drop_database(name)


def as_app(db_name: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url_as_role(database_url(db_name), role), autocommit=True)


def audit_rows(db_name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url(db_name)) as conn:
        return conn.execute("SELECT id, actor, action, target FROM operator_audit ORDER BY id").fetchall()


def append_audit_row(db_name: str, role: str) -> None:
    """The application's role appends to the audit, as the API does for an operator's action."""
    with as_app(db_name, role) as conn:
        conn.execute("INSERT INTO operator_audit (actor, action, target) VALUES ('oncall-alice', 'pause_intake',"
                     " '{\"reason\": \"provider maintenance\"}')")


def test_the_application_role_cannot_rewrite_delete_or_truncate_the_audit(granted_db: str, app_role: str) -> None:
    append_audit_row(granted_db, app_role)
    before = audit_rows(granted_db)
    with as_app(granted_db, app_role) as conn:
        for attack in ("UPDATE operator_audit SET actor = 'someone-else', target = '{}'",
                       "DELETE FROM operator_audit", "TRUNCATE operator_audit"):
            # Refused by the privileges themselves: the role holds no UPDATE, DELETE or TRUNCATE on the table
            # (the triggers, which would refuse it too, are the next test's).
            with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table operator_audit"):
                conn.execute(attack)
    assert audit_rows(granted_db) == before


def test_replica_mode_is_out_of_the_application_roles_reach_and_does_not_help_the_owner(
        granted_db: str, app_role: str) -> None:
    """`SET session_replication_role = replica` skips plain triggers: the application's role may not set it (no
    superuser), and for the owner, who may, the audit's triggers fire ALWAYS."""
    append_audit_row(granted_db, app_role)
    before = audit_rows(granted_db)
    with as_app(granted_db, app_role) as conn:
        for statement in ("SET session_replication_role = replica", "SET LOCAL session_replication_role = replica"):
            with pytest.raises(errors.InsufficientPrivilege, match='permission denied to set parameter'):
                conn.execute(statement)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    with psycopg.connect(database_url(granted_db)) as owner:  # postgres: a superuser owning the schema
        for attack in ("UPDATE operator_audit SET actor = 'someone-else'", "DELETE FROM operator_audit",
                       "TRUNCATE operator_audit, generation_runs"):  # with the table whose rows refer to it
            with owner.transaction():
                owner.execute("SET LOCAL session_replication_role = replica")
                with pytest.raises(errors.InsufficientPrivilege, match="operator_audit is append-only"):
                    with owner.transaction():
                        owner.execute(attack)
    assert audit_rows(granted_db) == before


def test_the_application_role_cannot_change_the_schema(granted_db: str, app_role: str) -> None:
    with as_app(granted_db, app_role) as conn:
        for attack, refusal in (
            ("CREATE TABLE stash (x int)", "permission denied for schema public"),
            ("CREATE FUNCTION operator_audit_append_only_off() RETURNS int LANGUAGE sql AS 'SELECT 1'",
             "permission denied for schema public"),
            ("ALTER TABLE operator_audit DISABLE TRIGGER ALL", "must be owner of table operator_audit"),
            ("ALTER TABLE generations ADD COLUMN note text", "must be owner of table generations"),
            ("ALTER FUNCTION metrics_fold(integer) SECURITY INVOKER", "must be owner of function metrics_fold"),
            ("DROP TRIGGER operator_audit_no_update_or_delete ON operator_audit", "must be owner of"),
            ("DROP TABLE operator_audit", "must be owner of table operator_audit"),
            ("DROP FUNCTION operator_audit_append_only()", "must be owner of function"),
        ):
            with pytest.raises(errors.InsufficientPrivilege, match=refusal):
                conn.execute(attack)
    with psycopg.connect(database_url(granted_db)) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        enabled = dict(conn.execute("SELECT tgname, tgenabled FROM pg_trigger"
                                    " WHERE tgrelid = 'operator_audit'::regclass AND NOT tgisinternal").fetchall())
    assert "stash" not in tables and {"operator_audit", "generations"} <= tables
    assert enabled == {"operator_audit_no_update_or_delete": "A", "operator_audit_no_truncate": "A"}


def test_the_application_role_writes_no_figure_of_its_own(granted_db: str, app_role: str) -> None:
    """The bookkeeping is derived by SECURITY DEFINER functions: the role reads the derived tables and counts
    re-queues through exporter_count(), and that is all it can do to them."""
    with as_app(granted_db, app_role) as conn:
        for attack, error in (
            ("INSERT INTO metrics_exporter_totals VALUES ('generations', 'created', 1000000)",
             errors.InsufficientPrivilege),
            ("INSERT INTO metrics_generation_deltas (hour, user_id, generations) VALUES (now(), 'x', 1000)",
             errors.InsufficientPrivilege),
            ("DELETE FROM metrics_credit_hourly", errors.InsufficientPrivilege),
            ("SELECT exporter_count('generations', 'created', 1000000)", errors.InvalidParameterValue),
            ("SELECT exporter_count('generation_requeues', 'lease_expired', -5)", errors.InvalidParameterValue),
            ("SELECT metrics_rebuild()", errors.InsufficientPrivilege),
            ("SELECT metrics_generations_created(ARRAY['gen_x'])", errors.InsufficientPrivilege),
            ("INSERT INTO generations (id, user_id, prompt, status, poses_count, price_per_pose, credits_charged)"
             " VALUES ('gen_forged', 'x', 'p', 'completed', 1, 1, 0)", errors.InsufficientPrivilege),
            ("UPDATE credit_ledger SET amount = 1", errors.InsufficientPrivilege),
            ("DELETE FROM credit_ledger", errors.InsufficientPrivilege),
        ):
            with pytest.raises(error):
                conn.execute(attack)
        conn.execute("SELECT exporter_count('generation_requeues', 'lease_expired', 1)")
        assert conn.execute("SELECT metrics_fold(100)").fetchone()[0] >= 1
        assert conn.execute("SELECT value FROM metrics_exporter_totals WHERE metric = 'generations'"
                            " AND label = 'created'").fetchone() in (None, (0,))


def test_migrate_through_the_cli_regrants_exactly_and_refuses_an_owner_or_superuser_as_the_app_role(
        granted_db: str, app_role: str) -> None:
    owner_url = database_url(granted_db)
    with psycopg.connect(owner_url, autocommit=True) as conn:
        # Someone widened the role's privileges by hand: the next migrate takes them back.
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(app_role)))
    again = posegen("migrate", "--owner-url", owner_url, "--app-role", app_role, DATABASE_URL="postgresql://x@h/y")
    assert again.returncode == 0 and "database is up to date" in again.stdout, again.stdout + again.stderr
    with psycopg.connect(owner_url) as conn:
        def privileges(table: str) -> set[str]:
            return {p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
                    if conn.execute("SELECT has_table_privilege(%s, %s, %s)", (app_role, table, p)).fetchone()[0]}

        assert privileges("operator_audit") == {"SELECT", "INSERT"}
        assert privileges("credit_ledger") == {"SELECT", "INSERT"}
        assert privileges("generations") == {"SELECT", "UPDATE"}
        assert privileges("metrics_exporter_totals") == {"SELECT"}
        assert privileges("schema_migrations") == set()
        assert conn.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", (app_role,)).fetchone() == (False,)
        callable_by_anyone = conn.execute(
            "SELECT p.proname FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
            " WHERE p.pronamespace = 'public'::regnamespace AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'"
        ).fetchall()
        assert callable_by_anyone == []
    for unfit in ("postgres",):  # the migrating role itself, a superuser
        refused = posegen("migrate", "--owner-url", owner_url, "--app-role", unfit)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert line.startswith(f"error: posegen migrate: the application's role '{unfit}' is a superuser"), line
    missing = posegen("migrate", "--owner-url", owner_url, "--app-role", f"nobody_{uuid.uuid4().hex[:6]}")
    assert missing.returncode == 1 and "does not exist: create it" in missing.stderr, missing.stderr
    owning = f"posegen_owning_test_{uuid.uuid4().hex[:8]}"  # a role that owns a table of the schema
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owning)))
        try:
            conn.execute(sql.SQL("CREATE TABLE owned_stash (x int); ALTER TABLE owned_stash OWNER TO {}").format(
                sql.Identifier(owning)))
            refused = posegen("migrate", "--owner-url", owner_url, "--app-role", owning)
        finally:
            conn.execute("DROP TABLE IF EXISTS owned_stash")
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owning)))
    assert refused.returncode == 1 and "owns tables of the schema" in refused.stderr, refused.stderr


def test_an_app_role_that_is_not_a_plain_role_name_is_refused_in_one_line() -> None:
    with pytest.raises(SettingsError, match="POSEGEN_APP_DB_ROLE='app; DROP TABLE x' is not a role name"):
        Settings.from_env({"POSEGEN_APP_DB_ROLE": "app; DROP TABLE x"})
    assert Settings.from_env({"POSEGEN_APP_DB_ROLE": "posegen_app"}).app_db_role == "posegen_app"


def admin(stack: Stack) -> dict[str, str]:
    return stack.headers("ops-oncall", Role.ADMIN)


def wait_retry_done(stack: Stack, audit_id: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    progress: dict[str, int] = {}
    while time.monotonic() < deadline:
        progress = stack.http.get(f"/admin/retries/{audit_id}", headers=admin(stack)).json()
        if progress["queued"] == progress["processing"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"retry {audit_id} not done: {progress}\n{stack.logs()}")


def test_a_whole_stack_runs_as_the_application_role_with_exact_metrics(
        granted_db: str, app_role: str, tmp_path: Path, start_exporter: StartExporter) -> None:  # noqa: F811
    """API, workers and exporter connect as the role and nothing else: creates and charges, poses failing and
    refunded, a worker killed mid-generation and its generation re-queued by a reaper, the admin metrics, an
    operator's paid and free retries and a pause; the exporter's figures are the database's throughout."""
    with running_stack(granted_db, tmp_path, workers=1, database_role=app_role,
                       POSEGEN_FAULTS="FLUX_API_ERROR=0.4") as stack:
        exporter, port = start_exporter(stack)
        user = stack.new_user(credits=100_000)
        partly = list(stack.create_until_partly_failed(user, POSES))[-1]

        # A worker killed mid-generation: the next worker's reaper re-queues it and counts the re-queue.
        stack.workers[0].kill()
        slow = stack.start_worker(POSEGEN_LOCAL_LATENCY="5", POSEGEN_FAULTS="")
        stack.wait_workers_ready(1)
        in_flight = stack.create_generation(user, POSES[:2]).json()["generationId"]
        with stack.db() as conn:
            deadline = time.monotonic() + 30
            while conn.execute("SELECT status FROM generations WHERE id = %s",
                               (in_flight,)).fetchone()[0] != "processing":
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.05)
        slow.kill()
        stack.start_worker(POSEGEN_FAULTS="")
        stack.wait_finished(user, in_flight, timeout=60)
        for path in ("/metrics?period=24h", "/metrics/errors?period=24h", "/metrics/top-users",
                     "/metrics/popular-poses", "/metrics/health-indicators?period=24h",
                     "/admin/generations?hasFailedPoses=true", "/credits"):
            answer = stack.http.get(path, headers=admin(stack))
            assert answer.status_code == 200, f"{path}: {answer.text}"
        before_retries = parse(scrape(port).text)
        with stack.db() as conn:
            assert conn.execute("SELECT attempt FROM generations WHERE id = %s", (in_flight,)).fetchone()[0] == 2
            assert_exporter_matches_database(before_retries, conn)
        assert before_retries[("pose_generation_requeues_total", (("reason", "lease_expired"),))] >= 1

        # The operator retries the partly failed generation, paid, then every other with failed poses on the
        # house, and pauses intake for a moment.
        for body in ({"generationId": partly, "charge": True, "dryRun": False},
                     {"filter": {"hasFailedPoses": True}, "charge": False, "dryRun": False}):
            answer = stack.http.post("/admin/retries", json=body,
                                     headers={**admin(stack), "Idempotency-Key": uuid.uuid4().hex})
            assert answer.status_code == 200, answer.text
            wait_retry_done(stack, answer.json()["audit"]["id"])
        for action, body in (("pause", {"scope": "intake", "reason": "drill", "retryAfterSeconds": 5}),
                             ("resume", {"scope": "intake"})):
            answer = stack.http.post(f"/admin/{action}", json=body, headers=admin(stack))
            assert answer.status_code == 200, answer.text
        assert stack.http.get("/admin/audit", headers=admin(stack)).status_code == 200
        after = parse(scrape(port).text)
        with stack.db() as conn:
            check_ledger_invariants(conn)
            # A retried pose's earlier outcome is archived, a retried generation's earlier end is its run: the
            # exporter counted each outcome once, when it happened.
            poses = dict(conn.execute(
                "SELECT status, count(*) FROM (SELECT status FROM generation_poses UNION ALL"
                " SELECT status FROM generation_pose_attempts) o GROUP BY status").fetchall())
            ends, runs, charged_runs = conn.execute(
                "SELECT (SELECT count(*) FROM generations WHERE status IN ('completed', 'failed')),"
                " count(*), count(*) FILTER (WHERE charged) FROM generation_runs").fetchone()
            expected = expected_from_database(conn)
            audited = dict(conn.execute("SELECT action, count(*) FROM operator_audit GROUP BY action").fetchall())
            sessions = {row[0] for row in conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (stack.db_name,)).fetchall()}
        assert runs >= 1 and charged_runs == 1
        for status in ("completed", "failed"):
            assert after[("pose_poses_total", (("status", status),))] == poses.get(status, 0), status
        assert sum(after[("pose_generations_total", (("status", status),))]
                   for status in ("completed", "failed")) == ends + runs
        unchanged_by_retries = [key for key in expected if key[0] in (
            "pose_credits_spent_total", "pose_credits_refunded_total", "pose_errors_total", "pose_poses_pending",
            "pose_generations_in_progress") or key == ("pose_generations_total", (("status", "created"),))]
        assert {key: after[key] for key in unchanged_by_retries} == {key: expected[key] for key in unchanged_by_retries}
        # The audit as the exporter counts it (the template's rows of other tests included): two retries here.
        assert {action: after[("pose_operator_actions_total", (("action", action),))] for action in audited} == {
            action: float(count) for action, count in audited.items()}
        assert audited["retry"] == 2 and audited["pause_intake"] >= 1 and audited["resume_intake"] >= 1
        assert sessions == {app_role}, f"the stack's processes connect as {sessions}"
        logs = "".join(path.read_text(errors="replace") for path in stack.tmp.glob("*.log"))
        assert "permission denied" not in logs and "InsufficientPrivilege" not in logs
        assert exporter.alive()


def test_make_dev_creates_the_application_role_and_runs_the_processes_as_it(tmp_path: Path) -> None:
    db_name = f"posegen_devrole_{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = dev_env(DATABASE_URL=database_url(db_name), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                  POSEGEN_DATA_DIR=str(tmp_path / "data"))
    role = f"{db_name}_app"
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen([sys.executable, "-m", "app.cli", "dev", "--port", str(port), "--workers", "1",
                                "--exporter-port", str(free_port()), "--worker-metrics-port", str(free_port()),
                                "--canary-metrics-port", str(free_port())],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        output = wait_for_banner(dev, log_path)
        assert f"created the database role {role} (LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE)" in output
        assert any(line.strip().startswith(f"Database role:     {role} ") for line in banner_lines(output))
        api = f"http://127.0.0.1:{port}/api/apps/pose-generator"
        four_pose_generation_completes(api, admin_token(output), port)
        httpx.get(f"{api}/metrics?period=24h", headers={"Authorization": f"Bearer {admin_token(output)}"},
                  timeout=10).raise_for_status()
        with _admin_conn() as conn:
            attributes = conn.execute("SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                                      " WHERE rolname = %s", (role,)).fetchone()
            sessions = {row[0] for row in conn.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = %s", (db_name,)).fetchall()}
        assert attributes == (True, False, False, False)
        assert sessions == {role}, f"the stack's processes connect as {sessions}"
        with as_app(db_name, role) as conn, pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM operator_audit")
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=60)
        drop_database(db_name)
        drop_dev_role(db_name)
