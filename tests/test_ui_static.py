"""The web page's static side, without services: its script budget, its headers (a strict CSP, no cookie) and
a scan of its sources for the ways data could reach the page as HTML."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.api.routes_ui import CSP, UI_DIR

SCRIPT_BUDGET = 150 * 1024


@pytest.fixture(scope="module")
def client():
    from app.api.main import create_app
    from app.settings import Settings

    # no `with`: the lifespan (database, keys) is not needed to serve static files
    return TestClient(create_app(Settings()))


def test_script_stays_under_150_kb():
    scripts = sorted(UI_DIR.glob("**/*.js"))
    assert scripts, "no script found in app/ui"
    total = sum(p.stat().st_size for p in scripts)
    assert total < SCRIPT_BUDGET, f"{total} bytes of script: {[(p.name, p.stat().st_size) for p in scripts]}"


@pytest.mark.parametrize("path", ["/ui/", "/ui/index.html", "/ui/main.js", "/ui/app.css", "/ui/sw.js"])
def test_every_ui_response_has_the_csp_and_no_cookie(client, path):
    r = client.get(path)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert csp == CSP
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in csp and "http" not in csp and "*" not in csp
    assert directives["frame-ancestors"] == "'none'" and directives["require-trusted-types-for"] == "'script'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in r.headers


def test_a_missing_ui_file_is_404_with_the_headers_too(client):
    r = client.get("/ui/nope.js")
    assert r.status_code == 404 and r.headers["content-security-policy"] == CSP


def test_root_and_bare_ui_lead_to_the_page(client):
    for path in ("/", "/ui"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/ui/"


def test_module_scripts_and_service_worker_types(client):
    assert "javascript" in client.get("/ui/main.js").headers["content-type"]
    assert "javascript" in client.get("/ui/sw.js").headers["content-type"]


def test_index_has_no_inline_script_or_style():
    html = (UI_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    assert "http://" not in html and "https://" not in html, "nothing from another origin"


def test_no_html_sink_in_the_sources():
    """Data reaches the page through textContent and Text nodes only (the CSP's Trusted Types enforce it in
    the browser; this keeps the sources honest too)."""
    sinks = re.compile(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function\(|"
                       r"setAttribute\(\s*['\"](style|on\w+)['\"]")
    for p in UI_DIR.glob("**/*.js"):
        for n, line in enumerate(p.read_text().splitlines(), 1):
            assert not sinks.search(line), f"{p.name}:{n}: {line.strip()}"
