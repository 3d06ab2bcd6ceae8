"""The LLM's position budget is checked at the gateway, per LLM call, before the LLM is called:
INVALID_ARGUMENT naming the caller's text field with both numbers (gateway/token_budget.py).

The LLM runs with max_model_len 128 here, so with the sft preset voice 126 text tokens fit in
one call (SOS and TASK_ID take two positions). The tiny model's tokenizer makes 4 tokens of
one emoji, so 2,000 characters of emoji are 8,000 tokens."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest

from services.common.pb import cosyvoice_pb2, cosyvoice_pb2_grpc, tts_pb2, tts_pb2_grpc
from tests.gateway.voice_helpers import prompt_sample
from tests.stack import running_stack

MAX_MODEL_LEN = 128
ROOM = MAX_MODEL_LEN - 2
EMOJI = "\N{GRINNING FACE}"
# Four sentences of about 80 tokens each once split (323 tokens in all): more than one call holds.
LONG_TEXT = " ".join(f"The quick brown fox jumps over the lazy dog number {i}." for i in range(12))


@pytest.fixture
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir, per_stage={"llm": {"max_model_len": MAX_MODEL_LEN}}) as stack:
        yield stack


def _llm_calls(stack) -> float:
    registry = stack.llm.host.registry
    return sum(
        registry.get_sample_value(
            "cosyvoice_grpc_server_handled_total",
            {"grpc_service": "cosyvoice.v1.SpeechTokenGenerator", "grpc_method": method, "grpc_code": code},
        ) or 0.0
        for method in ("Generate", "GenerateBistream")
        for code in ("OK", "INVALID_ARGUMENT", "CANCELLED")
    )


async def _synthesize_error(address: str, request: tts_pb2.SynthesizeRequest) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request):
                pass
    return info.value


@pytest.mark.parametrize("text_frontend", [False, True])
async def test_an_unsplittable_run_over_the_budget_is_refused_before_the_llm(stack, text_frontend):
    # With the text frontend, a run of letters with no sentence end stays one segment.
    text = EMOJI * 2000 if not text_frontend else "abcdefgh" * 100
    error = await _synthesize_error(
        stack.address, tts_pb2.SynthesizeRequest(text=text, text_frontend=text_frontend, seed=1)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    if not text_frontend:
        assert error.details() == f"text: 8000 tokens after the text frontend; at most {ROOM} fit with this voice"
    else:
        assert error.details().startswith("text: ")
        assert error.details().endswith(f"tokens after the text frontend; at most {ROOM} fit with this voice")
    assert _llm_calls(stack) == 0


async def test_a_voice_prompt_takes_its_share_of_the_budget(stack, tiny_model_dir):
    # Zero-shot with an inline recording: its transcript and speech tokens go to the LLM too.
    audio, transcript = prompt_sample(tiny_model_dir)
    runner = stack.frontend.servicer.runner
    features, _ = await runner.encode_prompt(audio, 0, "prompt.audio")
    (transcript_tokens,) = await runner.count_tokens([transcript])  # text_frontend=false: as sent
    room = max(0, ROOM - transcript_tokens - len(features.speech_tokens))
    assert 0 < room < 160
    error = await _synthesize_error(stack.address, tts_pb2.SynthesizeRequest(
        text=EMOJI * 40, text_frontend=False, prompt=tts_pb2.PromptAudio(audio=audio, text=transcript)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"text: 160 tokens after the text frontend; at most {room} fit with this voice"
    assert _llm_calls(stack) == 0


async def test_one_sentence_over_the_budget_in_a_split_text_is_named(stack):
    text = LONG_TEXT + " " + "abcdefgh" * 100 + "."
    error = await _synthesize_error(stack.address, tts_pb2.SynthesizeRequest(text=text, seed=1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.fullmatch(
        rf"text: sentence (\d+) of (\d+) has (\d+) tokens after the text frontend; at most {ROOM} fit with this voice",
        error.details(),
    ), error.details()
    assert _llm_calls(stack) == 0  # nothing starts when one sentence cannot


async def test_a_transcript_longer_than_the_llm_takes_is_named(stack, tiny_model_dir):
    audio, _ = prompt_sample(tiny_model_dir)
    error = await _synthesize_error(stack.address, tts_pb2.SynthesizeRequest(
        text="Hello.", text_frontend=False, prompt=tts_pb2.PromptAudio(audio=audio, text="x" * 4001)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "prompt.text: 4001 characters exceed the limit of 4000"


async def test_a_long_text_split_into_sentences_is_checked_per_call_and_spoken(stack):
    request = tts_pb2.SynthesizeRequest(text=LONG_TEXT, seed=1, encoding=tts_pb2.AUDIO_ENCODING_PCM_F32LE)
    async with grpc.aio.insecure_channel(stack.address) as channel:
        responses = [r async for r in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request)]
    assert responses[-1].is_final
    assert _llm_calls(stack) == 4  # one per sentence group, each within the budget


async def test_the_official_service_names_its_text_field(stack):
    request = cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="", tts_text="abcdefgh" * 100))
    async with grpc.aio.insecure_channel(stack.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in cosyvoice_pb2_grpc.CosyVoiceStub(channel).Inference(request):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("sft_request.tts_text: ")
    assert info.value.details().endswith(f"at most {ROOM} fit with this voice")
    assert _llm_calls(stack) == 0


async def _text_stream_error(address: str, pieces: list[str]) -> grpc.RpcError:
    # The sync client, as in test_text_stream.py: the aio client may report its own failed
    # write (INTERNAL) instead of the gateway's status.
    def call() -> grpc.RpcError:
        messages = [tts_pb2.TextStreamRequest(config=tts_pb2.TextStreamConfig(seed=1))]
        messages += [tts_pb2.TextStreamRequest(text=p) for p in pieces]
        with grpc.insecure_channel(address) as channel:
            try:
                for _ in tts_pb2_grpc.TextToSpeechStub(channel).SynthesizeTextStream(iter(messages)):
                    pass
            except grpc.RpcError as error:
                return error
        raise AssertionError("the stream was accepted")

    return await asyncio.to_thread(call)


@pytest.mark.parametrize(
    ("pieces", "details"),
    [
        ([EMOJI * 40], f"text: a piece of 160 tokens; at most {ROOM} fit with this voice"),
        ([EMOJI * 20, EMOJI * 20], f"text: the pieces total 160 tokens; at most {ROOM} fit with this voice"),
    ],
)
async def test_text_stream_pieces_are_counted_each_and_in_all(stack, pieces, details):
    error = await _text_stream_error(stack.address, pieces)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == details


async def test_a_piece_the_frontend_cannot_count_fails_the_stream_with_the_frontend_named(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        await stack.frontend.host.server.stop(0)  # the frontend goes away; the sft voice needs no prompt
        error = await _text_stream_error(stack.address, ["Hello there."])
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details().startswith("frontend stage: UNAVAILABLE: ")
