"""Failed requests leave nothing behind in the gateway: no task still pending on a stage stream
that has ended, nothing for the garbage collector to report as an asyncio ERROR (issue 9.5).

The gateway once handed each stage stream's requests to gRPC as an iterator. gRPC consumes
that in a task of its own, which `call.cancel()` leaves running when the call has already
ended (here: the stage calls' own deadline), so every such request leaked tasks that were later
destroyed pending ("Task was destroyed but it is pending!", "aclose(): asynchronous generator
is already running")."""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest

from services.common.pb import tts_pb2, tts_pb2_grpc
from tests.stack import running_stack

# Far shorter than the callers' deadlines: the stage calls end first, by themselves.
STAGE_DEADLINE_SECONDS = 1.0
CONSUMER = "_StreamRequestMixin._consume_request_iterator"  # gRPC's request-iterator task


@pytest.fixture
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir, upstream_timeout_seconds=STAGE_DEADLINE_SECONDS) as stack:
        yield stack


def _config() -> tts_pb2.TextStreamRequest:
    return tts_pb2.TextStreamRequest(config=tts_pb2.TextStreamConfig(encoding=tts_pb2.AUDIO_ENCODING_PCM_F32LE))


async def _text_stream_left_open(stub: tts_pb2_grpc.TextToSpeechStub) -> grpc.StatusCode:
    """Some text, then neither more text nor the end of it: the LLM waits until the stage deadline.
    Written with call.write, so the client itself runs no request-iterator task."""
    call = stub.SynthesizeTextStream(timeout=60)
    await call.write(_config())
    await call.write(tts_pb2.TextStreamRequest(text="Hello there, this is the first piece"))
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _text_stream_with_a_bad_message(stub: tts_pb2_grpc.TextToSpeechStub) -> grpc.StatusCode:
    call = stub.SynthesizeTextStream(timeout=60)
    for message in (_config(), tts_pb2.TextStreamRequest(text="Hello there."), _config()):
        await call.write(message)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _cancelled_after_the_first_chunk(stub: tts_pb2_grpc.TextToSpeechStub) -> grpc.StatusCode:
    call = stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello world, this is a test."), timeout=60)
    try:
        await call.read()
    except grpc.aio.AioRpcError as error:  # the stage deadline came first
        return error.code()
    call.cancel()
    return grpc.StatusCode.CANCELLED


def _consumers() -> list[asyncio.Task]:
    # getattr: asyncio closes an async generator the garbage collector found suspended with a
    # task whose coroutine is an `async_generator_athrow`, which has no __qualname__.
    return [t for t in asyncio.all_tasks() if not t.done() and getattr(t.get_coro(), "__qualname__", "") == CONSUMER]


async def test_failed_streams_leave_no_task_behind_and_log_no_error(stack, caplog):
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        codes = await asyncio.gather(
            *(_text_stream_left_open(stub) for _ in range(3)),
            *(_text_stream_with_a_bad_message(stub) for _ in range(2)),
            *(_cancelled_after_the_first_chunk(stub) for _ in range(2)),
        )
    assert codes[:3] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3  # the stage calls' deadline, passed on
    assert codes[3:5] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert set(codes[5:]) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert stack.gateway is not None
    assert await stack.gateway.calls.wait_idle(30.0), "the gateway's handlers did not unwind"

    assert _consumers() == []  # before: one per flow, vocoder and LLM text stream that had ended
    gc.collect()  # what was left would now be destroyed, pending, with an ERROR each
    await asyncio.sleep(0)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == []

