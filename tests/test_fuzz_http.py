"""A property-based fuzzer through the real server: every route and method of the app, with hostile path
segments, query strings, headers, cookies and bodies (non-ASCII and invalid UTF-8, NUL, huge numbers, ``nan``,
over-long values, duplicated parameters), with and without valid tokens. Whatever a client sends, the API
answers below 500, and its log stays one JSON entry per line with no traceback.

Requests go out as raw bytes on a socket, so nothing a client library would normalise or refuse is spared.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.admin_console import SESSION_COOKIE, SIGN_IN_COOKIE
from app.api.auth import Role, mint_token
from app.settings import Settings
from tests.console_client import ConsoleClient
from tests.stack import JWT_SECRET, Stack, running_stack

EXAMPLES = 600


@dataclass(frozen=True)
class Operation:
    """One route and method with the names of its inputs: query and header parameters, body fields."""

    method: str
    template: str
    query: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    form: bool = False


def _fields(schema: Any, components: dict[str, Any]) -> tuple[str, ...]:
    ref = getattr(schema, "ref", None)
    if ref:
        schema = components.get(ref.rsplit("/", 1)[-1])
    return tuple(sorted((getattr(schema, "properties", None) or {}).keys()))


def app_surface(env: dict[str, str]) -> tuple[list[tuple[str, list[str]]], list[Operation]]:
    """What the app serves, read from the app itself: ``[(path template, methods)]`` of every HTTP route,
    and each operation's inputs (the OpenAPI document's, plus the operators' console forms, which the
    document leaves out)."""
    from litestar.routes import HTTPRoute

    from app.api import admin_console
    from app.api.app import create_app

    app = create_app(Settings.from_env(env))
    routes = sorted((route.path_format, sorted(route.methods - {"OPTIONS"})) for route in app.routes
                    if isinstance(route, HTTPRoute))
    schema = app.openapi_schema
    components = dict(schema.components.schemas or {}) if schema.components else {}
    operations = []
    for path, item in (schema.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            op = getattr(item, method, None)
            if op is None:
                continue
            params = op.parameters or []
            body = op.request_body
            content = next(iter(body.content.values()), None) if body is not None and body.content else None
            operations.append(Operation(
                method.upper(), path, tuple(p.name for p in params if p.param_in == "query"),
                tuple(p.name for p in params if p.param_in == "header"),
                _fields(content.schema, components) if content is not None else ()))
    console = admin_console.CONSOLE_PATH
    filters = admin_console.FILTER_FIELDS
    operations += [
        Operation("GET", f"{console}/", query=(*filters, "generation", "retry", "cursor", "error")),
        Operation("POST", f"{console}/sign-in", fields=("token",), form=True),
        Operation("POST", f"{console}/retries", fields=(*filters, "generationId", "charge", "dryRun",
                                                        "idempotencyKey"), form=True),
        Operation("POST", f"{console}/pause", fields=("scope", "reason", "retryAfterSeconds"), form=True),
        Operation("POST", f"{console}/resume", fields=("scope",), form=True),
    ]
    return routes, operations


class ConsoleAccess:
    """What lets a request into the console's handlers, so that hostile values reach them: a signed-in session's
    cookie and CSRF token, a sign-in form's pre-session and token, and the console's exact Origin (raw requests
    say ``Host: 127.0.0.1``, so that is the origin)."""

    ORIGIN = "http://127.0.0.1"

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self.renew()

    def renew(self) -> None:
        """A new session (after a fuzzed request signed out)."""
        signed_in, form = ConsoleClient(self._stack.base_url), ConsoleClient(self._stack.base_url)
        assert signed_in.sign_in(self._stack.token("fuzz-console", Role.ADMIN,
                                                   ttl=Settings.token_max_ttl_seconds)).status_code == 303
        form.page()
        self.session, self.csrf = signed_in.session or "", signed_in.csrf
        self.pre_session, self.sign_in_csrf = form.pre_session or "", form.csrf

    def headers(self, token: str | None, admin: bool) -> list[tuple[str, str]]:
        """A valid session's cookie for an admin; a non-admin's JWT where the session id belongs."""
        session = self.session if admin else (token or "").split(" ", 1)[-1]
        return [("Cookie", f"{SESSION_COOKIE}={session}; {SIGN_IN_COOKIE}={self.pre_session}"),
                ("Origin", self.ORIGIN)]

    def form_token(self, template: str) -> str:
        """The ``csrf`` field a console form posts (the sign-in form's own at sign-in)."""
        return "&csrf=" + (self.sign_in_csrf if template.endswith("/sign-in") else self.csrf)


@pytest.fixture(scope="module")
def target(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Any]]:
    with running_stack(template_db, tmp_path_factory.mktemp("fuzz"), workers=0) as stack:
        yield stack, (*app_surface(stack.env), ConsoleAccess(stack))


