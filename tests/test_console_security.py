"""The operators' console against a hostile page on the same site (another port of 127.0.0.1 here, a sibling
subdomain in production), whose requests a browser sends with the console's SameSite=Strict cookie: it cannot
frame the signed-in console, and cannot make it pause, retry, sign in or out (CSRF: exact Origin and a token bound
to the session). Sessions live on the server; the cookie holds only their id. Response headers of every answer."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from redis import Redis
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from app.api.admin_console import CONSOLE_PATH, SESSION_COOKIE, SIGN_IN_COOKIE
from app.api.auth import Role
from app.api.console_sessions import SESSION_KEY_PREFIX, ConsoleSessions
from tests.browser import wait_for
from tests.console_client import NO_ORIGIN, ConsoleClient, set_cookies
from tests.fakes.attacker_site import AttackerSite
from tests.stack import JWT_SECRET, Stack, claim_redis_db, redis_url, release_redis_db

pytestmark = pytest.mark.tools

REFUSED = "Console request refused"
POSES = ["pose_standing_confident", "pose_arms_crossed"]


@pytest.fixture
def attacker() -> Iterator[AttackerSite]:
    with AttackerSite() as site:
        yield site


def sign_in(browser: webdriver.Chrome, stack: Stack, operator: str = "console-op") -> None:
    browser.get(f"{stack.base_url}{CONSOLE_PATH}/")
    wait_for(browser, "#token")
    browser.find_element(By.ID, "token").send_keys(stack.token(operator, Role.ADMIN))
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, "form[action$='/pause']")


def operator_state(stack: Stack) -> dict[str, Any]:
    """What an attack would change, read through the admin API: the pause and the audit log."""
    admin = stack.headers("state-reader", Role.ADMIN)
    pause = stack.http.get("/admin/pause", headers=admin).json()
    audit = stack.http.get("/admin/audit", params={"limit": 100}, headers=admin).json()["entries"]
    return {"intake paused": pause["intake"]["paused"], "workers paused": pause["workersPaused"], "audit": audit}


def refusals(stack: Stack) -> int:
    """How many console requests the API has refused and logged (OWASP: log a failed CSRF check)."""
    return stack.api.output().count(REFUSED) if stack.api else 0


def auto_submitting_form(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input name="{name}" value="{value}">' for name, value in fields.items())
    return (f'<form id="f" method="post" action="{action}">{inputs}</form>'
            '<script>document.getElementById("f").submit()</script>')


def land(browser: webdriver.Chrome, away_from: str) -> str:
    """After an auto-submitting page: the text of the page the browser ends on, once it left ``away_from``."""
    WebDriverWait(browser, 60, poll_frequency=0.2).until(
        lambda b: not b.current_url.startswith(away_from)
        and b.execute_script("return document.readyState") == "complete")
    return browser.execute_script("return document.body ? document.body.innerText : ''")  # type: ignore[no-any-return]


def test_a_same_site_page_cannot_frame_the_signed_in_console(stack: Stack, browser: webdriver.Chrome,
                                                              attacker: AttackerSite) -> None:
    sign_in(browser, stack)
    attacker.pages["/frame"] = f'<iframe id="console" src="{stack.base_url}{CONSOLE_PATH}/" width=800 height=600>'
    browser.get(f"{attacker.base_url}/frame")
    wait_for(browser, "#console")
    browser.switch_to.frame(browser.find_element(By.ID, "console"))
    try:
        framed = browser.execute_script("return document.body ? document.body.innerHTML : ''")
        assert "/pause" not in framed, "the signed-in console's Pause form was shown inside another site's page"
    finally:
        browser.switch_to.default_content()
    browser.get(f"{stack.base_url}{CONSOLE_PATH}/")  # the console itself still works, signed in
    wait_for(browser, "form[action$='/pause']")


def test_a_same_site_page_cannot_pause_or_charge_a_retry_through_a_307_redirect(
        fresh_stack, browser: webdriver.Chrome, attacker: AttackerSite) -> None:  # type: ignore[no-untyped-def]
    """The reported attack: a form on a same-site page posts to the attacker's own /redirect, whose 307 sends the
    browser on to the console with the body, the SameSite=Strict cookie and ``Origin: null``."""
    stack: Stack = fresh_stack(workers=0)
    broken = stack.start_worker(POSEGEN_FAULTS="FLUX_API_ERROR=1")
    user = stack.new_user(credits=300)
    failed = stack.create_generation(user, POSES, prompt="outage").json()["generationId"]
    assert stack.wait_finished(user, failed)["status"] == "failed"
    broken.stop()
    stack.start_worker()
    sign_in(browser, stack)
    before, balance = operator_state(stack), stack.balance(user)

    console = f"{stack.base_url}{CONSOLE_PATH}"
    attacks = {
        "/pause": ("pause", {"scope": "all", "reason": "pwned", "retryAfterSeconds": "3600", "csrf": "guessed"}),
        "/retry": ("retries", {"generationId": failed, "charge": "true", "dryRun": "false",
                               "idempotencyKey": "attack-1", "csrf": "guessed"}),
    }
    for page, (action, fields) in attacks.items():
        redirect = f"{attacker.base_url}/redirect?to={quote(f'{console}/{action}', safe='')}"
        attacker.pages[page] = auto_submitting_form(redirect, fields)
        browser.get(f"{attacker.base_url}{page}")
        landed = land(browser, attacker.base_url)
        assert browser.current_url == f"{console}/{action}", "the 307 took the browser to the console"
        assert '"status":403' in landed.replace(" ", ""), landed[:500]

    assert operator_state(stack) == before, "nothing paused, no retry ran, the audit log is as it was"
    assert stack.balance(user) == balance
    admin = stack.headers("state-reader", Role.ADMIN)
    assert len(stack.http.get(f"/admin/generations/{failed}", headers=admin).json()["attempts"]) == 1
    browser.get(f"{console}/")  # the operator is still signed in, and the console's own forms still work
    wait_for(browser, "form[action$='/pause']")


def test_no_other_page_posts_to_the_console(stack: Stack, browser: webdriver.Chrome, attacker: AttackerSite) -> None:
    """A same-site page posting straight to the console (its own Origin, no token), a sandboxed frame (Origin
    null) and a cross-site page (localhost is another site than 127.0.0.1: no cookie) are all refused."""
    sign_in(browser, stack)
    before = operator_state(stack)
    pause = f"{stack.base_url}{CONSOLE_PATH}/pause"
    form = auto_submitting_form(pause, {"scope": "intake", "reason": "pwned"})
    attacker.pages["/direct"] = form
    attacker.pages["/sandboxed"] = (
        f'<iframe sandbox="allow-forms allow-scripts" srcdoc="{form.replace(chr(34), "&quot;")}"></iframe>')
    cross_site = attacker.base_url.replace("127.0.0.1", "localhost")
    for page in (f"{attacker.base_url}/direct", f"{attacker.base_url}/sandboxed", f"{cross_site}/direct"):
        seen = refusals(stack)
        browser.get(page)
        WebDriverWait(browser, 60, poll_frequency=0.2).until(lambda _: refusals(stack) > seen,  # noqa: B023
                                                             f"the console logged no refusal of {page}")
    assert operator_state(stack) == before
    origins = [json.loads(line)["metadata"].get("origin") for line in stack.api.output().splitlines()
               if REFUSED in line][-3:]
    assert origins == [attacker.base_url, "null", cross_site], origins


def test_a_same_site_page_cannot_sign_the_browser_in_as_someone_else(stack: Stack, browser: webdriver.Chrome,
                                                                      attacker: AttackerSite) -> None:
    """Login CSRF: the attacker's own ADMIN token, posted to the sign-in from a same-site page, directly and through
    the 307, while the victim's browser holds a sign-in form's pre-session: refused, nobody is signed in."""
    browser.get(f"{stack.base_url}{CONSOLE_PATH}/")
    wait_for(browser, "#token")
    sign_in_url = f"{stack.base_url}{CONSOLE_PATH}/sign-in"
    fields = {"token": stack.token("mallory", Role.ADMIN)}
    attacker.pages["/direct"] = auto_submitting_form(sign_in_url, fields)
    attacker.pages["/redirected"] = auto_submitting_form(
        f"{attacker.base_url}/redirect?to={quote(sign_in_url, safe='')}", fields)
    for page in ("/direct", "/redirected"):
        browser.get(f"{attacker.base_url}{page}")
        assert '"status":403' in land(browser, attacker.base_url).replace(" ", "")
    browser.get(f"{stack.base_url}{CONSOLE_PATH}/")
    wait_for(browser, "#token")
    assert not browser.find_elements(By.ID, "actor"), "the browser was signed in as mallory"


def test_the_cookie_holds_a_random_session_id_and_is_secure_even_on_plain_http_127_0_0_1(
        stack: Stack, browser: webdriver.Chrome) -> None:
    token = stack.token("cookie-op", Role.ADMIN)
    browser.get(f"{stack.base_url}{CONSOLE_PATH}/")
    wait_for(browser, "#token")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait_for(browser, "#actor")
    cookies = {c["name"]: c for c in browser.get_cookies()}
    session = cookies[SESSION_COOKIE]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", session["value"]), session
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict", session
    assert session["path"] == CONSOLE_PATH and "expiry" not in session, session
    assert SIGN_IN_COOKIE not in cookies, "the pre-session ends at sign-in"
    assert not any(token in c["value"] or token.split(".")[1] in c["value"] for c in cookies.values())


# --- The same checks one at a time, over plain HTTP ---------------------------------------------------------------

def test_a_post_needs_the_consoles_exact_origin(stack: Stack) -> None:
    """With a live session and its CSRF token, any Origin but the console's own is refused: missing, ``null``
    (a redirect, a sandboxed frame), another port, a look-alike host, another scheme."""
    client = ConsoleClient(stack.base_url)
    assert client.sign_in(stack.token("origin-op", Role.ADMIN)).status_code == 303
    host, port = stack.base_url.removeprefix("http://").split(":")
    dry_run = {"hasFailedPoses": "true", "dryRun": "true", "charge": "false"}
    before = operator_state(stack)
    for origin in (NO_ORIGIN, "null", "", f"http://{host}:{int(port) + 1}", f"http://{host}:{port}.evil.example",
                   f"https://{host}:{port}", f"http://{host}:{port}/", f"http://localhost:{port}", "*"):
        answer = client.post("retries", dry_run, origin=origin)
        assert answer.status_code == 403, (origin, answer.status_code, answer.text[:300])
    assert operator_state(stack) == before
    answer = client.post("retries", dry_run)
    assert answer.status_code == 200 and 'id="dry-run-result"' in answer.text, answer.text[:300]


def test_a_post_needs_its_sessions_csrf_token(stack: Stack) -> None:
    """From the console's own origin with a live session, a post without the session's token is refused: none,
    a wrong one, another session's, the sign-in form's. Nothing is paused, retried or audited, and the session
    is not signed out."""
    client, other = ConsoleClient(stack.base_url), ConsoleClient(stack.base_url)
    assert client.sign_in(stack.token("csrf-op", Role.ADMIN)).status_code == 303
    assert other.sign_in(stack.token("csrf-other", Role.ADMIN)).status_code == 303
    pre_session = ConsoleClient(stack.base_url)
    pre_session.page()
    before = operator_state(stack)
    for csrf in ("", "x" * 43, other.csrf, pre_session.csrf, client.csrf + "A", client.csrf[:-1]):
        for action, fields in (("pause", {"scope": "all", "reason": "pwned"}), ("resume", {"scope": "all"}),
                               ("retries", {"hasFailedPoses": "true", "dryRun": "true", "charge": "true"}),
                               ("sign-out", {})):
            answer = client.post(action, fields, csrf=csrf)
            assert answer.status_code == 403, (action, csrf, answer.status_code, answer.text[:300])
    assert operator_state(stack) == before
    assert 'id="actor"' in client.page().text, "still signed in"


def test_sign_in_needs_the_pre_sessions_token(stack: Stack) -> None:
    """Login CSRF over plain HTTP: from the console's own origin, a sign-in without the browser's pre-session, or
    with another pre-session's token, starts no session."""
    token = stack.token("login-op", Role.ADMIN)
    fresh = ConsoleClient(stack.base_url)  # never opened the form: no pre-session
    assert fresh.post("sign-in", {"token": token}, csrf="").status_code == 403
    victim, attacker = ConsoleClient(stack.base_url), ConsoleClient(stack.base_url)
    victim.page()
    attacker.page()
    for csrf in (attacker.csrf, "", victim.csrf.upper()):
        answer = victim.post("sign-in", {"token": token}, csrf=csrf)
        assert answer.status_code == 403 and SESSION_COOKIE not in set_cookies(answer), answer.text[:300]
    assert victim.post("sign-in", {"token": token}).status_code == 303 and victim.session


