"""The one error map, without a server: gRPC codes to HTTP statuses, never a leaked message
for the gateway's own failures."""

from __future__ import annotations

import grpc
import pytest

from services.http.errors import HTTP_STATUS, from_grpc


class _Error(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(("code", "status"), [
    (grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.NOT_FOUND, 404),
    (grpc.StatusCode.UNAUTHENTICATED, 401), (grpc.StatusCode.PERMISSION_DENIED, 403),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429), (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504), (grpc.StatusCode.ALREADY_EXISTS, 409),
])
def test_request_codes_keep_the_gateways_message(code, status):
    error = from_grpc(_Error(code, "speaker_id: 'x' is unknown"))
    assert (error.status, error.code, error.message) == (status, code.name.lower(), "speaker_id: 'x' is unknown")
    assert error.ws_close_code == 4000 + status
    assert HTTP_STATUS[code] == status


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS])
def test_the_gateways_own_failures_are_500_without_its_details(code):
    error = from_grpc(_Error(code, "Traceback (most recent call last): secret internals"))
    assert error.status == 500
    assert "Traceback" not in error.message and code.name in error.message
