"""Two ASGI middlewares: the API key (every route but /health needs `Authorization: Bearer KEY` when one is set)
and a cap on request bodies (an upload larger than the limit is answered 413 before it is read to the end)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.server.errors import INVALID_REQUEST, APIError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})


async def send_error(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a JSON error body."""
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class ApiKeyMiddleware:
    """401 in OpenAI's shape unless the request carries the key (compared in constant time)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        if not given:
            message = "You didn't provide an API key. Send it in the Authorization header (Authorization: Bearer KEY)."
            code = None
        else:
            message = "Incorrect API key provided."
            code = "invalid_api_key"
        body = error_body(message, INVALID_REQUEST, None, code)  # OpenAI's type for both
        await send_error(send, 401, body, [(b"www-authenticate", b"Bearer")])


class BodyTooLarge(APIError):
    """The request body passed its limit (413; raised while the app reads it)."""

    def __init__(self, limit: int) -> None:
        body = _too_large(limit)["error"]
        super().__init__(413, body["message"], body["type"], body["param"], body["code"])


class BodyLimitMiddleware:
    """413 for request bodies over a path's limit: at once from Content-Length, else as the bytes arrive."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, 413, _too_large(limit))
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, _too_large(limit))


def _too_large(limit: int) -> dict[str, Any]:
    return error_body(
        f"The request body is larger than this server accepts ({limit} bytes).",
        INVALID_REQUEST,
        "file",
        "file_too_large",
    )
