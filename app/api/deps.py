"""Dependencies shared by the controllers: a pooled database connection and the caller."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from litestar.datastructures import State
from litestar.di import Provide
from psycopg import AsyncConnection

from app.api.auth import Principal, authenticate


async def provide_db(state: State, principal: Principal) -> AsyncGenerator[AsyncConnection, None]:
    """A pooled connection, for authenticated callers only: every route that reads the database needs a
    caller, a bad token never takes a connection from the pool, and resolving the caller first (rather
    than alongside) spares each request a task group."""
    async with state.pool.connection() as conn:
        yield conn


DEPENDENCIES = {"db": Provide(provide_db), "principal": Provide(authenticate)}
