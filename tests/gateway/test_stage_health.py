"""The gateway's health tells the truth about its stages: NOT_SERVING while a stage is dead or
draining, SERVING again once it is back on its address, and meanwhile requests fail at once
with UNAVAILABLE naming the stage, while the gateway itself keeps running."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.metrics import make_registry
from services.common.pb import tts_pb2, tts_pb2_grpc
from services.common.server import LIVENESS_SERVICE
from services.flow.config import FlowServiceConfig
from services.flow.server import create_app as create_flow
from services.llm.config import LLMServiceConfig
from services.llm.server import create_app as create_llm
from tests.stack import running_stack

pytestmark = pytest.mark.slow
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _next_status(watch) -> int:
    # A guard against a hang, not a timing assertion: the change comes within a second or two.
    return (await asyncio.wait_for(watch.read(), timeout=60)).status


async def _synthesize(address: str) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        try:
            async for _ in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello there.", stream=True), timeout=120):
                pass
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(("stage", "create", "config_type"), [
    ("flow", create_flow, FlowServiceConfig),
    ("llm", create_llm, LLMServiceConfig),
])
async def test_gateway_health_follows_a_stage_that_dies_and_returns(tiny_model_dir, stage, create, config_type):
    async with running_stack(tiny_model_dir) as stack:
        async with grpc.aio.insecure_channel(stack.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert await _next_status(watch) == SERVING
            dead = getattr(stack, stage)
            port = dead.host.port
            await dead.stop()
            assert await _next_status(watch) == NOT_SERVING
            # Not ready, but alive: a liveness probe must not restart a gateway for its stage.
            liveness = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE))
            assert liveness.status == SERVING
            code, details = await _synthesize(stack.address)
            assert code == grpc.StatusCode.UNAVAILABLE
            assert f"{stage} stage" in details

            # The same stage again on the same address: the gateway finds it, no restart needed.
            revived = create(config_type(model_dir=tiny_model_dir, port=port, metrics_port=-1), make_registry())
            await revived.start()
            try:
                assert await _next_status(watch) == SERVING
                assert await _synthesize(stack.address) == (grpc.StatusCode.OK, "")
            finally:
                await revived.stop()


async def test_a_draining_stage_makes_the_gateway_not_serving(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        async with grpc.aio.insecure_channel(stack.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert await _next_status(watch) == SERVING
            # Draining, not yet closed: its health says NOT_SERVING and the gateway follows.
            await stack.vocoder.host.drain(timeout=0)
            assert await _next_status(watch) == NOT_SERVING
