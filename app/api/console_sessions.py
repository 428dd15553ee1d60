"""Server-side sessions of the operators' console, and the pre-session that guards its sign-in form.

Sign-in verifies an ADMIN token once and starts a session: the browser's cookie holds only a random id (256 bits);
Redis holds, under a hash of that id (so a copy of Redis yields no cookie that works), the operator, when the
session started, when it was last used, when it ends, and its CSRF token (the synchronizer token every form of the
console carries). A session ends after ``POSEGEN_CONSOLE_IDLE_TIMEOUT_SECONDS`` without a request,
``POSEGEN_CONSOLE_SESSION_MAX_SECONDS`` after sign-in, when its ADMIN token would have expired, or at sign-out,
whichever comes first: its Redis key expires then, and every read checks the times again.

Before sign-in the browser holds a pre-session: a random value in a cookie, and the sign-in form carries an HMAC
of it under a key derived from ``JWT_SECRET`` (OWASP's defence against login CSRF). It is stateless, so a visitor
who never signs in writes nothing to Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from redis import Redis

# secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet. Anything else is not one of ours and
# is refused before Redis is asked.
_RANDOM_ID = re.compile(r"[A-Za-z0-9_-]{43}")
SESSION_KEY_PREFIX = "posegen:console:session:"
# Sets the last use and the expiry of a session that still exists: a sign-out between a request's read and its
# touch must not bring back a fragment of the session.
_TOUCH = """
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], 'last_seen', ARGV[1])
  redis.call('pexpireat', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def new_random_id() -> str:
    """A session or pre-session id: 256 bits from the operating system's CSPRNG."""
    return secrets.token_urlsafe(32)


def _same(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a value from a request (any text, or None) with ``expected``."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in operator's session; ``session_id`` is the cookie's value (Redis keeps only its hash)."""

    session_id: str
    operator: str
    csrf_token: str
    created_at: float
    last_seen: float
    ends_at: float  # the absolute timeout or the ADMIN token's expiry, whichever is first

    def accepts(self, csrf_token: str | None) -> bool:
        """Whether a form's ``csrf_token`` is this session's (compared in constant time)."""
        return _same(csrf_token, self.csrf_token)


class ConsoleSessions:
    """The console's sessions in Redis (sync client: the API calls it through ``asyncio.to_thread``)."""

    def __init__(self, redis: Redis, *, idle_seconds: int, max_seconds: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._idle = idle_seconds
        self._max = max_seconds
        self._clock = clock
        self._touch = redis.register_script(_TOUCH)

    def start(self, operator: str, token_expires_at: float) -> ConsoleSession:
        """A new session for ``operator``, with a new id and CSRF token, ending no later than its token."""
        now = self._clock()
        session = ConsoleSession(new_random_id(), operator, new_random_id(), now, now,
                                 min(now + self._max, token_expires_at))
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(session.session_id), mapping={
                "operator": session.operator, "csrf_token": session.csrf_token, "created_at": repr(session.created_at),
                "last_seen": repr(session.last_seen), "ends_at": repr(session.ends_at)})
            pipe.pexpireat(self._key(session.session_id), self._expiry_ms(session, now))
            pipe.execute()
        return session

    def find(self, session_id: str | None) -> ConsoleSession | None:
        """The live session a cookie names; None when there is none, or it was idle or lived too long (then it is
        ended here too)."""
        if not session_id or not _RANDOM_ID.fullmatch(session_id):
            return None
        raw = {_text(k): _text(v) for k, v in self._redis.hgetall(self._key(session_id)).items()}
        try:
            session = ConsoleSession(session_id, raw["operator"], raw["csrf_token"], float(raw["created_at"]),
                                     float(raw["last_seen"]), float(raw["ends_at"]))
        except (KeyError, ValueError):
            return None
        now = self._clock()
        if now - session.last_seen >= self._idle or now >= session.ends_at or now >= session.created_at + self._max:
            self.end(session_id)
            return None
        return session

    def touch(self, session: ConsoleSession) -> ConsoleSession:
        """``session`` used now: its idle timeout starts again (never past its end)."""
        now = self._clock()
        used = replace(session, last_seen=now)
        self._touch(keys=[self._key(session.session_id)], args=[repr(now), self._expiry_ms(used, now)])
        return used

    def end(self, session_id: str) -> None:
        """Sign-out: the session is gone server-side, so its cookie is worth nothing wherever a copy of it is."""
        if _RANDOM_ID.fullmatch(session_id):
            self._redis.delete(self._key(session_id))

    def _expiry_ms(self, session: ConsoleSession, now: float) -> int:
        return int(min(now + self._idle, session.ends_at) * 1000)

    @staticmethod
    def _key(session_id: str) -> str:
        return SESSION_KEY_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


class SignInForms:
    """The sign-in form's CSRF token, bound to the browser's pre-session: an HMAC of the pre-session id."""

    def __init__(self, jwt_secret: str) -> None:
        # Separates this use of JWT_SECRET from token signing: the derived key signs nothing else.
        self._key = hmac.new(jwt_secret.encode(), b"posegen console sign-in form", hashlib.sha256).digest()

    @staticmethod
    def is_pre_session(value: str | None) -> bool:
        return bool(value) and bool(_RANDOM_ID.fullmatch(value or ""))

    def token_for(self, pre_session: str) -> str:
        return hmac.new(self._key, pre_session.encode(), hashlib.sha256).hexdigest()

    def accepts(self, pre_session: str | None, csrf_token: str | None) -> bool:
        """Whether a sign-in form's ``csrf_token`` belongs to the ``pre_session`` its browser holds."""
        return self.is_pre_session(pre_session) and _same(csrf_token, self.token_for(pre_session or ""))


def _text(value: bytes | str) -> str:
    """A Redis reply as text: bytes from a client without ``decode_responses`` (ours), str from one with it."""
    return value.decode() if isinstance(value, bytes) else value
