"""/ui/: the web page for the people who send recordings (app/ui/), served by the API, same origin.

Static files only: plain ES modules, no build step. Every response under /ui/ carries a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script or style attribute,
nothing from another origin, Trusted Types so that no string can reach an HTML sink) and sets no cookie:
the page keeps the tenant's key in sessionStorage and sends it as the bearer header.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_DIR = Path(__file__).resolve().parents[1] / "ui"

#: the one Trusted Types policy the page creates: it turns the service worker's own URL into a TrustedScriptURL
TT_POLICY = "asrq-sw"

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "media-src 'self' blob:",  # the player: the service worker's stream, or a Blob where there is no worker
    "connect-src 'self'",
    "worker-src 'self'",
    "manifest-src 'self'",
    "font-src 'self'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "require-trusted-types-for 'script'",
    f"trusted-types {TT_POLICY}",
])

SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    # revalidated on every load (ETag): a new release of the page is picked up at once
    "cache-control": "no-cache",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response of the wrapped app (replacing any it set itself)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.raw = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.raw}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + self.raw}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except HTTPException as e:  # StaticFiles' 404 / 405: answered here, so they carry the headers too
            await PlainTextResponse(str(e.detail), e.status_code, headers=e.headers)(scope, receive, send_with_headers)


def install_ui(app: FastAPI) -> None:
    """Mount the page at /ui/ (with its headers), and send / and /ui to it."""
    app.mount("/ui", SecurityHeaders(StaticFiles(directory=UI_DIR, html=True)), name="ui")

    @app.get("/ui", include_in_schema=False)
    @app.get("/", include_in_schema=False)
    def _to_ui() -> RedirectResponse:
        return RedirectResponse("/ui/", 307)
