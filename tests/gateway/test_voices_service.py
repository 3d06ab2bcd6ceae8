"""Voices through the public TextToSpeech API, over the in-process stack (real gRPC): every
mode with inline and registered voices against the in-process library, a model without
presets, text segmentation, speed, and every rejection with its code and message.

Speech length: the random-weight LLM never samples EOS, so it always runs to its length limit
(max_token_text_ratio × text tokens, 20 by default: 12 s of audio for a short sentence, and a
two-segment text would take minutes of flow compute on 2 cores). Both the LLM stage's engine
and the library here run with a max ratio of 5 instead; every comparison uses the same
parameters on both sides, so equality still means "the gateway does what the library does".
"""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest
import pytest_asyncio

from services.common.pb import tts_pb2
from services.pipeline.library import CosyVoicePipeline
from services.tinymodel.writer import write_tiny_model
from tests.gateway.voice_helpers import (
    Features,
    f32,
    frontend_features,
    frontend_segments,
    frontend_transcript,
    library_audio,
    prompt_sample,
    register_sample,
    shorten_speech,
    speaker_features,
    speaker_names,
    stage_streams,
    stage_work,
    synthesize,
    synthesize_error,
    tone,
    wav_bytes,
)
from tests.stack import running_stack
from tests.waiting import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

MAX_RATIO = 5.0
TEXT = "Hello there, my friend."
INSTRUCT = "Speak slowly and calmly."
# Two sentences of more than token_min_n (60) LLM text tokens together: the text frontend
# makes two segments of it (checked in the test, not assumed).
LONG_TEXT = (
    "The first sentence is here and it is fairly long for a test. The second sentence follows right "
    "after it with more words. A third one ends it all, with some more words to say."
)
F32 = tts_pb2.AUDIO_ENCODING_PCM_F32LE
FRAME = 480  # samples per mel frame at 24 kHz; 2 frames per speech token
REGISTERED = "alice"


@pytest.fixture(scope="module")
def library(tiny_model_dir):
    library = CosyVoicePipeline.from_model_dir(tiny_model_dir)
    library.engine.default_params = dataclasses.replace(library.engine.default_params, max_token_text_ratio=MAX_RATIO)
    return library


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        shorten_speech(stack, MAX_RATIO)
        await register_sample(stack.address, tiny_model_dir, REGISTERED)
        yield stack


@pytest.fixture(scope="module")
def sample(tiny_model_dir):
    return prompt_sample(tiny_model_dir)


def inline(sample, with_text=True):
    audio, transcript = sample
    return tts_pb2.PromptAudio(audio=audio, text=transcript if with_text else "")


async def registered_features(stack) -> Features:
    return await speaker_features(stack.address, REGISTERED)


def assert_streamed(responses):
    assert len(responses) > 1, "expected several streamed chunks"
    assert [r.chunk_index for r in responses] == list(range(len(responses)))
    assert [r.is_final for r in responses] == [False] * (len(responses) - 1) + [True]
    assert {r.sample_rate for r in responses} == {24000}


