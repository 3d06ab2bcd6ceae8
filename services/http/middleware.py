"""ASGI middleware around every route: body size limits (413 before the body is read) and the
per-request metrics, including requests whose stream fails after the status was sent."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable, MutableMapping

from services.http.errors import error_body
from services.http.metrics import UNMATCHED, HttpMetrics

logger = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def endpoint_of(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


async def send_json_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a body over its limit: multipart bodies (uploads) get `upload_limit`, others
    `body_limit`. A declared Content-Length is checked before anything is read; a chunked body
    is read up to the limit and replayed to the app."""

    def __init__(self, app: ASGIApp, body_limit: int, upload_limit: int) -> None:
        self.app = app
        self.body_limit = body_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        limit, setting = ((self.upload_limit, "max_upload_bytes") if multipart
                          else (self.body_limit, "max_body_bytes"))
        message = (f"the request body exceeds {limit} bytes "
                   f"(the HTTP front's {setting}, COSYVOICE_HTTP_{setting.upper()})")
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > limit:
                await send_json_error(send, 413, "payload_too_large", message)
                return
            await self.app(scope, receive, send)  # the server enforces the declared length
            return
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)
            return
        chunks: list[Message] = []
        size = 0
        while True:
            received = await receive()
            chunks.append(received)
            if received["type"] != "http.request":
                break
            size += len(received.get("body", b""))
            if size > limit:
                await send_json_error(send, 413, "payload_too_large", message)
                return
            if not received.get("more_body", False):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts every request by route template and status. An exception after the response
    started (a stream the gateway broke) is logged in one line and counted; the connection is
    then closed without the final chunk, so the client sees a cut stream, not a short file."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        state = {"status": 500, "started": False}

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            elif message["type"] == "websocket.close":
                state["status"] = message.get("code", 1000)
            elif message["type"] == "websocket.accept":
                state["status"] = 1000
            elif message["type"] == "websocket.http.response.start":
                state["status"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observing_send)
        except Exception as error:  # noqa: BLE001 - the status is out; all that is left is to count it
            if scope["type"] == "http" and not state["started"]:
                raise
            endpoint = endpoint_of(scope)
            code = getattr(error, "code", "internal")
            self.metrics.stream_failures.labels(endpoint, str(code)).inc()
            logger.warning("%s %s: the stream failed after its status was sent (%s); closing the connection",
                           scope.get("method", "WEBSOCKET"), scope.get("path"), error)
        finally:
            self.metrics.in_flight.dec()
            endpoint = endpoint_of(scope)
            self.metrics.requests.labels(endpoint, str(state["status"])).inc()
            self.metrics.duration.labels(endpoint).observe(time.monotonic() - start)