def test_the_console_refuses_a_token_that_would_live_too_long(stack: Stack) -> None:
    client = ConsoleClient(stack.base_url)
    client.page()
    forever = jwt.encode({"sub": "forever-op", "role": "ADMIN", "exp": 253402300799}, JWT_SECRET, algorithm="HS256")
    answer = client.post("sign-in", {"token": forever})
    assert answer.status_code == 303 and "error=" in answer.headers["location"] and not client.session
    assert "a token may live at most" in client.page(answer.headers["location"].rsplit("/", 1)[1]).text


def test_sign_out_ends_the_session_on_the_server(stack: Stack) -> None:
    """A copy of the cookie (and of the page's token) taken before sign-out is worth nothing after it."""
    client = ConsoleClient(stack.base_url)
    assert client.sign_in(stack.token("signout-op", Role.ADMIN)).status_code == 303
    stolen, stolen_csrf = dict(client.cookies), client.csrf
    answer = client.post("sign-out", {})
    assert answer.status_code == 303 and set_cookies(answer)[SESSION_COOKIE]["max-age"] == "0"
    replay = ConsoleClient(stack.base_url)
    replay.cookies = stolen
    assert 'id="token"' in replay.page().text and 'id="actor"' not in replay.page().text
    replay.cookies, replay.csrf = dict(stolen), stolen_csrf
    before = operator_state(stack)
    assert replay.post("pause", {"scope": "intake", "reason": "replayed"}).status_code == 403
    assert operator_state(stack) == before


