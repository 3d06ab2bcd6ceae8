"""Graceful drain (services/common/drain.py through ServiceHost.stop): NOT_SERVING first, new calls
refused with UNAVAILABLE, calls in flight finish, and what outlives the drain timeout is cut with
a status that says so, not the transport's "Cancelling all calls"."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ServerConfig
from services.common.pb import llm_pb2, llm_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost

SERVICE = llm_pb2.DESCRIPTOR.services_by_name["SpeechTokenGenerator"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Slow(llm_pb2_grpc.SpeechTokenGeneratorServicer):
    """Streams one token, then waits for `release` before the last one."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def Generate(self, request, context):
        yield llm_pb2.GenerateResponse(tokens=[1])
        self.started.set()
        await self.release.wait()
        yield llm_pb2.GenerateResponse(tokens=[2], finish_reason=1)


@pytest.fixture
async def host():
    servicer = _Slow()
    binding = ServiceBinding(SERVICE, servicer, llm_pb2_grpc.add_SpeechTokenGeneratorServicer_to_server)
    host = ServiceHost(ServerConfig(port=0), [binding], service="llm")
    await host.start()
    await host.warm_up(None)
    host.servicer = servicer
    yield host
    servicer.release.set()
    await host.stop(grace=0)


def _handled(host: ServiceHost, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": "Generate", "grpc_code": code}
    return host.registry.get_sample_value("cosyvoice_grpc_server_handled_total", labels) or 0.0


async def _generate_error(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text="x"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    return info.value


async def test_in_flight_streams_finish_and_new_calls_are_refused_while_draining(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text="long"))
        assert list((await call.read()).tokens) == [1]
        stopping = asyncio.create_task(host.stop(grace=60))
        assert (await watch.read()).status == NOT_SERVING  # first: load balancers stop sending
        refused = await _generate_error(channel)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.details() == "llm: shutting down (draining); retry on another replica"
        host.servicer.release.set()  # the stream in flight still completes
        assert list((await call.read()).tokens) == [2]
        assert await call.code() == grpc.StatusCode.OK
        assert await stopping == 0  # nothing was cut
    assert _handled(host, "OK") == 1 and _handled(host, "UNAVAILABLE") == 1


async def test_streams_that_outlive_the_drain_timeout_are_cut_with_a_clear_status(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text="long"))
        assert list((await call.read()).tokens) == [1]
        await host.servicer.started.wait()
        assert await host.stop(grace=0.2) == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "llm: shutting down; the stream was cut at the 0.2 s drain timeout (grace_seconds)"
    assert _handled(host, "UNAVAILABLE") == 1


async def test_an_open_health_watch_does_not_hold_the_drain(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        assert host.calls.in_flight == 0
        # A guard against a hang, far above the drain's real cost, not a timing assertion.
        assert await asyncio.wait_for(host.stop(grace=600), timeout=60) == 0


async def test_a_client_that_cancels_is_not_reported_as_cut(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text="long"))
        assert list((await call.read()).tokens) == [1]
        await host.servicer.started.wait()
        call.cancel()
        await host.calls.wait_idle(60)
    assert _handled(host, "CANCELLED") == 1
    assert await host.stop(grace=0) == 0
