"""The HTTP front's one error map: every error a client can reach becomes JSON
`{"error": {"code": ..., "message": ...}}` with one HTTP status.

gRPC codes from the gateway map to HTTP statuses here and nowhere else; the error `code` is the
gRPC code's name in lower case (e.g. "not_found"), or one of this front's own codes for what it
refuses before calling the gateway ("validation_error", "payload_too_large", "not_found" for an
unknown path, "method_not_allowed"). An unexpected exception is 500 "internal" with a generic
message: tracebacks go to the log, never to the client.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# The gateway's status → the HTTP status a client gets.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,  # the client went away (nginx's convention)
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
INTERNAL_MESSAGE = "internal error in the HTTP front; see its log"
# Application WebSocket close codes: 4000 + the HTTP status of the same error (RFC 6455
# leaves 4000-4999 to applications), so one table serves HTTP and WebSocket clients.
WS_CLOSE_BASE = 4000


class ApiError(Exception):
    """An error with its HTTP status, JSON code and message, raised anywhere in a request."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message)

    @property
    def ws_close_code(self) -> int:
        return WS_CLOSE_BASE + self.status


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def from_grpc(error: grpc.aio.AioRpcError | grpc.RpcError) -> ApiError:
    """The gateway's error as a client sees it: its code mapped, its message kept."""
    code = error.code()
    status = HTTP_STATUS.get(code, 500)
    details = error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and not details:
        details = "the gateway is unavailable"
    if status == 500:
        # UNKNOWN, INTERNAL, DATA_LOSS: the gateway's own bug; its message may be internal.
        logger.error("gateway call failed with %s: %s", code.name, details)
        return ApiError(500, code.name.lower(), f"the gateway failed ({code.name})")
    return ApiError(status, code.name.lower(), details or code.name.lower())


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message)


def _response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path", "form"))
        parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error path of `app` answers in the one JSON shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _response(error)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def grpc_error(request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        return _response(from_grpc(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _response(ApiError(422, "validation_error", _validation_message(error)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}
        message = error.detail if isinstance(error.detail, str) else "request refused"
        if error.status_code == 404 and message == "Not Found":
            message = f"no such path: {request.url.path}"
        return _response(ApiError(error.status_code, codes.get(error.status_code, "http_error"), message))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _response(ApiError(500, "internal", INTERNAL_MESSAGE))
