"""A hostile web page on this machine: another port of 127.0.0.1 is the *same site* as the API (browsers send a
SameSite=Strict cookie along), as a sibling subdomain would be in production.

:class:`AttackerSite` serves the HTML pages a test gives it (``site.pages["/frame"] = "<iframe ...>"``) and a
redirect, ``/redirect?to=<url>``, answered with ``307`` so that a browser re-sends a POST, body and all, to
``to`` (with ``Origin: null``, as browsers do after a cross-origin redirect).
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.http_server import BackgroundHTTPServer


class AttackerSite(BackgroundHTTPServer):
    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/redirect":
                    self.send_response(307)
                    self.send_header("Location", parse_qs(url.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                page = site.pages.get(url.path)
                body = (page or "not found").encode()
                self.send_response(200 if page is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        super().__init__(Handler, name="attacker-site")