# --- Hostile values ---------------------------------------------------------------------------------------------
HOSTILE_VALUES = [
    "", " ", "0", "-1", "1e309", "9" * 400, "-" + "9" * 40, "nan", "NaN", "inf", "-inf", "1.5", "0x10", "²", "١٢",
    "true", "null", "[]", "{}", "é", "\u202e", "\ud7ff", "a\x00b", "\x00", "\r\n", "%", "%%", "%ZZ", "../../etc/passwd",
    "' OR 1=1 --", "<script>", "x" * 5000, "gen_" + "a" * 100, "gen_01a24c86ea07048db9907754", "pose_tree_pose",
    "intake", "workers", "all", "bogus", "failed", "completed", "24h", "30d", "0d", "9999999d", "2026-13-45",
    "\udcff", "1" * 5000, "-9223372036854775809", "18446744073709551616", "1e-400", "+1", " 1 ", "1_000",
]
HOSTILE_TEXT = st.sampled_from(HOSTILE_VALUES)
RAW_BYTES = st.binary(min_size=0, max_size=40)


def pct(data: bytes) -> str:
    """Percent-encode every byte: invalid UTF-8 (``%FF``, ``%C3%28``) and NUL reach the server as they are."""
    return "".join(f"%{b:02X}" for b in data)


def q(value: str) -> str:
    """Percent-encoded as a client would send it; a lone surrogate stands for an invalid byte (``%FF``)."""
    return quote(value, safe="", errors="surrogateescape")


SEGMENT = st.one_of(HOSTILE_TEXT.map(q), RAW_BYTES.map(pct))
QUERY_NAMES = st.sampled_from([
    "limit", "cursor", "period", "status", "category", "userId", "user", "since", "until", "expires", "signature",
    "generation", "retry", "error", "errorType", "poseId", "scope", "hasFailedPoses", "poseStatus", "q", "\x00", "é",
])
QUERY = st.lists(st.tuples(QUERY_NAMES, SEGMENT), max_size=5).map(
    lambda pairs: "&".join(f"{quote(k, safe='')}={v}" for k, v in pairs))
HEADER_VALUE = st.one_of(HOSTILE_TEXT, RAW_BYTES.map(lambda b: b.decode("latin-1")))
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
              st.floats(allow_nan=False, allow_infinity=False), HOSTILE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(HOSTILE_TEXT, inner, max_size=4)),
    max_leaves=12,
)
FIELDS = st.sampled_from(["poseIds", "prompt", "userId", "amount", "generationId", "charge", "dryRun", "filter",
                          "scope", "reason", "retryAfterSeconds", "token", "idempotencyKey", "status", "since"])
