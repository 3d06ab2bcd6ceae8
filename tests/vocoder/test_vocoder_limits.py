"""The vocoder stage's limits over real gRPC (a vocoder server alone, on port 0): open sessions
are capped (RESOURCE_EXHAUSTED naming max_sessions) and every request field is checked at the
door (INVALID_ARGUMENT naming the field)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.metrics import make_registry
from services.common.pb import vocoder_pb2, vocoder_pb2_grpc
from services.common.tensors import to_proto
from services.vocoder.config import VocoderServiceConfig
from services.vocoder.server import create_app
from tests.stack import stage_app
from tests.waiting import eventually


@pytest.fixture
async def vocoder_one_session(tiny_model_dir):
    config = VocoderServiceConfig(model_dir=tiny_model_dir, metrics_port=-1, max_sessions=1)
    async with stage_app(create_app(config, make_registry())) as app:
        yield app


def _chunk(frames, finalize=False):
    mel = np.full((80, frames), -4.0, np.float32)
    return vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(mel=to_proto(mel), finalize=finalize))


async def _start_only(start):
    # Nothing written after the start: the aio client would report a failed later write as
    # INTERNAL instead of the server's status.
    yield vocoder_pb2.VocodeRequest(start=start)
    await asyncio.Event().wait()


async def test_a_session_beyond_max_sessions_is_refused_and_the_next_one_after_a_close_is_served(vocoder_one_session):
    app = vocoder_one_session
    assert app.host.registry.get_sample_value("cosyvoice_vocoder_max_sessions") == 1
    held: asyncio.Queue = asyncio.Queue()

    async def holding():
        yield vocoder_pb2.VocodeRequest(start=vocoder_pb2.VocodeStart(seed=1))
        while (item := await held.get()) is not None:
            yield item

    async def one_stream():
        yield vocoder_pb2.VocodeRequest(start=vocoder_pb2.VocodeStart(seed=1))
        yield _chunk(20, finalize=True)

    async with grpc.aio.insecure_channel(app.host.address) as channel:
        stub = vocoder_pb2_grpc.VocoderStub(channel)
        first = stub.Vocode(holding())
        await held.put(_chunk(20))
        await first.read()  # the first session is open now
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Vocode(_start_only(vocoder_pb2.VocodeStart(seed=2))):
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == "vocoder: 1 sessions are open (max_sessions); retry later"
        await held.put(_chunk(0, finalize=True))
        await held.put(None)
        assert (await first.read()).is_final
        await eventually(lambda: app.servicer.runner.num_streams == 0, what="the first session closing")
        responses = [r async for r in stub.Vocode(one_stream())]
        assert responses[-1].is_final


@pytest.fixture
async def vocoder(tiny_model_dir):
    config = VocoderServiceConfig(model_dir=tiny_model_dir, metrics_port=-1)
    async with stage_app(create_app(config, make_registry())) as app:
        yield app


def _mel(mel, finalize=False):
    return vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(mel=to_proto(mel), finalize=finalize))


FIELD_CASES = [
    (vocoder_pb2.VocodeStart(request_id="r" * 129), [], "start.request_id: 129 characters exceed the limit of 128"),
    (vocoder_pb2.VocodeStart(speed=0.1), [], "start.speed: 0.1 is outside [0.5, 2]"),
    (vocoder_pb2.VocodeStart(speed=3.0), [], "start.speed: 3 is outside [0.5, 2]"),
    (vocoder_pb2.VocodeStart(speed=float("nan")), [], "start.speed: nan is outside [0.5, 2]"),
    (vocoder_pb2.VocodeStart(speed=2.0), [_chunk(20)],
     "start.speed: only a stream of one final chunk (non-streaming) can change speed"),
    (vocoder_pb2.VocodeStart(), [_mel(np.zeros((79, 10), np.float32))],
     "chunk.mel: shape [79, 10], expected [80, frames]"),
    (vocoder_pb2.VocodeStart(), [_mel(np.zeros((80, 15001), np.float32))],
     "chunk.mel: 15001 frames exceed the limit of 15000"),
    (vocoder_pb2.VocodeStart(), [_mel(np.full((80, 10), np.nan, np.float32))], "chunk.mel: values must be finite"),
    (vocoder_pb2.VocodeStart(), [_chunk(4)], "chunk.mel: a first non-final chunk needs at least 8 frames"),
]


@pytest.mark.parametrize(("start", "chunks", "details"), FIELD_CASES)
async def test_each_field_out_of_range_is_refused_naming_it(vocoder, start, chunks, details):
    async def requests():
        yield vocoder_pb2.VocodeRequest(start=start)
        for chunk in chunks:
            yield chunk
        await asyncio.Event().wait()  # no write after the refusal (see _start_only)

    async with grpc.aio.insecure_channel(vocoder.host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in vocoder_pb2_grpc.VocoderStub(channel).Vocode(requests()):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == details
    await eventually(lambda: vocoder.servicer.runner.num_streams == 0, what="no stream left open")


def test_the_vocoder_allows_the_speeds_the_gateway_offers():
    from gateway.modes import MAX_SPEED, MIN_SPEED
    from services.vocoder.api import SPEED_RANGE

    assert (SPEED_RANGE.low, SPEED_RANGE.high) == (MIN_SPEED, MAX_SPEED)
