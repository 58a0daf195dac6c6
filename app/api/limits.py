"""Request body caps, by content type, enforced while the body streams in, not after it has been buffered."""

from __future__ import annotations

from fastapi import HTTPException

MULTIPART = b"multipart/form-data"


class BodySizeLimit:
    """ASGI middleware: 413 as soon as a request body passes its cap (Content-Length or counted).

    Multipart uploads may be as large as ``max_upload_bytes``; every other body (JSON) only
    ``max_json_bytes``, since it is buffered and parsed whole. Nothing is checked on arrival: the cap is
    applied when the endpoint starts reading, which is after ``current_tenant`` ran, so a request without
    a valid key is answered 401 and its body is never read at all.
    """

    def __init__(self, app, max_upload_bytes: int, max_json_bytes: int) -> None:  # noqa: ANN001
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes

    def limit_for(self, content_type: bytes) -> int:
        media_type = content_type.split(b";", 1)[0].strip().lower()
        return self.max_upload_bytes if media_type == MULTIPART else self.max_json_bytes

    async def __call__(self, scope, receive, send):  # noqa: ANN001, ANN204
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        limit = self.limit_for(headers.get(b"content-type", b""))
        declared = headers.get(b"content-length")
        seen = 0

        async def limited_receive():  # noqa: ANN202
            nonlocal seen
            # raised inside the endpoint's body read, so FastAPI answers it as a 413; a declared length over
            # the cap is refused before a single byte is read
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body larger than the {limit} byte limit")
