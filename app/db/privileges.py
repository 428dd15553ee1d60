"""The database's two roles: the owner, who migrates, and the application's role, which the processes connect as.

:func:`apply_grants` (run by every ``posegen migrate``) re-applies ``app/db/grants.sql``: no function of ours
is executable by every role, and the application's role, when one is named, holds exactly what the processes
use. :func:`check_app_role` refuses a role whose grants would mean nothing (a superuser, the owner or a member
of it, a role that can create roles). ``posegen dev`` creates its application role with :func:`ensure_app_role`.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from app.connections import pg_connect

# In grants.sql, what follows this line is applied for the application's role (formatted with {app_role}).
APP_ROLE_PART = "-- the application's role:"
# PostgreSQL truncates longer identifiers: a URL would then name a role that is not the one created.
MAX_ROLE_NAME = 63


class AppRoleError(ValueError):
    """The application's role is missing or unfit to be one; the message is one line saying what to do."""


def grants_sql() -> tuple[str, str]:
    """The part of ``grants.sql`` applied on every run, and the part for the application's role."""
    text = (resources.files("app.db") / "grants.sql").read_text(encoding="utf-8")
    always, _, for_role = text.partition(APP_ROLE_PART)
    return always, for_role


def check_app_role(conn: psycopg.Connection, role: str) -> None:
    """Raise :class:`AppRoleError` unless ``role`` exists and its grants are all it can do here: not the
    connected (owning) role nor a member of it, no superuser, no CREATEROLE, owning nothing in the schema (nor
    a member of a role that does)."""
    found = conn.execute(
        "SELECT r.rolsuper, r.rolcreaterole, pg_has_role(r.oid, current_user, 'MEMBER'),"
        " EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
        "         AND pg_has_role(r.oid, c.relowner, 'MEMBER')),"
        " current_user FROM pg_roles r WHERE r.rolname = %s",
        (role,),
    ).fetchone()
    if found is None:
        raise AppRoleError(f"the application's role {role!r} does not exist: create it "
                           f"(CREATE ROLE {role} LOGIN PASSWORD '...'), then migrate again")
    superuser, createrole, is_owner, owns_tables, owner = found
    problem = ("is a superuser" if superuser else
               f"is {owner}, or a member of it, the role migrating (and owning the schema)" if is_owner else
               "owns tables of the schema, or is a member of a role that does" if owns_tables else
               "may create roles (CREATEROLE)" if createrole else None)
    if problem:
        raise AppRoleError(f"the application's role {role!r} {problem}: it must be a plain LOGIN role "
                           f"(NOSUPERUSER NOCREATEROLE) that owns nothing; name another in POSEGEN_APP_DB_ROLE")


def apply_grants(conn: psycopg.Connection, app_role: str | None) -> None:
    """Re-apply ``grants.sql`` in the connection's transaction: always the part for every role, and with
    ``app_role`` (checked first, :func:`check_app_role`) exactly its privileges, whatever it held before."""
    always, for_role = grants_sql()
    conn.execute(always)
    if app_role:
        check_app_role(conn, app_role)
        (database,) = conn.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
        conn.execute(sql.SQL(for_role).format(app_role=sql.Identifier(app_role),  # type: ignore[arg-type]
                                              database=sql.Identifier(database)))


def dev_app_role(database_url: str) -> str:
    """The application's role ``posegen dev`` uses unless POSEGEN_APP_DB_ROLE names one: ``<database>_app``
    (``posegen_app`` for the default database), so stacks on one server with databases of their own do not
    share a role."""
    database = psycopg.conninfo.conninfo_to_dict(database_url).get("dbname") or "posegen"
    return f"{str(database)[:MAX_ROLE_NAME - 4]}_app"


def url_as_role(database_url: str, role: str) -> str:
    """``database_url`` (a ``postgresql://`` URL) connecting as ``role``, without a password: the same server
    and database, for a role that logs in without one (trust or peer authentication, as ``posegen dev``'s)."""
    parts = urlsplit(database_url)
    hosts = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("user", "password")])
    return urlunsplit((parts.scheme, f"{quote(role, safe='')}@{hosts}", parts.path, query, parts.fragment))


def ensure_app_role(owner_url: str, role: str) -> bool:
    """Create ``role`` as ``LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE`` when it does not exist, connected as the
    owner (who needs CREATEROLE for it); True when created. Raises :class:`AppRoleError` when it cannot be."""
    admin = psycopg.conninfo.make_conninfo(owner_url, dbname="postgres")
    with pg_connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
                sql.Identifier(role)))
        except psycopg.errors.DuplicateObject:
            return False  # another stack created it meanwhile
        except psycopg.errors.InsufficientPrivilege as exc:
            raise AppRoleError(f"cannot create the application's role {role!r} ({exc}): create it yourself "
                               f"(CREATE ROLE {role} LOGIN) or name one in POSEGEN_APP_DB_ROLE") from None
    return True
