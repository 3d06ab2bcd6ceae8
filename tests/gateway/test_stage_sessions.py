"""A flow or vocoder at its max_sessions refuses a new stream with RESOURCE_EXHAUSTED; the gateway
passes that on as RESOURCE_EXHAUSTED naming the stage (retryable), not as its own failure."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.pb import flow_pb2, flow_pb2_grpc, tts_pb2, tts_pb2_grpc, vocoder_pb2, vocoder_pb2_grpc
from services.common.tensors import to_proto
from tests.stack import running_stack


@pytest.fixture
async def stack(tiny_model_dir):
    one = {"max_sessions": 1}
    async with running_stack(tiny_model_dir, per_stage={"flow": one, "vocoder": one}) as stack:
        yield stack


async def _hold_flow(channel: grpc.aio.Channel, release: asyncio.Event):
    async def requests():
        yield flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart())
        yield flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=list(range(28))))
        await release.wait()
        yield flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(finalize=True))

    return flow_pb2_grpc.FlowDecoderStub(channel).Decode(requests())


async def _hold_vocoder(channel: grpc.aio.Channel, release: asyncio.Event):
    async def requests():
        yield vocoder_pb2.VocodeRequest(start=vocoder_pb2.VocodeStart(seed=1))
        mel = to_proto(np.full((80, 20), -4.0, np.float32))
        yield vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(mel=mel))
        await release.wait()
        yield vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(mel=to_proto(np.zeros((80, 0), np.float32)),
                                                                   finalize=True))

    return vocoder_pb2_grpc.VocoderStub(channel).Vocode(requests())


@pytest.mark.parametrize(("stage", "hold"), [("flow", _hold_flow), ("vocoder", _hold_vocoder)])
async def test_a_full_stage_gives_the_client_resource_exhausted_naming_it(stack, stage, hold):
    release = asyncio.Event()
    stage_app = getattr(stack, stage)
    async with grpc.aio.insecure_channel(stage_app.host.address) as stage_channel:
        held = await hold(stage_channel, release)
        await held.read()  # the stage's one session is taken
        async with grpc.aio.insecure_channel(stack.address) as channel:
            request = tts_pb2.SynthesizeRequest(text="Hello there.", seed=1)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request):
                    pass
        release.set()
        while (response := await held.read()) is not grpc.aio.EOF and not response.is_final:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        f"{stage} stage: RESOURCE_EXHAUSTED: {stage}: 1 sessions are open (max_sessions); retry later"
    )
