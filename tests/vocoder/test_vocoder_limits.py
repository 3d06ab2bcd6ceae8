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