def assert_equals_library(responses, expected):
    chunks = f32(responses)
    assert [c.size for c in chunks] == [e.size for e in expected if e.size]
    np.testing.assert_allclose(np.concatenate(chunks), np.concatenate(expected), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------- modes


async def test_zero_shot_inline_prompt_streams_what_the_library_makes(stack, library, sample):
    responses = await synthesize(stack.address, text=TEXT, prompt=inline(sample), stream=True, seed=5, encoding=F32)
    assert_streamed(responses)
    # The library, fed what the gateway feeds the stages: the frontend's features of the same
    # recording, the normalised transcript ++ the normalised text for the LLM, the same seed.
    features = await frontend_features(stack, sample[0])
    [segment] = await frontend_segments(stack, TEXT)
    transcript = await frontend_transcript(stack, sample[1])
    expected = library_audio(
        library, "zero_shot", segment, seed=5, stream=True, features=features, prompt_text=transcript
    )
    assert_equals_library(responses, expected)
    await eventually(lambda: stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")


async def test_zero_shot_is_the_default_mode_for_a_prompt_with_text(stack, sample):
    explicit = await synthesize(stack.address, text=TEXT, prompt=inline(sample), seed=6,
                                mode=tts_pb2.SYNTHESIS_MODE_ZERO_SHOT)
    default = await synthesize(stack.address, text=TEXT, prompt=inline(sample), seed=6)
    assert explicit[0].audio and explicit[0].audio == default[0].audio


async def test_registration_stores_exactly_what_inline_processing_computes(stack, sample):
    stored = await registered_features(stack)
    computed = await frontend_features(stack, sample[0])
    assert stored.same(computed)
    inline_audio = await synthesize(stack.address, text=TEXT, prompt=inline(sample), seed=7, encoding=F32)
    by_name = await synthesize(stack.address, text=TEXT, speaker_id=REGISTERED, seed=7, encoding=F32)
    assert len(inline_audio) == len(by_name) == 1
    assert inline_audio[0].audio and inline_audio[0].audio == by_name[0].audio


@pytest.mark.parametrize("voice", ["inline", "registered"])
async def test_cross_lingual_speaks_the_text_alone_in_the_prompts_voice(stack, library, sample, voice):
    fields = {"prompt": inline(sample, with_text=False)} if voice == "inline" else {"speaker_id": REGISTERED}
    responses = await synthesize(stack.address, text=TEXT, stream=True, seed=8, encoding=F32,
                                 mode=tts_pb2.SYNTHESIS_MODE_CROSS_LINGUAL, **fields)
    assert_streamed(responses)
    features = await (frontend_features(stack, sample[0]) if voice == "inline" else registered_features(stack))
    [segment] = await frontend_segments(stack, TEXT)
    expected = library_audio(library, "cross_lingual", segment, seed=8, stream=True, features=features)
    assert_equals_library(responses, expected)


async def test_cross_lingual_is_the_default_for_a_prompt_without_text(stack, sample):
    explicit = await synthesize(stack.address, text=TEXT, prompt=inline(sample, with_text=False), seed=9,
                                mode=tts_pb2.SYNTHESIS_MODE_CROSS_LINGUAL)
    default = await synthesize(stack.address, text=TEXT, prompt=inline(sample, with_text=False), seed=9)
    assert explicit[0].audio and explicit[0].audio == default[0].audio


@pytest.mark.parametrize("voice", ["inline", "registered"])
async def test_instruct2_prompts_the_llm_with_the_instruction(stack, library, sample, voice):
    fields = {"prompt": inline(sample, with_text=False)} if voice == "inline" else {"speaker_id": REGISTERED}
    # mode left unset: instruct_text makes it instruct2
    responses = await synthesize(stack.address, text=TEXT, stream=True, seed=10, encoding=F32,
                                 instruct_text=INSTRUCT, **fields)
    assert_streamed(responses)
    features = await (frontend_features(stack, sample[0]) if voice == "inline" else registered_features(stack))
    [segment] = await frontend_segments(stack, TEXT)
    expected = library_audio(library, "instruct2", segment, seed=10, stream=True, features=features,
                             instruction=INSTRUCT + "<|endofprompt|>")
    assert_equals_library(responses, expected)


async def test_instruct2_with_an_embedding_only_preset_produces_audio(stack):
    responses = await synthesize(stack.address, text=TEXT, speaker_id="default", instruct_text=INSTRUCT, seed=11)
    assert len(responses) == 1 and len(responses[0].audio) > 0


async def test_sft_with_a_registered_speaker_uses_only_its_x_vector(stack, library):
    responses = await synthesize(stack.address, text=TEXT, speaker_id=REGISTERED, stream=True, seed=12,
                                 encoding=F32, mode=tts_pb2.SYNTHESIS_MODE_SFT)
    features = await registered_features(stack)
    x_vector_only = Features(np.zeros(0, np.int32), np.zeros((0, 80), np.float32), features.embedding)
    [segment] = await frontend_segments(stack, TEXT)
    expected = library_audio(library, "cross_lingual", segment, seed=12, stream=True, features=x_vector_only)
    assert_equals_library(responses, expected)


# ------------------------------------------------------------------------------- a model without presets


@pytest.fixture(scope="module")
def no_presets_model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny-no-presets"), seed=0, presets=False)


async def test_a_model_without_spk2info(no_presets_model_dir):
    assert not (no_presets_model_dir / "spk2info.pt").exists()
    sample = prompt_sample(no_presets_model_dir)
    async with running_stack(no_presets_model_dir) as other:
        shorten_speech(other, MAX_RATIO)
        assert await speaker_names(other.address) == []
        responses = await synthesize(other.address, text=TEXT, prompt=inline(sample), stream=True, seed=1)
        assert responses[-1].is_final and sum(len(r.audio) for r in responses) > 0
        error = await synthesize_error(other.address, text=TEXT)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == (
            "speaker_id: this model has no preset speakers (no spk2info.pt): name a registered speaker or send "
            "prompt audio"
        )
        error = await synthesize_error(other.address, text=TEXT, mode=tts_pb2.SYNTHESIS_MODE_SFT)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("speaker_id: ")
        await eventually(lambda: stage_streams(other) == (0, 0, 0), what="every stage freeing the requests")


# ------------------------------------------------------------------------------- text segments


async def test_long_text_streams_its_segments_back_to_back(stack, library):
    segments = await frontend_segments(stack, LONG_TEXT)
    assert len(segments) == 2
    responses = await synthesize(stack.address, text=LONG_TEXT, stream=True, seed=20, encoding=F32)
    assert_streamed(responses)
    # Each segment is its own pass through the stages with seed + index (default preset, sft).
    expected = []
    for index, segment in enumerate(segments):
        expected += library_audio(library, "sft", segment, seed=20 + index, stream=True)
    assert_equals_library(responses, expected)

    whole = await synthesize(stack.address, text=LONG_TEXT, stream=False, seed=20, encoding=F32)
    assert len(whole) == 1 and whole[0].is_final and whole[0].chunk_index == 0
    offline = np.concatenate(
        [library_audio(library, "sft", s, seed=20 + i, stream=False)[0] for i, s in enumerate(segments)]
    )
    np.testing.assert_allclose(f32(whole)[0], offline, atol=1e-5, rtol=0)


async def test_text_frontend_off_sends_the_raw_text_as_one_segment(stack, library):
    raw = LONG_TEXT + " Call 911."  # the frontend would split it and spell out the digits
    assert len(await frontend_segments(stack, raw)) == 2
    responses = await synthesize(stack.address, text=raw, stream=False, seed=21, encoding=F32, text_frontend=False)
    assert len(responses) == 1
    [expected] = library_audio(library, "sft", raw, seed=21, stream=False)
    np.testing.assert_allclose(f32(responses)[0], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------- speed


async def test_speed_shortens_non_streaming_audio(stack):
    normal = f32(await synthesize(stack.address, text=TEXT, seed=30, encoding=F32))[0]
    fast = f32(await synthesize(stack.address, text=TEXT, seed=30, encoding=F32, speed=1.5))[0]
    assert 0.6 < fast.size / normal.size < 0.7
    # upstream interpolates the mel to int(frames / speed) frames
    assert fast.size == int(normal.size // FRAME / 1.5) * FRAME


async def test_speed_with_streaming_is_refused(stack):
    error = await synthesize_error(stack.address, text=TEXT, seed=30, speed=1.5, stream=True)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "speed: only non-streaming requests (stream=false) can change the speed, as in the reference"
    )


# ------------------------------------------------------------------------------- rejections


def _audio_case(kind: str) -> bytes:
    if kind == "undecodable":
        return b"this is not an audio file at all"
    if kind == "too_long":
        return wav_bytes(tone(31.0, 16000), 16000)
    if kind == "silent":
        return wav_bytes(np.zeros(16000, np.float32), 16000)
    if kind == "8khz":
        return wav_bytes(tone(2.0, 8000), 8000)
    if kind == "empty":
        return b""
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("undecodable", "prompt.audio: cannot decode the audio (WAV, FLAC, OGG/Opus or MP3 expected): "),
        ("too_long", "prompt.audio: 31.0 s is longer than the 30 s limit"),
        ("silent", "prompt.audio: the recording is silent (peak below -80 dBFS)"),
        ("8khz", "prompt.audio: 8000 Hz is below the minimum sample rate of 16000 Hz"),
        ("empty", "prompt.audio: must not be empty"),
    ],
)
async def test_bad_prompt_audio(stack, kind, message):
    before = stage_work(stack)
    error = await synthesize_error(
        stack.address, text=TEXT, stream=True, prompt=tts_pb2.PromptAudio(audio=_audio_case(kind), text="Hi there.")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    if message.endswith(": "):  # libsndfile's own reason follows
        assert error.details().startswith(message) and "\n" not in error.details()
        assert "BytesIO" not in error.details() and " at 0x" not in error.details()
    else:
        assert error.details() == message
    await eventually(lambda: stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")
    after = stage_work(stack)
    for stage in ("llm_prompt_tokens", "flow_frames", "vocoder_seconds"):
        assert after[stage] == before[stage], f"{stage} worked on a rejected request"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": ""}, "text: must not be empty"),
        ({"text": "  \n "}, "text: must not be empty"),
        ({"text": "x" * 2001}, "text: 2001 characters exceed the limit of 2000"),
        ({"text": "?!"}, "text: nothing to speak after normalisation (send it with text_frontend=false)"),
        ({"text": TEXT, "mode": 9}, "mode: unknown value 9"),
        ({"text": TEXT, "encoding": 9}, "encoding: unknown value 9"),
        ({"text": TEXT, "speed": 3.0}, "speed: 3 is outside [0.5, 2.0]"),
        (
            {"text": TEXT, "mode": tts_pb2.SYNTHESIS_MODE_ZERO_SHOT},  # the default preset has no recording
            "speaker_id: zero_shot needs a voice with a prompt recording (a registered speaker or prompt audio); "
            "this preset has only an x-vector",
        ),
    ],
)
async def test_bad_request_fields(stack, fields, message):
    before = stage_work(stack)
    error = await synthesize_error(stack.address, stream=True, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    await eventually(lambda: stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")
    after = stage_work(stack)
    for stage in ("llm_prompt_tokens", "flow_frames", "vocoder_seconds", "frontend_prompts"):
        assert after[stage] == before[stage], f"{stage} worked on a rejected request"


async def test_unknown_speaker_is_not_found_before_any_stage_works(stack):
    before = stage_work(stack)
    error = await synthesize_error(stack.address, text=TEXT, speaker_id="nobody", stream=True)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "speaker_id: 'nobody' is not a registered or preset speaker"
    assert stage_streams(stack) == (0, 0, 0)
    # No model stage ever saw the request: the LLM prefilled nothing and sampled nothing, the
    # flow and the vocoder produced nothing. (The frontend's text splitting runs concurrently
    # with the voice lookup by design; it is cheap and has no per-request state.)
    assert stage_work(stack) == before


@pytest.mark.parametrize(
    ("mode", "with_text", "instruct_text", "message"),
    [
        (
            tts_pb2.SYNTHESIS_MODE_SFT, True, "",
            "prompt: sft speaks with a preset or registered speaker's x-vector; with prompt audio use zero_shot, "
            "cross_lingual or instruct2",
        ),
        (
            tts_pb2.SYNTHESIS_MODE_SFT, False, "",
            "prompt: sft speaks with a preset or registered speaker's x-vector; with prompt audio use zero_shot, "
            "cross_lingual or instruct2",
        ),
        (
            tts_pb2.SYNTHESIS_MODE_CROSS_LINGUAL, True, "",
            "prompt.text: cross_lingual does not use a transcript; leave it empty or use zero_shot",
        ),
        (
            tts_pb2.SYNTHESIS_MODE_ZERO_SHOT, True, INSTRUCT,
            "instruct_text: only instruct2 uses an instruction (mode is zero_shot)",
        ),
        (
            tts_pb2.SYNTHESIS_MODE_CROSS_LINGUAL, False, INSTRUCT,
            "instruct_text: only instruct2 uses an instruction (mode is cross_lingual)",
        ),
        (
            tts_pb2.SYNTHESIS_MODE_INSTRUCT2, False, "",
            "instruct_text: instruct2 needs an instruction, e.g. 'Speak slowly.'",
        ),
        (
            tts_pb2.SYNTHESIS_MODE_INSTRUCT2, True, INSTRUCT,
            "prompt.text: instruct2 does not use a transcript; leave it empty",
        ),
        (
            tts_pb2.SYNTHESIS_MODE_ZERO_SHOT, False, "",
            "prompt.text: zero_shot needs the transcript of prompt.audio",
        ),
    ],
)
async def test_contradicting_fields_are_refused_before_the_prompt_is_encoded(
    stack, sample, mode, with_text, instruct_text, message
):
    before = stage_work(stack)
    error = await synthesize_error(stack.address, text=TEXT, stream=True, mode=mode, instruct_text=instruct_text,
                                   prompt=inline(sample, with_text))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    await eventually(lambda: stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")
    assert stage_work(stack) == before  # not even the frontend encoded the recording


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": tts_pb2.SYNTHESIS_MODE_INSTRUCT2}, "instruct_text: instruct2 needs an instruction, e.g. 'Speak slowly.'"),
        ({"instruct_text": INSTRUCT, "mode": tts_pb2.SYNTHESIS_MODE_SFT},
         "instruct_text: only instruct2 uses an instruction (mode is sft)"),
    ],
)
async def test_contradicting_fields_with_a_named_speaker(stack, fields, message):
    error = await synthesize_error(stack.address, text=TEXT, speaker_id=REGISTERED, stream=True, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    await eventually(lambda: stage_streams(stack) == (0, 0, 0), what="every stage freeing the request")
