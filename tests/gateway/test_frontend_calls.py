"""FrontendClient: a failed frontend call is counted under the frontend's own code, then mapped."""

from __future__ import annotations

import grpc
import pytest

from gateway.frontend_calls import FrontendClient
from gateway.metrics import GatewayMetrics
from services.common.errors import InvalidRequest, UpstreamError
from services.common.metrics import make_registry


class FailingStub:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def SplitText(self, request: object, timeout: float) -> object:  # noqa: N802 - the RPC's name
        raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no")


@pytest.mark.parametrize(("code", "raised"), [(grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
                                              (grpc.StatusCode.UNAVAILABLE, UpstreamError)])
async def test_a_failed_call_is_counted_then_mapped(code, raised):
    registry = make_registry()
    client = FrontendClient(FailingStub(code), timeout=5.0, metrics=GatewayMetrics(registry))
    with pytest.raises(raised):
        await client.segments("text", normalize=True)
    counted = registry.get_sample_value(
        "cosyvoice_gateway_upstream_errors_total", {"stage": "frontend", "code": code.name}
    )
    assert counted == 1