JSON_BODY = st.dictionaries(FIELDS, JSON_VALUE, max_size=5).map(lambda d: json.dumps(d).encode())
FORM_BODY = st.lists(st.tuples(FIELDS, SEGMENT), max_size=5).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode())
BODY = st.one_of(
    st.tuples(st.just("application/json"), JSON_BODY),
    st.tuples(st.just("application/x-www-form-urlencoded"), FORM_BODY),
    st.tuples(st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x", "é/é"]),
              RAW_BYTES),
)
# Mostly valid tokens: a handler only sees a hostile value once the request is let in.
AUTH = st.sampled_from(["none", "garbage", "forged", "expired", "user", "user", "admin", "admin", "admin"])
EXTRA_HEADERS = st.lists(st.tuples(st.sampled_from([
    "Accept", "Accept-Encoding", "Content-Type", "Idempotency-Key", "Origin", "Referer", "Cookie", "X-Forwarded-For",
    "X-Request-Id", "traceparent", "x-datadog-trace-id", "sentry-trace", "Range", "If-None-Match", "Host", "X-Weird",
]), HEADER_VALUE), max_size=4)


def authorization(kind: str) -> str | None:
    if kind == "none":
        return None
    if kind == "garbage":
        return "Bearer é.\x7f.a"
    if kind == "forged":
        return "Bearer " + mint_token("another-secret-" + "y" * 32, "mallory", Role.ADMIN, 3600)
    if kind == "expired":
        return "Bearer " + mint_token(JWT_SECRET, "alice", Role.USER, -3600)
    return "Bearer " + mint_token(JWT_SECRET, "fuzz-" + kind, Role.ADMIN if kind == "admin" else Role.USER, 3600)


