"""Response headers that keep browsers from misusing our answers, added to every HTTP response.

Every answer: ``X-Content-Type-Options: nosniff`` (a JSON or PNG answer is never sniffed into a script or page)
and ``Referrer-Policy: no-referrer`` (a signed image URL or a console query never leaks in a Referer). The
operators' console, whose forms move money and stop the service, also: a Content-Security-Policy that allows
only its own forms and inline style and no framing (``frame-ancestors 'none'``, with ``X-Frame-Options: DENY``
for older browsers: a same-site page framing the signed-in console could trick a click on Pause or Retry), and
``Cache-Control: no-store`` (its pages show users' data and carry the session's CSRF token). Its pages say
``Referrer-Policy: same-origin`` instead of ``no-referrer``: under ``no-referrer`` a browser sends ``Origin: null``
with the page's own form posts (Fetch standard, "append a request Origin header"), and the console accepts a post
only with its own exact origin. ``same-origin`` still sends no Referer to any other origin.
"""

from __future__ import annotations

from typing import Any

EVERY_RESPONSE: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
CONSOLE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self';"
               " frame-ancestors 'none'; base-uri 'none'")
CONSOLE_RESPONSE: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONSOLE_CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"same-origin"),
)
# A console answer: the console's headers, and those of every answer it does not replace.
_CONSOLE_ANSWER = CONSOLE_RESPONSE + tuple(
    (name, value) for name, value in EVERY_RESPONSE if name not in {n for n, _ in CONSOLE_RESPONSE})


def with_security_headers(app: Any, console_path: str) -> Any:
    """``app`` (ASGI) with :data:`EVERY_RESPONSE` on every HTTP answer and :data:`CONSOLE_RESPONSE` on the answers
    under ``console_path`` (where its ``Referrer-Policy`` wins); each replaces a header of the same name the app
    set."""
    prefix = console_path.rstrip("/")

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope.get("path", "")
        added = _CONSOLE_ANSWER if path == prefix or path.startswith(prefix + "/") else EVERY_RESPONSE
        names = {name for name, _ in added}

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(name, value) for name, value in message.get("headers", []) if name.lower() not in names]
                message = {**message, "headers": [*kept, *added]}
            await send(message)

        await app(scope, receive, send_with_headers)

    return serve
