"""The one interceptor counts every RPC a server answers, by its final status code: handler
results, aborts, unknown methods (no servicer involved) and client cancellations."""

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ServerConfig
from services.common.errors import InvalidRequest, NotFound, map_errors
from services.common.gpu_metrics import GpuMemoryCollector
from services.common.metrics import make_registry
from services.common.pb import llm_pb2, llm_pb2_grpc
from services.common.rpc_metrics import split_method
from services.common.server import ServiceBinding, ServiceHost

SERVICE = llm_pb2.DESCRIPTOR.services_by_name["SpeechTokenGenerator"].full_name
HANDLED = "cosyvoice_grpc_server_handled_total"


class _Fake(llm_pb2_grpc.SpeechTokenGeneratorServicer):
    def __init__(self) -> None:
        self.streaming = asyncio.Event()
        self.cancelled = asyncio.Event()

    @map_errors
    async def Generate(self, request, context):
        if request.text == "bad":
            raise InvalidRequest("text: empty")
        if request.text == "who":
            raise NotFound("speaker x")
        yield llm_pb2.GenerateResponse(tokens=[1])
        if request.text == "forever":
            self.streaming.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        yield llm_pb2.GenerateResponse(tokens=[2], finish_reason=1)


@pytest.fixture
async def host():
    servicer = _Fake()
    host = ServiceHost(
        ServerConfig(port=0),
        [ServiceBinding(SERVICE, servicer, llm_pb2_grpc.add_SpeechTokenGeneratorServicer_to_server)],
        make_registry(),
        service="llm",
    )
    await host.start()
    host.servicer = servicer
    yield host
    await host.stop(grace=0)


def _handled(host: ServiceHost, code: str, service: str = SERVICE, method: str = "Generate") -> float:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
    return host.registry.get_sample_value(HANDLED, labels) or 0.0


async def _recorded(host: ServiceHost, code: str) -> float:
    """The count once the handler has unwound. context.abort sends the status before it raises,
    so the caller may hear the code a moment before the interceptor records it: wait, bounded."""
    for _ in range(500):
        if _handled(host, code):
            break
        await asyncio.sleep(0.01)
    return _handled(host, code)


async def _generate(address: str, text: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text=text))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("text", "code"), [("fine", "OK"), ("bad", "INVALID_ARGUMENT"), ("who", "NOT_FOUND")]
)
async def test_a_handler_outcome_is_counted_with_its_code(host, text, code):
    assert (await _generate(host.address, text)).name == code
    assert await _recorded(host, code) == 1
    count = host.registry.get_sample_value(
        "cosyvoice_grpc_server_handling_seconds_count", {"grpc_service": SERVICE, "grpc_method": "Generate"}
    )
    assert count == 1


async def test_an_unknown_method_is_counted_as_unimplemented(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"")
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary("/scanner.Probe/Anything")(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # A service this server has keeps its name; the method, and any foreign service, are
    # "unknown" (the caller chose them: as labels they could grow without bound).
    assert _handled(host, "UNIMPLEMENTED", SERVICE, "unknown") == 1
    assert _handled(host, "UNIMPLEMENTED", "unknown", "unknown") == 1


async def test_a_client_cancel_is_counted_as_cancelled(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(llm_pb2.GenerateRequest(text="forever"))
        await call.read()
        await host.servicer.streaming.wait()
        call.cancel()
        await asyncio.wait_for(host.servicer.cancelled.wait(), 10)
    assert await _recorded(host, "CANCELLED") == 1
    assert _handled(host, "OK") == 0


async def test_health_checks_are_counted_too(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert _handled(host, "OK", "grpc.health.v1.Health", "Check") == 1


def test_process_and_build_info_are_on_the_service_registry(host):
    assert host.registry.get_sample_value("process_resident_memory_bytes") > 0
    assert host.registry.get_sample_value("process_open_fds") > 0
    assert host.registry.get_sample_value("process_cpu_seconds_total") is not None
    info = [s for m in host.registry.collect() if m.name == "cosyvoice_build_info" for s in m.samples]
    assert [(s.labels["service"], s.value) for s in info] == [("llm", 1.0)]
    assert info[0].labels["version"]


def test_split_method():
    assert split_method("/cosyvoice.v1.TextToSpeech/Synthesize") == ("cosyvoice.v1.TextToSpeech", "Synthesize")
    assert split_method("garbage") == ("unknown", "garbage")


def test_gpu_memory_is_read_at_scrape_time():
    used = {"allocated": 100, "reserved": 300}
    registry = make_registry()
    registry.register(GpuMemoryCollector("cuda:1", lambda i: used["allocated"] * (i + 1), lambda i: used["reserved"]))
    assert registry.get_sample_value("cosyvoice_gpu_memory_allocated_bytes", {"device": "cuda:1"}) == 200
    used["allocated"] = 150
    assert registry.get_sample_value("cosyvoice_gpu_memory_allocated_bytes", {"device": "cuda:1"}) == 300
    assert registry.get_sample_value("cosyvoice_gpu_memory_reserved_bytes", {"device": "cuda:1"}) == 300


async def test_a_passed_deadline_is_counted_as_deadline_exceeded(host):
    async with grpc.aio.insecure_channel(host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(
            llm_pb2.GenerateRequest(text="forever"), timeout=0.5
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(host.servicer.cancelled.wait(), 10)
    assert await _recorded(host, "DEADLINE_EXCEEDED") == 1