def test_sign_in_always_starts_a_new_session_id(stack: Stack) -> None:
    """Session fixation: ids planted in the browser before sign-in (a pre-session the attacker knows, a live
    session of the attacker's, an id never issued) are not what the operator gets, and the planted session ends."""
    planter = ConsoleClient(stack.base_url)
    assert planter.sign_in(stack.token("mallory", Role.ADMIN)).status_code == 303
    known = ConsoleClient(stack.base_url)
    known.page()  # the attacker's own pre-session and its sign-in token
    for planted in (planter.session or "", "A" * 43):
        victim = ConsoleClient(stack.base_url)
        victim.cookies[SIGN_IN_COOKIE] = known.pre_session or ""
        victim.page()
        victim.cookies[SESSION_COOKIE] = planted
        answer = victim.post("sign-in", {"token": stack.token("fixed-op", Role.ADMIN)})
        assert answer.status_code == 303, answer.text[:300]
        assert victim.session and victim.session not in (planted, known.pre_session)
        assert set_cookies(answer)[SIGN_IN_COOKIE]["max-age"] == "0", "the pre-session ends at sign-in"
        assert ">fixed-op<" in victim.page().text
    assert 'id="actor"' not in planter.page().text, "the planted live session was ended at the victim's sign-in"


def test_a_session_ends_when_its_admin_token_would_have(stack: Stack) -> None:
    client = ConsoleClient(stack.base_url)
    token = stack.token("short-op", Role.ADMIN, ttl=6)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert client.sign_in(token).status_code == 303
    assert 'id="actor"' in client.page().text
    while 'id="actor"' in (page := client.page().text):
        assert time.time() < expires + 30, "the session outlived its token"
        time.sleep(0.2)
    assert time.time() >= expires, "the session ended before its token"
    assert "Your console session has ended" in page and SESSION_COOKIE not in client.cookies


