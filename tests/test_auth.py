"""Who may call what: 401 for bad tokens, 403 for the wrong role."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt
import pytest

from app.api.auth import Role
from app.settings import Settings
from tests.stack import JWT_SECRET, ROOT, Stack


def _token(claims: dict, secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _alg_none(claims: dict) -> str:
    return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]


def _bad_headers() -> dict[str, dict[str, str]]:
    future = int(time.time()) + 600
    good = {"sub": "user_x", "role": "USER", "exp": future}
    return {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {_token(good)}"},
        "malformed": {"Authorization": "Bearer not.a.jwt"},
        "expired": {"Authorization": f"Bearer {_token({**good, 'exp': int(time.time()) - 10})}"},
        "wrong key": {"Authorization": f"Bearer {_token(good, secret='another-secret-that-is-long-enough-for-hs256')}"},
        "alg none": {"Authorization": f"Bearer {_alg_none(good)}"},
        "no exp": {"Authorization": f"Bearer {_token({'sub': 'user_x', 'role': 'USER'})}"},
        "bad role": {"Authorization": f"Bearer {_token({**good, 'role': 'ROOT'})}"},
        "no sub": {"Authorization": f"Bearer {_token({'role': 'USER', 'exp': future})}"},
    }


ROUTES = [
    ("GET", "/generations"),
    ("POST", "/generations"),
    ("GET", "/generations/gen_x"),
    ("GET", "/poses"),
    ("GET", "/poses/pose_tree_pose"),
    ("GET", "/credits"),
    ("POST", "/credits/grants"),
    ("GET", "/metrics"),
    ("GET", "/metrics/top-users"),
    ("GET", "/metrics/popular-poses"),
    ("GET", "/metrics/errors"),
    ("GET", "/metrics/health-indicators"),
]


@pytest.mark.parametrize("case", list(_bad_headers()))
def test_bad_tokens_are_401_on_every_route(stack: Stack, case: str) -> None:
    headers = _bad_headers()[case]
    for method, path in ROUTES:
        answer = stack.http.request(method, path, headers=headers, json={} if method == "POST" else None)
        assert answer.status_code == 401, (case, method, path, answer.text)
        assert answer.json()["detail"]


def test_user_may_not_grant_credits(stack: Stack) -> None:
    user = stack.new_user()
    answer = stack.http.post("/credits/grants", json={"userId": user, "amount": 100}, headers=stack.headers(user))
    assert answer.status_code == 403
    assert "ADMIN" in answer.json()["detail"]
    assert stack.balance(user) == 0


def test_admin_grant_is_ledgered(stack: Stack) -> None:
    user = stack.new_user()
    answer = stack.http.post("/credits/grants", json={"userId": user, "amount": 250},
                             headers=stack.headers("ops-admin", Role.ADMIN))
    assert answer.status_code == 201 and answer.json()["balance"] == 250
    account = stack.http.get("/credits", headers=stack.headers(user)).json()
    assert account["balance"] == 250
    assert [(e["kind"], e["amount"], e["balanceAfter"]) for e in account["ledger"]] == [("grant", 250, 250)]


@pytest.mark.parametrize("amount", [0, -5, "ten", 10**12, 1.5])
def test_bad_grant_amount_is_422(stack: Stack, amount: object) -> None:
    answer = stack.http.post("/credits/grants", json={"userId": "u", "amount": amount},
                             headers=stack.headers("admin", Role.ADMIN))
    assert answer.status_code == 422, answer.text
    assert "amount" in answer.json()["detail"]


def test_health_needs_no_token(stack: Stack) -> None:
    assert stack.http.get("/health").status_code == 200


def test_a_token_accepted_before_is_refused_once_it_expires(stack: Stack) -> None:
    """Verified tokens are remembered between requests; their expiry is still checked on every one."""
    user = stack.new_user()
    token = stack.token(user, ttl=2)
    headers = {"Authorization": f"Bearer {token}"}
    assert stack.http.get("/credits", headers=headers).status_code == 200
    assert stack.http.get("/credits", headers=headers).status_code == 200
    time.sleep(2.2)
    answer = stack.http.get("/credits", headers=headers)
    assert answer.status_code == 401 and "expired" in answer.json()["detail"]
    wrong = jwt.encode(jwt.decode(token, options={"verify_signature": False}),
                       "another-secret-that-is-long-enough-for-hs256", algorithm="HS256")
    assert stack.http.get("/credits", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401


def _far_future_tokens() -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "user_x", "role": "USER"}
    limit = Settings.token_max_ttl_seconds
    return {
        "exp in 9999": _token({**claims, "exp": 253402300799}),
        "exp 1e300": _token({**claims, "exp": 1e300}),
        "exp of 400 digits": _token({**claims, "exp": 10**400}),
        "exp as a string": _token({**claims, "exp": str(now + 10 * limit)}),
        "exp a day past the maximum": _token({**claims, "exp": now + limit + 86400}),
        "issued for longer than the maximum": _token({**claims, "iat": now - limit, "exp": now + 600}),
    }


@pytest.mark.parametrize("case", list(_far_future_tokens()))
def test_a_token_that_would_live_longer_than_the_maximum_is_401(stack: Stack, case: str) -> None:
    """A JWT cannot be revoked: one minted to live for ever would be a password that never changes."""
    answer = stack.http.get("/credits", headers={"Authorization": f"Bearer {_far_future_tokens()[case]}"})
    assert answer.status_code == 401, (case, answer.text)
    assert f"a token may live at most {Settings.token_max_ttl_seconds} s" in answer.json()["detail"], answer.text


def test_a_token_of_the_maximum_lifetime_is_accepted(stack: Stack) -> None:
    user = stack.new_user()
    longest = stack.token(user, ttl=Settings.token_max_ttl_seconds)
    assert stack.http.get("/credits", headers={"Authorization": f"Bearer {longest}"}).status_code == 200


def _posegen_token(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", "token", "--user", "alice", *args], cwd=ROOT, text=True,
                          capture_output=True, env={"PATH": os.environ["PATH"], **env}, timeout=120)


def test_posegen_token_refuses_a_lifetime_the_api_would_refuse() -> None:
    limit = Settings.token_max_ttl_seconds
    for ttl in (limit + 1, 10**12, 0, -60):
        refused = _posegen_token("--ttl", str(ttl))
        assert refused.returncode == 2 and refused.stdout == "", (ttl, refused.stdout)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "--ttl" in lines[0] and "POSEGEN_TOKEN_MAX_TTL_SECONDS" in lines[0], refused.stderr
    minted = _posegen_token("--ttl", str(limit))
    assert minted.returncode == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip().splitlines()[-1], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == limit
    assert _posegen_token("--ttl", str(limit + 1), POSEGEN_TOKEN_MAX_TTL_SECONDS=str(limit + 1)).returncode == 0
