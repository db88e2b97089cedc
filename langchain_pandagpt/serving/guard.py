"""The server's outermost ASGI layer: the API key, the body cap, and the last-resort error
handler, in the order an attacker meets them.

* The key is checked from the headers alone, before a byte of the body is read: a client
  without it cannot make the server buffer or parse 64 MB (401 at once).
* Bodies over the cap get a 413 whether or not ``Content-Length`` is sent; the app sees the
  body only once it is known to fit.
* Any error a handler did not expect becomes OpenAI error JSON, 500 (503 for memory
  exhaustion), sent as a normal response: the keep-alive connection stays usable, where an
  exception escaping to uvicorn would close it. The traceback goes to the log, not the client.
"""

from __future__ import annotations

import hmac
import json
import logging

import torch
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from langchain_pandagpt.serving.protocol import APIError

logger = logging.getLogger(__name__)

#: Words torch's allocators use when an allocation fails (CPU: "can't allocate memory").
_ALLOCATION_FAILURES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def unexpected_error(error: BaseException) -> APIError:
    """The error JSON for an exception no handler expected (its text stays in the log)."""
    if isinstance(error, APIError):
        return error
    if out_of_memory(error):
        return APIError(
            503,
            "the server ran out of memory for this request; retry later or send smaller inputs",
            type="server_error",
            code="out_of_memory",
        )
    return APIError(
        500,
        f"internal server error ({type(error).__name__}); the server's log has the details",
        type="server_error",
        code="internal_error",
    )


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (Python's, or torch's on any device)."""
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        words in str(error).lower() for words in _ALLOCATION_FAILURES
    )


async def send_error(send: Send, error: APIError) -> None:
    """``error`` as a complete JSON response."""
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestGuard:
    """Wraps the app: ``api_key`` (when set) on paths under ``protected``, bodies capped at
    ``max_body`` bytes, unexpected errors answered as JSON."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, max_body: int, protected: str = "/v1"
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await send_error(
                send,
                APIError(
                    401,
                    "invalid or missing API key: send 'Authorization: Bearer <key>'",
                    type="authentication_error",
                    code="invalid_api_key",
                ),
            )
            return
        body = await self._body(scope, receive, send)
        if body is None:
            return
        started = False

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()
            message: Message = {"type": "http.request", "body": body, "more_body": False}
            body = None
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, tracked)
        except ClientDisconnect:
            logger.info("%s %s: the client left", scope["method"], scope["path"])
        except Exception as error:
            if started:  # too late for an error response: the connection has to go
                raise
            answer = unexpected_error(error)
            level = logging.ERROR if answer.status >= 500 else logging.INFO
            logger.log(level, "%s %s failed", scope["method"], scope["path"], exc_info=error)
            await send_error(send, answer)

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None or not scope["path"].startswith(self.protected):
            return True
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.api_key)

    async def _body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or ``None`` once a 413 went out (or the client left)."""
        too_big = APIError(
            413, f"request body is over the {self.max_body}-byte limit", code="request_too_large"
        )
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await send_error(send, too_big)
            return None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await send_error(send, too_big)
                return None
            if not message.get("more_body"):
                return bytes(body)