# --- Timeouts, on the session store with a clock of the test's (against the test run's own Redis) -----------------

class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sessions() -> Iterator[tuple[ConsoleSessions, Clock, Redis]]:
    index = claim_redis_db()
    redis = Redis.from_url(redis_url(index))
    clock = Clock()
    try:
        yield ConsoleSessions(redis, idle_seconds=900, max_seconds=8 * 3600, clock=clock), clock, redis
    finally:
        for key in redis.scan_iter(f"{SESSION_KEY_PREFIX}*"):
            redis.delete(key)
        redis.close()
        release_redis_db(index)


def test_an_idle_session_ends(sessions: tuple[ConsoleSessions, Clock, Redis]) -> None:
    store, clock, redis = sessions
    session = store.start("idle-op", token_expires_at=clock.now + 24 * 3600)
    assert 0 < redis.pttl(next(redis.scan_iter(f"{SESSION_KEY_PREFIX}*"))) <= 900_000, "Redis forgets it by itself"
    clock.now += 899
    found = store.find(session.session_id)
    assert found is not None and found.operator == "idle-op"
    store.touch(found)  # a request: the idle timeout starts again
    clock.now += 899
    assert store.find(session.session_id) is not None
    clock.now += 900
    assert store.find(session.session_id) is None, "15 minutes without a request end the session"
    assert list(redis.scan_iter(f"{SESSION_KEY_PREFIX}*")) == [], "and it is gone from Redis"


