"""Text-in streaming through the gateway: audio leaves before the text is complete."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.pb import tts_pb2, tts_pb2_grpc
from tests.stack import running_stack
from tests.waiting import eventually

FIRST_PIECE = "Hello there, this first piece of text is long enough for the model to start speaking now."
LAST_PIECE = " And this is the end."


@pytest.fixture
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        yield stack


def _stage_streams(stack):
    return (
        stack.llm.servicer.engine.num_active_requests,
        stack.flow.servicer.runner.num_sessions,
        stack.vocoder.servicer.runner.num_streams,
    )


def _config(**fields: object) -> tts_pb2.TextStreamRequest:
    return tts_pb2.TextStreamRequest(
        config=tts_pb2.TextStreamConfig(encoding=tts_pb2.AUDIO_ENCODING_PCM_F32LE, seed=5, **fields)
    )


async def _first_audio(call) -> tts_pb2.SynthesizeResponse:
    while True:
        response = await call.read()
        assert response is not grpc.aio.EOF, "the stream ended before any audio"
        if response.audio:
            return response


@pytest.mark.parametrize("voice", ["preset", "prompt"])
async def test_first_audio_arrives_before_the_last_text_piece_is_sent(stack, tiny_model_dir, voice):
    config = {}
    if voice == "prompt":
        config["prompt"] = tts_pb2.PromptAudio(audio=(tiny_model_dir / "prompt_sample.wav").read_bytes())
    async with grpc.aio.insecure_channel(stack.address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(timeout=300)
        await call.write(_config(**config))
        await call.write(tts_pb2.TextStreamRequest(text=FIRST_PIECE))
        # Nothing more is sent until audio has come back: the order of events is the proof.
        first = await asyncio.wait_for(_first_audio(call), timeout=240)
        assert first.chunk_index == 0 and not first.is_final and first.sample_rate == 24000
        await call.write(tts_pb2.TextStreamRequest(text=LAST_PIECE))
        await call.done_writing()
        rest = [r async for r in call]
    chunks = [first, *rest]
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    audio = np.concatenate([np.frombuffer(c.audio, "<f4") for c in chunks])
    assert audio.size > 24000 // 2 and np.isfinite(audio).all()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def _stream_error(address: str, messages: list[tts_pb2.TextStreamRequest]) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(timeout=120)
        for message in messages:
            await call.write(message)
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    return info.value


@pytest.mark.parametrize(
    ("messages", "code", "words"),
    [
        ([tts_pb2.TextStreamRequest(text="Hello")], grpc.StatusCode.INVALID_ARGUMENT, "must set `config`"),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "must set `config`"),
        ([_config()], grpc.StatusCode.INVALID_ARGUMENT, "text: the stream ended without any text"),
        ([_config(), tts_pb2.TextStreamRequest(text="Hi."), _config()], grpc.StatusCode.INVALID_ARGUMENT,
         "only the first SynthesizeTextStream message may set `config`"),
        ([_config(speaker_id="nobody"), tts_pb2.TextStreamRequest(text="Hi.")], grpc.StatusCode.NOT_FOUND,
         "speaker_id: 'nobody' is not a registered or preset speaker"),
        ([_config(mode=tts_pb2.SYNTHESIS_MODE_INSTRUCT2), tts_pb2.TextStreamRequest(text="Hi.")],
         grpc.StatusCode.INVALID_ARGUMENT, "instruct_text: instruct2 needs an instruction"),
        ([_config(), tts_pb2.TextStreamRequest(text="x" * 5000)], grpc.StatusCode.INVALID_ARGUMENT,
         "text: a piece of 5000 characters exceeds 4000"),
    ],
)
async def test_bad_text_streams_get_a_clear_status(stack, messages, code, words):
    error = await _stream_error(stack.address, messages)
    assert error.code() == code, error.details()
    assert words in error.details()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def test_cancel_while_the_llm_waits_for_text_frees_every_stage(stack):
    async with grpc.aio.insecure_channel(stack.address) as channel:
        call = tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(timeout=300)
        await call.write(_config())
        await call.write(tts_pb2.TextStreamRequest(text=FIRST_PIECE))
        await asyncio.wait_for(_first_audio(call), timeout=240)
        call.cancel()
    await eventually(lambda: _stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")
