"""Request body cap enforced while the body streams in, not after it has been buffered."""

from __future__ import annotations

import json

from fastapi import HTTPException


class BodySizeLimit:
    """ASGI middleware: 413 as soon as a request body passes ``max_bytes`` (Content-Length or counted)."""

    def __init__(self, app, max_bytes: int) -> None:  # noqa: ANN001
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001, ANN204
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(send, self.max_bytes)
        seen = 0

        async def limited_receive():  # noqa: ANN202
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # raised inside the endpoint's body read, so FastAPI answers it as a 413
                    raise HTTPException(413, f"request body larger than the {self.max_bytes} byte limit")
            return message

        await self.app(scope, limited_receive, send)


async def _too_large(send, max_bytes: int) -> None:  # noqa: ANN001
    body = json.dumps({"detail": f"request body larger than the {max_bytes} byte limit"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
