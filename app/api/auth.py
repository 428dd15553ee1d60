"""Bearer JWT (HS256) authentication: claims ``sub``, ``role`` (USER or ADMIN) and ``exp``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import jwt
from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException


class Role(StrEnum):
    USER = "USER"
    ADMIN = "ADMIN"


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def mint_token(secret: str, user_id: str, role: Role, ttl_seconds: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "role": role.value, "iat": now, "exp": now + ttl_seconds}, secret,
                      algorithm="HS256")


def decode_token(secret: str, token: str) -> Principal:
    """Verify a token; raises NotAuthorizedException (401) saying what is wrong with it."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "role"]})
    except jwt.ExpiredSignatureError:
        raise NotAuthorizedException("token expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise NotAuthorizedException(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError:
        raise NotAuthorizedException("invalid token") from None
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub or len(sub) > 200:
        raise NotAuthorizedException("invalid token subject")
    try:
        return Principal(sub, Role(role))
    except ValueError:
        raise NotAuthorizedException("token role must be USER or ADMIN") from None


async def authenticate(request: Request) -> Principal:
    """Litestar dependency: the caller, from ``Authorization: Bearer <jwt>``."""
    header = request.headers.get("authorization")
    if not header:
        raise NotAuthorizedException("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("Authorization header must be 'Bearer <token>'")
    return decode_token(request.app.state.settings.jwt_secret, token.strip())


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedException("this endpoint requires the ADMIN role")
