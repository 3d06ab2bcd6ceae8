"""scripts/canned_stages.py: the gateway-only soak's stand-in stages answer as the real ones do."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np

from services.common.pb import flow_pb2, flow_pb2_grpc, llm_pb2, llm_pb2_grpc, vocoder_pb2, vocoder_pb2_grpc
from services.common.tensors import from_proto, to_proto
from tests.conftest import ROOT


async def test_canned_stages_stream_tokens_mel_and_audio():
    process = subprocess.Popen([sys.executable, "scripts/canned_stages.py", "--tokens", "10", "--delay", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        addresses = dict(process.stdout.readline().split() for _ in range(3))
        async with grpc.aio.insecure_channel(addresses["llm"]) as channel:
            replies = [r async for r in llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(
                llm_pb2.GenerateRequest(request_id="r", text="hi"))]
        assert sum(len(r.tokens) for r in replies) == 10 and replies[-1].finish_reason == 1
        async with grpc.aio.insecure_channel(addresses["flow"]) as channel:
            requests = [flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart(request_id="r", speaker_id="x")),
                        flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=[1, 2, 3], finalize=True))]
            (mel,) = [r async for r in flow_pb2_grpc.FlowDecoderStub(channel).Decode(iter(requests))]
        assert from_proto(mel.mel, "mel").shape == (1, 80, 6) and mel.is_final
        async with grpc.aio.insecure_channel(addresses["vocoder"]) as channel:
            requests = [vocoder_pb2.VocodeRequest(start=vocoder_pb2.VocodeStart(request_id="r")),
                        vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(
                            mel=to_proto(np.zeros((1, 80, 6), np.float32)), finalize=True))]
            (audio,) = [r async for r in vocoder_pb2_grpc.VocoderStub(channel).Vocode(iter(requests))]
        assert from_proto(audio.audio, "audio").shape == (1, 2880) and audio.sample_rate == 24000
    finally:
        process.kill()
        process.wait()
