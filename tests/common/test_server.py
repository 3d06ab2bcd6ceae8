import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.config import ServerConfig
from services.common.errors import (
    INTERNAL_STAGE_REQUEST_CODES,
    InvalidRequest,
    NotFound,
    Overloaded,
    Unavailable,
    map_errors,
    upstream_error,
)
from services.common.pb import llm_pb2, llm_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost

SERVICE = llm_pb2.DESCRIPTOR.services_by_name["SpeechTokenGenerator"].full_name


class _Fake(llm_pb2_grpc.SpeechTokenGeneratorServicer):
    def __init__(self) -> None:
        self.release = asyncio.Event()

    @map_errors
    async def Generate(self, request, context):
        errors = {"bad": InvalidRequest("text: empty"), "who": NotFound("speaker x"),
                  "full": Overloaded("queue full"), "down": Unavailable("flow down"), "bug": KeyError("x")}
        if request.text in errors:
            raise errors[request.text]
        yield llm_pb2.GenerateResponse(tokens=[1])
        if request.text == "slow":
            await self.release.wait()
        yield llm_pb2.GenerateResponse(tokens=[2], finish_reason=1)


@pytest.fixture
async def host():
    servicer = _Fake()
    host = ServiceHost(
        ServerConfig(port=0), [ServiceBinding(SERVICE, servicer, llm_pb2_grpc.add_SpeechTokenGeneratorServicer_to_server)]
    )
    await host.start()
    host.servicer = servicer
    yield host
    await host.stop(grace=0)


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return reply.status


async def test_health_is_not_serving_until_warm_then_serving(host):
    assert await _health(host.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    loaded = []
    await host.warm_up(lambda: loaded.append(True))
    assert loaded == [True]
    assert await _health(host.address) == health_pb2.HealthCheckResponse.SERVING
    assert await _health(host.address, SERVICE) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_our_service_and_health(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            break
    assert {SERVICE, "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("text", "code", "details"),
    [
        ("bad", grpc.StatusCode.INVALID_ARGUMENT, "text: empty"),
        ("who", grpc.StatusCode.NOT_FOUND, "speaker x"),
        ("full", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
        ("down", grpc.StatusCode.UNAVAILABLE, "flow down"),
        ("bug", grpc.StatusCode.INTERNAL, "internal error: KeyError"),
    ],
)
async def test_error_map(host, text, code, details):
    async with grpc.aio.insecure_channel(host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text=text))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == code
    assert info.value.details() == details


async def test_graceful_stop_drains_an_in_flight_stream(host):
    await host.warm_up(None)
    async with grpc.aio.insecure_channel(host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text="slow"))
        first = await call.read()
        assert list(first.tokens) == [1]
        stopping = asyncio.create_task(host.stop(grace=5))
        await asyncio.sleep(0)  # let stop() begin before the stream is released
        assert await _health_after_stop(host) in (health_pb2.HealthCheckResponse.NOT_SERVING, None)
        host.servicer.release.set()
        last = await call.read()
        assert list(last.tokens) == [2]
        await stopping


async def _health_after_stop(host):
    try:
        return await asyncio.wait_for(_health(host.address), 1)
    except (grpc.aio.AioRpcError, asyncio.TimeoutError):
        return None  # the listener may already be closed: also not serving


def test_upstream_errors_keep_request_codes_and_mask_the_rest():
    class _Err(grpc.aio.AioRpcError):
        def __init__(self, code):
            super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")

    assert upstream_error("llm", _Err(grpc.StatusCode.INVALID_ARGUMENT)).code == grpc.StatusCode.INVALID_ARGUMENT
    down = upstream_error("flow", _Err(grpc.StatusCode.UNAVAILABLE))
    assert down.code == grpc.StatusCode.UNAVAILABLE
    assert str(down) == "flow stage: UNAVAILABLE: boom"
    assert upstream_error("flow", _Err(grpc.StatusCode.INTERNAL)).code == grpc.StatusCode.INTERNAL
    # The flow and vocoder only see messages the gateway built: their rejections are our bug...
    ours = upstream_error("vocoder", _Err(grpc.StatusCode.INVALID_ARGUMENT), INTERNAL_STAGE_REQUEST_CODES)
    assert ours.code == grpc.StatusCode.INTERNAL
    # ...but a speaker the model lacks is the caller's.
    theirs = upstream_error("flow", _Err(grpc.StatusCode.NOT_FOUND), INTERNAL_STAGE_REQUEST_CODES)
    assert theirs.code == grpc.StatusCode.NOT_FOUND


def test_a_send_on_a_broken_stage_call_is_the_stage_being_down_not_our_bug():
    # grpc.aio reports a message it could not send on a call that had already broken (its stage
    # died) as INTERNAL "Internal error from Core", whatever the stage said or would have said.
    local = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                 details="Internal error from Core")
    error = upstream_error("flow", local, INTERNAL_STAGE_REQUEST_CODES)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert str(error) == "flow stage: UNAVAILABLE: the call broke while sending to it"


async def test_metrics_listen_on_their_own_host_and_a_taken_port_is_named():
    import urllib.request

    from services.common.config import ConfigError

    host = ServiceHost(ServerConfig(port=0, metrics_port=0, metrics_host="127.0.0.2"), [], service="test")
    await host.start()
    try:
        assert host.metrics_address.startswith("127.0.0.2:")
        assert host.ready_line("test") == f"test listening on {host.address} metrics {host.metrics_address}"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://{host.metrics_address}/metrics", timeout=5).read().decode()
        )
        assert 'cosyvoice_build_info{service="test"' in body
        taken = ServiceHost(ServerConfig(port=0, metrics_port=host.metrics_port, metrics_host="127.0.0.2"), [])
        with pytest.raises(ConfigError, match=rf"--metrics-port / COSYVOICE_METRICS_PORT: cannot listen on "
                                              rf"127.0.0.2:{host.metrics_port} \(Address already in use\)"):
            await taken.start()
    finally:
        await host.stop(grace=0)


async def test_without_a_metrics_port_nothing_is_served():
    host = ServiceHost(ServerConfig(port=0), [])
    assert host.metrics_address is None
    assert "metrics" not in host.ready_line("x")
