"""The public TextToSpeech gateway over the in-process stack (real gRPC on loopback)."""

import asyncio
import io
import struct
import wave

import grpc
import numpy as np
import pytest

from services.common.pb import tts_pb2, tts_pb2_grpc
from services.pipeline.library import CosyVoicePipeline
from tests.stack import running_stack
from tests.waiting import eventually

TEXT = "Hello world, this is a test."


@pytest.fixture
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        yield stack


@pytest.fixture(scope="module")
def library(tiny_model_dir):
    return CosyVoicePipeline.from_model_dir(tiny_model_dir)


async def _synthesize(address, **fields):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        return [r async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(**fields))]


def _stage_streams(stack):
    return (
        stack.llm.servicer.engine.num_active_requests,
        stack.flow.servicer.runner.num_sessions,
        stack.vocoder.servicer.runner.num_streams,
    )


async def test_streaming_float_audio_equals_the_library(stack, library):
    responses = await _synthesize(stack.address, text=TEXT, stream=True, seed=3,
                                  encoding=tts_pb2.AUDIO_ENCODING_PCM_F32LE)
    assert len(responses) > 1
    assert [r.chunk_index for r in responses] == list(range(len(responses)))
    assert [r.is_final for r in responses] == [False] * (len(responses) - 1) + [True]
    assert {r.sample_rate for r in responses} == {24000}
    assert responses[0].HasField("first_chunk_timings") and responses[0].first_chunk_timings.flow_seconds > 0
    expected = list(library.synthesize(TEXT, seed=3, stream=True))
    chunks = [np.frombuffer(r.audio, "<f4") for r in responses]
    assert [c.size for c in chunks] == [e.size for e in expected]
    np.testing.assert_allclose(np.concatenate(chunks), np.concatenate(expected), atol=1e-5)


async def test_non_streaming_returns_one_wav_of_the_offline_synthesis(stack, library):
    responses = await _synthesize(stack.address, text=TEXT, stream=False, seed=3, encoding=tts_pb2.AUDIO_ENCODING_WAV)
    assert len(responses) == 1 and responses[0].is_final
    with wave.open(io.BytesIO(responses[0].audio)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    expected = next(library.synthesize(TEXT, seed=3, stream=False))  # full attention, one flow call
    np.testing.assert_allclose(pcm / 32767.0, expected, atol=2e-4)


async def test_streaming_wav_has_an_open_ended_header_then_pcm(stack):
    wav_chunks = await _synthesize(stack.address, text=TEXT, stream=True, seed=1, encoding=tts_pb2.AUDIO_ENCODING_WAV)
    pcm_chunks = await _synthesize(stack.address, text=TEXT, stream=True, seed=1)
    header = wav_chunks[0].audio[:44]
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", header[40:44])[0] == 0xFFFFFFFF
    assert b"".join(r.audio for r in wav_chunks)[44:] == b"".join(r.audio for r in pcm_chunks)
    assert pcm_chunks[0].encoding == tts_pb2.AUDIO_ENCODING_PCM_S16LE


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"text": " "}, grpc.StatusCode.INVALID_ARGUMENT, "text: must not be empty"),
        ({"text": "x" * 3000}, grpc.StatusCode.INVALID_ARGUMENT, "exceed the limit"),
        ({"text": TEXT, "encoding": 9}, grpc.StatusCode.INVALID_ARGUMENT, "encoding"),
        ({"text": TEXT, "speaker_id": "nobody"}, grpc.StatusCode.NOT_FOUND, "nobody"),
    ],
)
async def test_bad_requests_get_a_clear_status(stack, fields, code, words):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _synthesize(stack.address, stream=True, **fields)
    assert info.value.code() == code
    assert words in info.value.details()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def test_client_cancel_frees_every_stage(stack):
    async with grpc.aio.insecure_channel(stack.address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(
            tts_pb2.SynthesizeRequest(text=TEXT * 3, stream=True, seed=2)
        )
        await call.read()  # first audio: all three stages hold state for this request now
        assert _stage_streams(stack) == (1, 1, 1)
        call.cancel()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def test_deadline_cancels_upstream_and_reports_deadline_exceeded(stack):
    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Synthesize(tts_pb2.SynthesizeRequest(text=TEXT * 3, stream=True), timeout=0.3):
                pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def test_a_stage_that_is_down_gives_unavailable_naming_it(stack):
    await stack.vocoder.host.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _synthesize(stack.address, text=TEXT, stream=True)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "vocoder stage" in info.value.details()


async def test_overload_is_resource_exhausted(tiny_model_dir):
    async with running_stack(tiny_model_dir, max_concurrent_requests=1) as stack:
        results = await asyncio.gather(
            *(_synthesize(stack.address, text=TEXT, stream=True, seed=i) for i in range(3)), return_exceptions=True
        )
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert errors and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    assert any(isinstance(r, list) and r[-1].is_final for r in results)
