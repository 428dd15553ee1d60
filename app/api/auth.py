"""Bearer JWT (HS256) authentication: claims ``sub``, ``role`` (USER or ADMIN) and ``exp``, optionally ``iat``.

A token lives at most ``POSEGEN_TOKEN_MAX_TTL_SECONDS``: a JWT cannot be revoked, so one minted to expire in the
year 9999 would be a password that never changes; one whose ``exp`` is further ahead than that (or, with ``iat``,
was issued for longer) is refused."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import jwt
from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from app.api.state import api_state
from app.settings import Settings

_PRINCIPAL_KEY = "posegen.principal"
# A short JWT_SECRET is refused in production and reported once at start-up elsewhere (app.settings,
# app.cli); PyJWT would otherwise warn on every token signed or verified.
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)
# A token minted for the maximum lifetime by a host whose clock runs a little ahead of ours is still accepted.
CLOCK_SKEW_SECONDS = 60


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


@dataclass(frozen=True)
class VerifiedToken:
    principal: Principal
    expires_at: int  # the token's exp, seconds since the epoch


def verify_token(secret: str, token: str, max_ttl_seconds: int = Settings.token_max_ttl_seconds) -> VerifiedToken:
    """Verify a token; raises NotAuthorizedException (401) saying what is wrong with it. ``max_ttl_seconds``: the
    longest lifetime accepted (the app passes its ``POSEGEN_TOKEN_MAX_TTL_SECONDS``, see :func:`principal_from_token`).

    A client polls with the same token many times, so a verified token is remembered (bounded LRU keyed
    by secret and token) and only its expiry and lifetime are checked again: verification is a tenth of a
    request's CPU otherwise. Failures are never remembered."""
    principal, expires, issued = _verify(secret, token)
    now = time.time()
    if expires <= now:  # as PyJWT decides expiry, with no leeway
        raise NotAuthorizedException("token expired")
    if expires > now + max_ttl_seconds + CLOCK_SKEW_SECONDS:
        raise NotAuthorizedException(f"token expires too far ahead: a token may live at most {max_ttl_seconds} s")
    if issued is not None and expires - issued > max_ttl_seconds:
        raise NotAuthorizedException(f"token was issued for too long: a token may live at most {max_ttl_seconds} s")
    return VerifiedToken(principal, expires)


def decode_token(secret: str, token: str, max_ttl_seconds: int = Settings.token_max_ttl_seconds) -> Principal:
    """The principal of a token :func:`verify_token` accepts."""
    return verify_token(secret, token, max_ttl_seconds).principal


def principal_from_token(request: Request, token: str) -> Principal:
    """The caller ``token`` stands for, verified with the app's settings (its secret and maximum lifetime)."""
    settings = api_state(request).settings
    return decode_token(settings.jwt_secret, token, settings.token_max_ttl_seconds)


@lru_cache(maxsize=8192)
def _verify(secret: str, token: str) -> tuple[Principal, int, int | None]:
    """The token's principal, ``exp`` and ``iat`` (None when absent), once its signature and claims check out."""
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
        principal = Principal(sub, Role(str(role)))
    except ValueError:
        raise NotAuthorizedException("token role must be USER or ADMIN") from None
    # PyJWT checked that int() takes both (and that iat is not in the future); as ints, an exp of 1e300 or of 400
    # digits compares without overflowing a float.
    return principal, int(claims["exp"]), (int(claims["iat"]) if "iat" in claims else None)


async def authenticate(request: Request) -> Principal:
    """Litestar dependency: the caller, from ``Authorization: Bearer <jwt>`` (verified once per request,
    also when a guard asked first)."""
    principal = request.scope.get(_PRINCIPAL_KEY)  # type: ignore[call-overload]
    if isinstance(principal, Principal):
        return principal
    # Straight from the ASGI scope (names arrive lower-cased): building Litestar's Headers object for
    # one header cost more than the lookup itself.
    header = next((value.decode("latin-1") for name, value in request.scope["headers"] if name == b"authorization"),
                  None)
    if not header:
        raise NotAuthorizedException("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("Authorization header must be 'Bearer <token>'")
    principal = principal_from_token(request, token.strip())
    request.scope[_PRINCIPAL_KEY] = principal  # type: ignore[literal-required]
    return principal


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedException("this endpoint requires the ADMIN role")
