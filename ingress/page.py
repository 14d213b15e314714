"""The web page at ``/``: a static HTML page, its stylesheet and script, and what it asks first.

Everything ships in the package (``ingress/static``): no build step and nothing fetched
from elsewhere, so the page works on a machine with no internet. Loading the page needs
no API key; the page sends the key the user typed with each ``/v1`` call, as the API
requires of any client. ``GET /page/config`` tells the page whether to ask for a key
(knowing that gives nothing away: any ``/v1`` call without a key says it too) and the
``top_k`` range. None of these routes is in the OpenAPI schema: they are not the API.

The files are read once, when the module is imported, and served from a fixed table:
a request names a file in the table or gets a 404, so no path reaches the filesystem.
"""

from __future__ import annotations

from importlib import resources

import orjson
from fastapi import APIRouter, Response

from ingress.service import Service
from rabbit_serve import render

STATIC_PACKAGE = "ingress"
STATIC_DIR = "static"
INDEX = "index.html"
JSON = "application/json"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Only the page's own files run or style it, it talks to its own origin only, and it may
# show the images the user picked (blob: URLs of local files). No inline script or style,
# no frames, no form posts elsewhere, no <base> that would move its relative URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on each load, so a new release's page never meets an old script.
    "Cache-Control": "no-cache",
}


def load_static() -> dict[str, tuple[bytes, str]]:
    """Every servable file of ``ingress/static``: name -> (bytes, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in (resources.files(STATIC_PACKAGE) / STATIC_DIR).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


STATIC_FILES = load_static()

router = APIRouter(include_in_schema=False)


def _file_response(name: str) -> Response:
    body, content_type = STATIC_FILES[name]
    return Response(body, media_type=content_type, headers=SECURITY_HEADERS)


@router.get("/")
async def index() -> Response:
    # Under a route prefix the page is at /web/: Starlette redirects /web there (307),
    # so the page's relative URLs (static/page.js, v1/classify) resolve under the prefix.
    return _file_response(INDEX)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    if name not in STATIC_FILES or name == INDEX:
        # The API's error shape, as for any other unknown path.
        return Response(render.error("Not Found"), status_code=404, media_type=JSON)
    return _file_response(name)


@router.get("/page/config")
async def page_config(service: Service) -> Response:
    """What the page needs before its first call: whether to ask for a key, and top_k's
    default and maximum."""
    settings = service.settings
    body = {
        "api_keys": service.keys.enabled,
        "default_top_k": settings.default_top_k,
        "max_top_k": settings.max_top_k,
    }
    return Response(
        orjson.dumps(body),
        media_type=JSON,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )
