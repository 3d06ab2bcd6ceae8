"""What every route module shares: the gateway client dependency and the documented error
responses (one JSON shape, services/http/errors.py)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel

from services.http.gateway_client import GatewayClient


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def gateway(request: Request) -> GatewayClient:
    return request.app.state.gateway


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "The gateway refused a value (INVALID_ARGUMENT)",
        401: "Missing or unknown API key (the gateway's keys)",
        403: "The key's scope does not allow this",
        404: "Unknown voice",
        413: "The body exceeds the front's size limit",
        422: "The request does not match the schema",
        429: "The gateway is at its concurrency limit",
        503: "The gateway (or a stage behind it) is unavailable",
        504: "The gateway's deadline passed",
    }.items()
}
ERROR_RESPONSES = _ERRORS
AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Audio in the requested format (chunked while synthesised), or Server-Sent Events",
          "content": {"audio/wav": {}, "audio/pcm": {}, "audio/mpeg": {}, "audio/ogg": {}, "audio/flac": {},
                      "text/event-stream": {}}},
    **_ERRORS,
}
