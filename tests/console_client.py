"""The operators' console as a browser uses it, over plain HTTP (httpx): the sign-in form's pre-session, sign-in,
the session cookie, each form's CSRF token, posts with an ``Origin``. Cookies are kept by hand: they are ``Secure``,
which a client library's cookie jar keeps off plain http (browsers make an exception for 127.0.0.1 and localhost).

Attack tests send what a browser would not (no Origin, another session's token) through :meth:`ConsoleClient.post`.
"""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import httpx

from app.api.admin_console import CONSOLE_PATH, SESSION_COOKIE, SIGN_IN_COOKIE

_CSRF_INPUT = re.compile(r'name="csrf" value="([^"]*)"')
# What the browser sends when it does not send a header at all.
NO_ORIGIN = object()


def set_cookies(answer: httpx.Response) -> dict[str, Any]:
    """The cookies an answer sets, by name (``http.cookies.Morsel``: value and attributes)."""
    cookies: dict[str, Any] = {}
    for header in answer.headers.get_list("set-cookie"):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        cookies.update(parsed)
    return cookies


class ConsoleClient:
    """One browser's view of the console at ``base_url`` (``http://127.0.0.1:port``, the stack's)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.origin = base_url  # scheme://host:port, exactly as a browser serializes the console's origin
        self.cookies: dict[str, str] = {}
        self.csrf = ""  # the token of the last page's forms

    def _keep(self, answer: httpx.Response) -> httpx.Response:
        for name, morsel in set_cookies(answer).items():
            if morsel["max-age"] == "0":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value
        found = _CSRF_INPUT.search(answer.text) if answer.headers.get("content-type", "").startswith("text/html") \
            else None
        if found:
            self.csrf = found.group(1)
        return answer

    def _headers(self, origin: object = None) -> dict[str, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        origin = self.origin if origin is None else origin
        if origin is not NO_ORIGIN:
            headers["Origin"] = str(origin)
        return headers

    def page(self, query: str = "") -> httpx.Response:
        """GET the console (the sign-in form, or the signed-in page)."""
        return self._keep(httpx.get(f"{self.base_url}{CONSOLE_PATH}/{query}", headers=self._headers(NO_ORIGIN),
                                    timeout=30))

    def sign_in(self, token: str) -> httpx.Response:
        """Open the sign-in form and submit ``token`` with it, as the browser does; the 303 of the sign-in."""
        self.page()
        answer = self.post("sign-in", {"token": token})
        if answer.status_code == 303:
            self.page()
        return answer

    def post(self, action: str, fields: dict[str, str], *, origin: object = None,
             csrf: str | None = None) -> httpx.Response:
        """POST a console form: with the page's CSRF token unless ``csrf`` is given ("" leaves the field out), and
        the console's Origin unless ``origin`` is given (``NO_ORIGIN``: no header)."""
        token = self.csrf if csrf is None else csrf
        data = {**fields, **({"csrf": token} if token else {})}
        return self._keep(httpx.post(f"{self.base_url}{CONSOLE_PATH}/{action}", data=data,
                                     headers=self._headers(origin), timeout=30))

    @property
    def session(self) -> str | None:
        return self.cookies.get(SESSION_COOKIE)

    @property
    def pre_session(self) -> str | None:
        return self.cookies.get(SIGN_IN_COOKIE)
