"""Requests whose bytes do not parse get INVALID_ARGUMENT naming the message type, are counted,
and leave one rate-limited WARNING line in the log, never an ERROR or a traceback."""

import asyncio
import logging

import grpc
import pytest

from services.common.config import ServerConfig
from services.common.errors import map_errors
from services.common.malformed import MalformedRequestInterceptor, RateLimitedLog
from services.common.metrics import make_registry
from services.common.pb import llm_pb2, llm_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost

SERVICE = llm_pb2.DESCRIPTOR.services_by_name["SpeechTokenGenerator"].full_name
GENERATE = f"/{SERVICE}/Generate"
BISTREAM = f"/{SERVICE}/GenerateBistream"
GARBAGE = b"\xff\xff\xff\xff\x0f not protobuf"  # a varint tag that never ends
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string) holding bytes that are not UTF-8


class _Fake(llm_pb2_grpc.SpeechTokenGeneratorServicer):
    def __init__(self) -> None:
        self.texts: list[str] = []

    @map_errors
    async def Generate(self, request, context):
        self.texts.append(request.text)
        yield llm_pb2.GenerateResponse(tokens=[1], finish_reason=1)

    @map_errors
    async def GenerateBistream(self, requests, context):
        async for request in requests:
            self.texts.append(request.text)
            yield llm_pb2.GenerateResponse(tokens=[len(self.texts)])


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


async def _raw_unary_stream(address: str, path: str, payload: bytes) -> tuple[grpc.StatusCode, str, list[bytes]]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_stream(path)(payload, timeout=10)  # no serializers: bytes as they are
        replies = []
        try:
            async for reply in call:
                replies.append(reply)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or "", replies
        return grpc.StatusCode.OK, "", replies


async def _raw_stream_stream(address: str, path: str, payloads: list[bytes]) -> tuple[grpc.StatusCode, str, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(path)(iter(payloads), timeout=10)
        replies = 0
        try:
            async for _ in call:
                replies += 1
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or "", replies
        return grpc.StatusCode.OK, "", replies


def _handled(host: ServiceHost, method: str, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return host.registry.get_sample_value("cosyvoice_grpc_server_handled_total", labels) or 0.0


async def _recorded(host: ServiceHost, method: str, code: str) -> float:
    """abort sends the status before the interceptor has unwound: wait for the record, bounded."""
    for _ in range(500):
        if _handled(host, method, code):
            break
        await asyncio.sleep(0.01)
    return _handled(host, method, code)


def _assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


@pytest.mark.parametrize("payload", [GARBAGE, BAD_UTF8], ids=["corrupt", "bad-utf8"])
async def test_a_unary_request_that_does_not_parse_is_invalid_argument_and_counted(host, payload, caplog):
    caplog.set_level(logging.INFO)
    code, details, replies = await _raw_unary_stream(host.address, GENERATE, payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "request: the bytes are not a valid cosyvoice.v1.GenerateRequest"
    assert replies == [] and host.servicer.texts == []  # the servicer never saw it
    assert await _recorded(host, "Generate", "INVALID_ARGUMENT") == 1
    assert _handled(host, "Generate", "UNKNOWN") == 0
    _assert_quiet(caplog)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and GENERATE in warnings[0] and "do not parse" in warnings[0]


async def test_a_bad_message_mid_stream_ends_the_call_with_invalid_argument(host, caplog):
    good = llm_pb2.GenerateBistreamRequest(text="one").SerializeToString()
    code, details, replies = await _raw_stream_stream(host.address, BISTREAM, [good, good, GARBAGE, good])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "request: the bytes of message 3 of the stream are not a valid cosyvoice.v1.GenerateBistreamRequest"
    assert replies == 2 and host.servicer.texts == ["one", "one"]  # what came before it was served
    assert await _recorded(host, "GenerateBistream", "INVALID_ARGUMENT") == 1
    _assert_quiet(caplog)


async def test_services_without_the_error_map_answer_invalid_argument_too(host, caplog):
    # Health and reflection are grpcio's servicers: no map_errors around them.
    async with grpc.aio.insecure_channel(host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/grpc.health.v1.Health/Check")(GARBAGE, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "request: the bytes are not a valid grpc.health.v1.HealthCheckRequest"
    code, details, _ = await _raw_stream_stream(
        host.address, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", [GARBAGE]
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid grpc.reflection.v1alpha.ServerReflectionRequest" in details
    _assert_quiet(caplog)


async def test_good_requests_are_unaffected(host):
    code, _, replies = await _raw_unary_stream(
        host.address, GENERATE, llm_pb2.GenerateRequest(text="fine").SerializeToString()
    )
    assert code == grpc.StatusCode.OK and len(replies) == 1 and host.servicer.texts == ["fine"]


async def test_many_malformed_requests_log_one_line_per_interval(host, caplog):
    caplog.set_level(logging.INFO)
    for _ in range(20):
        code, _, _ = await _raw_unary_stream(host.address, GENERATE, GARBAGE)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the interval (10 s) is far longer than this test
    _assert_quiet(caplog)


def test_the_rate_limit_counts_what_it_did_not_log():
    now = [100.0]
    log = RateLimitedLog(interval=10.0, clock=lambda: now[0])
    assert log.allow("/a") == 0  # the first line is logged
    assert [log.allow("/a") for _ in range(3)] == [None, None, None]
    assert log.allow("/b") == 0  # per method
    now[0] += 10.0
    assert log.allow("/a") == 3  # the next line says how many were left out
    assert log.allow("/a") is None


def test_a_raw_bytes_handler_is_left_alone():
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    interceptor = MalformedRequestInterceptor()

    async def continuation(details):
        return handler

    assert asyncio.run(interceptor.intercept_service(continuation, None)) is handler
