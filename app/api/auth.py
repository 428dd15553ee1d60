"""Bearer JWT (HS256) authentication: claims ``sub``, ``role`` (USER or ADMIN) and ``exp``."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import jwt
from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

_PRINCIPAL_KEY = "posegen.principal"
# A short JWT_SECRET is refused in production and reported once at start-up elsewhere (app.settings,
# app.cli); PyJWT would otherwise warn on every token signed or verified.
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)


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
    """Verify a token; raises NotAuthorizedException (401) saying what is wrong with it.

    A client polls with the same token many times, so a verified token is remembered (bounded LRU keyed
    by secret and token) and only its expiry is checked again: verification is a tenth of a request's
    CPU otherwise. Failures are never remembered."""
    principal, expires = _verify(secret, token)
    if expires <= time.time():  # as PyJWT decides expiry, with no leeway
        raise NotAuthorizedException("token expired")
    return principal


@lru_cache(maxsize=8192)
def _verify(secret: str, token: str) -> tuple[Principal, float]:
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
        return Principal(sub, Role(role)), float(claims["exp"])
    except ValueError:
        raise NotAuthorizedException("token role must be USER or ADMIN") from None


async def authenticate(request: Request) -> Principal:
    """Litestar dependency: the caller, from ``Authorization: Bearer <jwt>`` (verified once per request,
    also when a guard asked first)."""
    principal = request.scope.get(_PRINCIPAL_KEY)  # type: ignore[call-overload]
    if principal is not None:
        return principal  # type: ignore[no-any-return]
    # Straight from the ASGI scope (names arrive lower-cased): building Litestar's Headers object for
    # one header cost more than the lookup itself.
    header = next((value.decode("latin-1") for name, value in request.scope["headers"] if name == b"authorization"),
                  None)
    if not header:
        raise NotAuthorizedException("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("Authorization header must be 'Bearer <token>'")
    principal = decode_token(request.app.state.settings.jwt_secret, token.strip())
    request.scope[_PRINCIPAL_KEY] = principal  # type: ignore[literal-required]
    return principal


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedException("this endpoint requires the ADMIN role")
