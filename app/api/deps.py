"""Dependencies shared by the controllers: a pooled database connection and the caller."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from psycopg import AsyncConnection

from app.api.auth import Principal, authenticate
from app.api.state import api_state

# How a handler asks for them: by name, marked (Litestar 3 drops dependencies inferred from a bare type).
DatabaseConnection = NamedDependency[AsyncConnection]
Caller = NamedDependency[Principal]


async def provide_db(state: State, principal: Caller) -> AsyncGenerator[AsyncConnection, None]:
    """A pooled connection, for authenticated callers only: every route that reads the database needs a
    caller, a bad token never takes a connection from the pool, and resolving the caller first (rather
    than alongside) spares each request a task group."""
    async with api_state(state).pool.connection() as conn:
        yield conn


DEPENDENCIES = {"db": Provide(provide_db), "principal": Provide(authenticate)}
