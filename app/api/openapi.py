"""The OpenAPI document and its viewer: descriptions of the error answers, so the schema tells clients what
each route can return, and ``/schema`` served with Swagger UI's files from this process (no CDN), so the
page works offline."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from app.api.error_responses import PROBLEM_JSON
from app.api.schemas import ProblemDetail

_DESCRIPTIONS = {
    400: "Malformed request (a body that is not JSON, or nested too deeply)",
    401: "Missing, malformed, expired or wrongly signed token",
    402: "Not enough credits; nothing was charged",
    403: "The caller's role may not use this endpoint; for an image, its URL is unsigned, altered or expired",
    404: "Not found, or not the caller's",
    406: "The Accept header allows none of the media types this endpoint answers with",
    413: "The request body is larger than the API accepts",
    415: "The request body is not application/json",
    422: "Invalid input; the message names the field",
    429: "Over the caller's allowance of creates, refused creates or reads; Retry-After says how many seconds to wait",
    503: "A dependency (the database or the queue) is unavailable; nothing was charged; see Retry-After",
}


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses for ``codes``, each a :class:`ProblemDetail` as ``application/problem+json``.

    400 is always included: it replaces Litestar's generated 400 (whose schema code generators drop)."""
    return {
        code: ResponseSpec(data_container=ProblemDetail, description=_DESCRIPTIONS[code], generate_examples=False,
                           media_type=PROBLEM_JSON)
        for code in sorted({400, *codes})
    }


SCHEMA_PATH = "/schema"
_ASSETS = f"{SCHEMA_PATH}/assets"


def swagger_ui_dist() -> Path:
    """The folder of Swagger UI's distribution files (5.x, which reads OpenAPI 3.1) as the swagger-ui-py
    package ships them; found without importing the package (it would import its framework adapters)."""
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed: pip install -e . installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


SCHEMA_ASSETS_ROUTER = create_static_files_router(path=_ASSETS, directories=[swagger_ui_dist()],
                                                  name="schema-assets")


def openapi_config(version: str) -> OpenAPIConfig:
    """``/schema``: Swagger UI from local files; ``/schema/openapi.json``: the document."""
    swagger = SwaggerRenderPlugin(
        js_url=f"{_ASSETS}/swagger-ui-bundle.js", css_url=f"{_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{_ASSETS}/favicon-32x32.png'>", path="/swagger",
    )
    return OpenAPIConfig(title="Pose Generator API", version=version, path=SCHEMA_PATH,
                         render_plugins=[swagger, JsonRenderPlugin()])
