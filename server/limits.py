"""What one client can make the server spend: request bodies (turns at the model: ponderscope.core.loaded.InferenceSlots).

Every limit a client can meet is answered with a 4xx that names it (see README, "Reliability").
"""
from __future__ import annotations

import json

from fastapi import HTTPException

from ponderscope.core.imaging import MAX_UPLOAD_BYTES

UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024  # the file plus its multipart headers and form fields
OTHER_BODY_BYTES = 1024 * 1024  # JSON bodies: 10,000 bytes of text, even escaped as \uXXXX, is 60 KB


def body_limit(method: str, path: str) -> int:
    """The most bytes a request's body may have: uploads carry an image, the rest small JSON."""
    if method == "POST" and (path == "/api/images" or (path.startswith("/api/models/") and path.endswith("/image"))):
        return UPLOAD_BODY_BYTES
    return OTHER_BODY_BYTES


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, declared: int | None = None):
        size = f"{declared / 1e6:.1f} MB" if declared is not None else f"over {limit / 1e6:.1f} MB"
        super().__init__(413, f"the request body is {size}; the limit for this request is {limit / 1e6:.1f} MB"
                              + (" (an image of at most 20 MB)" if limit == UPLOAD_BODY_BYTES else ""))


class BodyLimit:
    """ASGI middleware: refuse a body over its limit as soon as it passes it, whether or not it
    declares a Content-Length (chunked bodies are counted as they arrive, never buffered whole).

    Past the limit, the app's next read raises BodyTooLarge, an HTTPException: FastAPI's body and
    form readers re-raise those and its exception middleware answers 413; if the app has already
    answered, the rest of the body is left unread."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = body_limit(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, BodyTooLarge(limit, int(declared)))
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as error:  # raised where no handler turned it into a response
            if not started:
                await self._refuse(send, error)

    @staticmethod
    async def _refuse(send, error: HTTPException) -> None:
        body = json.dumps({"detail": error.detail}).encode()
        await send({"type": "http.response.start", "status": error.status_code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