def test_a_session_ends_at_its_absolute_timeout_however_busy(sessions: tuple[ConsoleSessions, Clock, Redis]) -> None:
    store, clock, _ = sessions
    session = store.start("busy-op", token_expires_at=clock.now + 24 * 3600)
    started = clock.now
    while clock.now + 600 < started + 8 * 3600:
        clock.now += 600
        found = store.find(session.session_id)
        assert found is not None, clock.now - started
        store.touch(found)
    clock.now = started + 8 * 3600
    assert store.find(session.session_id) is None, "8 hours after sign-in, used or not"


def test_redis_holds_no_usable_session_id(sessions: tuple[ConsoleSessions, Clock, Redis]) -> None:
    """A copy of Redis (a backup, MONITOR, a replica) gives no cookie that works: keys are hashes of the ids."""
    store, clock, redis = sessions
    session = store.start("copied-op", token_expires_at=clock.now + 3600)
    (key,) = list(redis.scan_iter(f"{SESSION_KEY_PREFIX}*"))
    stored = key.decode() + "".join(f"{k.decode()}={v.decode()}" for k, v in redis.hgetall(key).items())
    assert session.session_id not in stored
    assert store.find(key.decode().removeprefix(SESSION_KEY_PREFIX)[:43]) is None


def test_every_answer_carries_the_headers_that_keep_browsers_from_misusing_it(stack: Stack) -> None:
    api = stack.http.get("/health")
    console = httpx.get(f"{stack.base_url}{CONSOLE_PATH}/", timeout=10)
    missing = httpx.get(f"{stack.base_url}/no-such-page", timeout=10)
    for answer in (api, console, missing):
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert api.headers["referrer-policy"] == missing.headers["referrer-policy"] == "no-referrer"
    # The console's own form posts carry its Origin (under no-referrer a browser sends Origin: null); no other
    # origin gets a Referer from it.
    assert console.headers.get_list("referrer-policy") == ["same-origin"]
    assert "frame-ancestors 'none'" in console.headers["content-security-policy"]
    assert console.headers["x-frame-options"] == "DENY" and console.headers["cache-control"] == "no-store"
    assert "content-security-policy" not in api.headers
    assert stack.http.get("/credits", headers=stack.headers("alice")).headers["x-content-type-options"] == "nosniff"