def raw_request(port: int, method: str, target_path: str, headers: list[tuple[str, str]], body: bytes) -> int:
    """Send one request as bytes; the status code of the answer (0 when the server closed without one)."""
    head = [f"{method} {target_path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
            f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(data)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else 0


def fill(template: str, segments: list[str]) -> str:
    """The route template with each ``{param:type}`` replaced by the next hostile segment."""
    parts = iter(segments)
    return re.sub(r"\{[^}]+\}", lambda _: next(parts, "x"), template)


# Pausing is an operator's switch, and a paused stack answers creates with 503 by design: a request that
# pauses is followed by a resume, so the next example starts unpaused.
PAUSING = re.compile(r"/(pause)$")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_no_request_gets_a_server_error(target: tuple[Stack, Any], data: st.DataObject) -> None:
    stack, (routes, _, console) = target
    template, methods = data.draw(st.sampled_from(routes), label="route")
    method = data.draw(st.sampled_from([*methods, "GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "BREW"]),
                       label="method")
    path = fill(template, data.draw(st.lists(SEGMENT, min_size=3, max_size=3), label="segments"))
    query = data.draw(QUERY, label="query")
    auth = data.draw(AUTH, label="auth")
    content_type, body = data.draw(BODY, label="body") if method in ("POST", "PUT", "PATCH") else ("", b"")
    if content_type == "application/x-www-form-urlencoded" and auth == "admin":
        body += console.form_token(template).encode()
    headers = [("Content-Type", content_type)] if content_type else []
    token = authorization(auth)
    if token:
        headers.append(("Authorization", token))
        headers += console.headers(token, auth == "admin")
    headers += data.draw(EXTRA_HEADERS, label="headers")
    status = raw_request(stack.port, method, path + (f"?{query}" if query else ""), headers, body)
    if PAUSING.search(template) and auth == "admin":
        stack.http.post("/admin/resume", json={"scope": "all"}, headers=stack.headers("fuzz-admin", Role.ADMIN))
    if template.endswith("/sign-out") and auth == "admin":
        console.renew()
    assert 0 < status < 500, f"{method} {path}?{query} answered {status}\n{tail(stack)}"


def tail(stack: Stack) -> str:
    return stack.api.output()[-3000:] if stack.api else ""


NUMBER = re.compile(r"^[+-]?(\d[\d_]*)?(\.\d+)?([eE][+-]?\d+)?$")


def sweep_requests(operation: Operation, value: str,
                   form_token: str = "") -> Iterator[tuple[str, list[tuple[str, str]], bytes, str]]:
    """The requests that put ``value`` into each input of ``operation`` in turn: ``(target, headers, body,
    what)``. Body fields get it as a JSON string, as a raw JSON literal when it reads as a number, and as a
    form field for the console's forms (followed by ``form_token``, their CSRF field)."""
    path = fill(operation.template, [q(value)] * 3)
    plain = fill(operation.template, ["x"] * 3)
    if path != plain:
        yield path, [], b"", "path"
    for name in operation.query:
        yield f"{plain}?{quote(name, safe='')}={q(value)}", [], b"", f"query {name}"
        yield f"{plain}?{quote(name, safe='')}=1&{quote(name, safe='')}={q(value)}", [], b"", \
            f"query {name} twice"
    for name in operation.headers:
        yield plain, [(name, value.encode("utf-8", "surrogateescape").decode("latin-1"))], b"", f"header {name}"
    for name in operation.fields:
        if operation.form:
            yield plain, [("Content-Type", "application/x-www-form-urlencoded")], \
                f"{quote(name)}={q(value)}{form_token}".encode(), f"form {name}"
            continue
        json_type = [("Content-Type", "application/json")]
        yield plain, json_type, json.dumps({name: value}).encode(), f"field {name}"
        if NUMBER.match(value) and value.strip():
            yield plain, json_type, f'{{"{name}": {value}}}'.encode(), f"field {name} as a number"


def test_every_input_of_every_operation_takes_every_hostile_value(target: tuple[Stack, Any]) -> None:
    """A sweep: each input of each operation (path parameter, query parameter, twice, header, body field) with
    each hostile value, as a user and as an operator."""
    stack, (_, operations, console) = target
    user, admin = authorization("user"), authorization("admin")
    failures = []
    refused_forms: dict[str, set[int]] = {}  # the console forms' answers: the sweep must get past their checks
    for operation in operations:
        form_token = console.form_token(operation.template) if operation.form else ""
        for number, value in enumerate(HOSTILE_VALUES):
            token = admin if number % 3 else user
            for target_path, headers, body, what in sweep_requests(operation, value, form_token):
                headers = [*headers, ("Authorization", token or ""), *console.headers(admin, True)]
                status = raw_request(stack.port, operation.method, target_path, headers, body)
                if PAUSING.search(operation.template):
                    stack.http.post("/admin/resume", json={"scope": "all"},
                                    headers=stack.headers("fuzz-admin", Role.ADMIN))
                if not 0 < status < 500:
                    failures.append(f"{operation.method} {target_path[:200]} ({what} = {value[:40]!r}): {status}")
                if operation.form:
                    refused_forms.setdefault(operation.template, set()).add(status)
    kinds = sorted({failure.split(" = ")[0] for failure in failures})
    assert not failures, "\n".join(kinds) + f"\n({len(failures)} in all, e.g. {failures[0]})\n{tail(stack)}"
    only_refused = [form for form, statuses in refused_forms.items() if statuses == {403}]
    assert not only_refused, f"no hostile value got past the console's session and CSRF checks: {only_refused}"


def test_the_fuzzed_server_logged_no_traceback(target: tuple[Stack, Any]) -> None:
    """After the fuzzing above (same module stack): every line of the API's log is one JSON entry and none
    carries a stack trace of an unhandled error."""
    stack, _ = target
    stack.http.get("/health")  # a request after the fuzzing: whatever it logged is written before this answer
    log = Path(stack.api.log_path).read_text(errors="replace") if stack.api else ""
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "the API logged nothing"
    bad = [line for line in lines if not (line.startswith("{") and line.endswith("}"))]
    assert not bad, bad[:5]
    unhandled = [json.loads(line) for line in lines if '"stack"' in line and json.loads(line)["level"] == "ERROR"]
    assert not unhandled, unhandled[:3]
