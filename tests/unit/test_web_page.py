"""The web page's files and routes on the real FastAPI app, without Ray: served open with a
strict CSP, every asset shipped and referenced, nothing from another origin, no HTML built
from data in the script, and none of it in the OpenAPI schema."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from ingress import page
from ingress.api import create_app
from rabbit_serve.settings import Settings
from tests.ingress_fakes import client_for, make_service

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "ingress" / "static"
ASSETS = sorted(p.name for p in STATIC.iterdir() if p.name != page.INDEX)
KEYS = Settings(api_keys=("key-one",))
# The one absolute URL allowed: the SVG namespace, a name that is never fetched.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def static_text(name: str) -> str:
    return (STATIC / name).read_text()


def assert_page_headers(response, content_type: str) -> None:
    assert response.headers["content-type"] == content_type
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp and "http" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("settings", [Settings(), KEYS], ids=["keys-off", "keys-on"])
async def test_the_page_loads_without_a_key_with_strict_headers(settings):
    service, producer = make_service(settings)
    async with client_for(service) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert_page_headers(response, "text/html; charset=utf-8")
    assert response.text == static_text("index.html")
    assert "<title>" in response.text
    assert producer.published == []


@pytest.mark.parametrize("name", ASSETS)
async def test_each_asset_is_served_with_its_type_and_the_same_headers(name):
    service, _ = make_service(KEYS)
    async with client_for(service) as client:
        response = await client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.content == (STATIC / name).read_bytes()
    assert_page_headers(response, page.CONTENT_TYPES[Path(name).suffix])


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/index.html",
        "/static/../page.py",
        "/static/%2e%2e%2fpage.py",
        "/static/..%2fapi.py",
        "/static/",
    ],
)
async def test_only_the_table_of_files_is_served(path):
    service, _ = make_service()
    async with client_for(service) as client:
        response = await client.get(path)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"


async def test_page_config_says_whether_keys_are_required_and_the_top_k_range():
    for settings, keys in ((Settings(), False), (KEYS, True)):
        service, _ = make_service(settings)
        async with client_for(service) as client:
            response = await client.get("/page/config")
        assert response.status_code == 200
        assert response.json() == {"api_keys": keys, "default_top_k": 5, "max_top_k": 100}
        assert response.headers["cache-control"] == "no-store"
    service, _ = make_service(Settings(default_top_k=3, max_top_k=7))
    async with client_for(service) as client:
        config = (await client.get("/page/config")).json()
    assert (config["default_top_k"], config["max_top_k"]) == (3, 7)


def test_no_page_route_is_in_the_openapi_schema():
    paths = create_app().openapi()["paths"]
    assert "/" not in paths and "/page/config" not in paths
    assert not [p for p in paths if p.startswith("/static")]


def test_every_asset_is_referenced_and_every_reference_exists():
    html = static_text("index.html")
    referenced = set(re.findall(r'(?:src|href)="static/([^"]+)"', html))
    assert referenced == set(ASSETS)
    # Relative URLs only: the page also works under a route prefix (/web/).
    assert not re.search(r'(?:src|href)="/', html)


@pytest.mark.parametrize("name", sorted(p.name for p in STATIC.iterdir()))
def test_no_asset_loads_anything_from_elsewhere(name):
    text = static_text(name).replace(SVG_NAMESPACE, "")
    assert not re.search(r"(?i)\b(?:https?:|wss?:|ftp:)|//[a-z0-9.-]+\.[a-z]{2,}", text), name
    assert "@import" not in text and "url(" not in text


def test_the_html_has_no_inline_script_style_or_handlers():
    html = static_text("index.html")
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="static/page.js" defer', "")]
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)


def test_the_script_never_turns_data_into_html():
    js = static_text("page.js")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink
    assert "new Function" not in js and 'setTimeout("' not in js
    # The key lives in this tab only.
    assert "sessionStorage" in js and "localStorage" not in js and "document.cookie" not in js
    assert "Authorization = `Bearer ${key}`" in js


def test_the_script_sends_what_the_api_reads():
    js = static_text("page.js")
    # Multipart with the field names ingress.body reads, to the same path as curl.
    assert 'form.append("file", file, file.name)' in js and 'form.append("top_k"' in js
    assert 'new URL("v1/classify", BASE)' in js and 'new URL("page/config", BASE)' in js
    # The timing keys the consumer writes (consumer.classify.build_result) have names.
    for key in ("queue", "batch_wait", "inference"):
        assert f"{key}:" in js


def test_the_static_files_ship_in_the_wheel():
    # pyproject's package-data for ingress: what a non-editable install gets.
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = re.search(
        r"^\[tool\.setuptools\.package-data\]\n(.*?)(?:^\[|\Z)", pyproject, re.M | re.S
    )
    assert section, "no [tool.setuptools.package-data]"
    patterns = re.findall(r'"([^"]+)"', re.search(r"^ingress = \[(.*?)\]", section[1], re.M)[1])
    for path in STATIC.iterdir():
        relative = f"static/{path.name}"
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
    assert set(page.STATIC_FILES) == {p.name for p in STATIC.iterdir()}
