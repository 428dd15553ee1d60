"""Dependencies shared by the controllers: a pooled database connection and the caller."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from litestar.datastructures import State
from litestar.di import Provide
from psycopg import AsyncConnection

from app.api.auth import authenticate


async def provide_db(state: State) -> AsyncGenerator[AsyncConnection, None]:
    async with state.pool.connection() as conn:
        yield conn


DEPENDENCIES = {"db": Provide(provide_db), "principal": Provide(authenticate)}
