"""The official `cosyvoice.CosyVoice/Inference` service on the gateway, used exactly as the
official client (FunAudioLLM/CosyVoice runtime/python/grpc/client.py) uses it: prompt audio as
raw int16 PCM at 16 kHz, audio back as raw int16 PCM at 24 kHz, one message per text segment.
Also grpcurl against the gateway's reflection (no proto files), as a user would try it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import sys

import grpc
import numpy as np
import pytest
import pytest_asyncio
import soundfile

from services.common.pb import cosyvoice_pb2, cosyvoice_pb2_grpc
from services.frontend.resample import resample
from tests.gateway.voice_helpers import frontend_segments, prompt_sample, register_sample, shorten_speech
from tests.stack import running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_RATIO = 3.0  # short speech: see voice_helpers.shorten_speech
TEXT = "Hello there, my friend."
LONG_TEXT = (
    "The first sentence is here and it is fairly long for a test. The second sentence follows right "
    "after it with more words. A third one ends it all, with some more words to say."
)
SAMPLES_PER_TOKEN = 2 * 480  # 2 mel frames of 480 samples at 24 kHz
REGISTERED = "olga"
# The test extra installs grpcurl into the virtualenv, which need not be on PATH.
GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        shorten_speech(stack, MAX_RATIO)
        await register_sample(stack.address, tiny_model_dir, REGISTERED)
        yield stack


@pytest.fixture(scope="module")
def prompt_pcm16(tiny_model_dir):
    """prompt_sample.wav as the official client sends it: 16 kHz int16 little-endian PCM bytes."""
    samples, rate = soundfile.read(tiny_model_dir / "prompt_sample.wav", dtype="float32")
    at_16k = resample(samples, rate, 16000)
    return (np.clip(at_16k, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def transcript(tiny_model_dir):
    return prompt_sample(tiny_model_dir)[1]


async def inference(address, request):
    async with grpc.aio.insecure_channel(address) as channel:
        return [r async for r in cosyvoice_pb2_grpc.CosyVoiceStub(channel).Inference(request)]


async def inference_error(address, request):
    try:
        await inference(address, request)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("Inference succeeded; an error was expected")


async def assert_plausible(stack, responses, text):
    """One message per segment; each raw int16 PCM whose length is a whole number of speech
    tokens (non-streaming, speed 1), at most the LLM's max length for that segment. No lower
    bound: only EOS (6561) is masked before min_len, and the official API has no seed, so the
    random-weight model may sample one of the other stop ids (6562, 6563) early."""
    segments = await frontend_segments(stack, text)
    assert len(responses) == len(segments)
    tokenizer = stack.frontend.servicer.runner.tokenizer
    for response, segment in zip(responses, segments):
        assert len(response.tts_audio) % 2 == 0
        pcm = np.frombuffer(response.tts_audio, "<i2")
        assert pcm.size % SAMPLES_PER_TOKEN == 0
        num_text_tokens = len(tokenizer.encode(segment))
        assert 1 <= pcm.size // SAMPLES_PER_TOKEN <= MAX_RATIO * num_text_tokens
        assert np.abs(pcm).max() > 0


async def test_sft_request_with_a_preset(stack):
    request = cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="default", tts_text=TEXT))
    await assert_plausible(stack, await inference(stack.address, request), TEXT)


async def test_one_message_per_text_segment(stack):
    assert len(await frontend_segments(stack, LONG_TEXT)) == 2
    request = cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="default", tts_text=LONG_TEXT))
    await assert_plausible(stack, await inference(stack.address, request), LONG_TEXT)


async def test_zero_shot_request_with_16k_pcm_prompt(stack, prompt_pcm16, transcript):
    request = cosyvoice_pb2.Request(zero_shot_request=cosyvoice_pb2.zeroshotRequest(
        tts_text=TEXT, prompt_text=transcript, prompt_audio=prompt_pcm16))
    await assert_plausible(stack, await inference(stack.address, request), TEXT)


async def test_cross_lingual_request_with_16k_pcm_prompt(stack, prompt_pcm16):
    request = cosyvoice_pb2.Request(cross_lingual_request=cosyvoice_pb2.crosslingualRequest(
        tts_text=TEXT, prompt_audio=prompt_pcm16))
    await assert_plausible(stack, await inference(stack.address, request), TEXT)


@pytest.mark.parametrize("speaker", [REGISTERED, "default"])
async def test_instruct_request(stack, speaker):
    request = cosyvoice_pb2.Request(instruct_request=cosyvoice_pb2.instructRequest(
        tts_text=TEXT, spk_id=speaker, instruct_text="Speak slowly."))
    await assert_plausible(stack, await inference(stack.address, request), TEXT)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (cosyvoice_pb2.Request(), grpc.StatusCode.INVALID_ARGUMENT,
         "Request: set one of sft_request, zero_shot_request, cross_lingual_request, instruct_request"),
        (cosyvoice_pb2.Request(zero_shot_request=cosyvoice_pb2.zeroshotRequest(
            tts_text=TEXT, prompt_text="Hi.", prompt_audio=b"\x01\x00\x02")), grpc.StatusCode.INVALID_ARGUMENT,
         "zero_shot_request.prompt_audio: raw PCM must be 16-bit little-endian samples, but 3 bytes is an odd count"),
        (cosyvoice_pb2.Request(cross_lingual_request=cosyvoice_pb2.crosslingualRequest(
            tts_text=TEXT, prompt_audio=b"")), grpc.StatusCode.INVALID_ARGUMENT,
         "cross_lingual_request.prompt_audio: must not be empty"),
        (cosyvoice_pb2.Request(zero_shot_request=cosyvoice_pb2.zeroshotRequest(
            tts_text=TEXT, prompt_text=" ", prompt_audio=b"\x00\x00")), grpc.StatusCode.INVALID_ARGUMENT,
         "zero_shot_request.prompt_text: the transcript of prompt_audio is required"),
        (cosyvoice_pb2.Request(instruct_request=cosyvoice_pb2.instructRequest(
            tts_text=TEXT, spk_id="default")), grpc.StatusCode.INVALID_ARGUMENT,
         "instruct_request.instruct_text: must not be empty"),
        (cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="nobody", tts_text=TEXT)),
         grpc.StatusCode.NOT_FOUND, "sft_request.spk_id: 'nobody' is not a registered or preset speaker"),
        (cosyvoice_pb2.Request(instruct_request=cosyvoice_pb2.instructRequest(
            tts_text=TEXT, spk_id="nobody", instruct_text="Speak slowly.")),
         grpc.StatusCode.NOT_FOUND, "instruct_request.spk_id: 'nobody' is not a registered or preset speaker"),
        (cosyvoice_pb2.Request(zero_shot_request=cosyvoice_pb2.zeroshotRequest(
            tts_text=TEXT, prompt_text="Hi.", prompt_audio=b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32))),
         grpc.StatusCode.INVALID_ARGUMENT,
         "zero_shot_request.prompt_audio: this is a WAV file; the official API takes raw 16-bit PCM at 16 kHz, no header"),
        (cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="default", tts_text=" ")),
         grpc.StatusCode.INVALID_ARGUMENT, "sft_request.tts_text: must not be empty"),
    ],
)
async def test_errors(stack, request_, code, message):
    error = await inference_error(stack.address, request_)
    assert error.code() == code
    assert error.details() == message


async def test_silent_16k_pcm_prompt_is_invalid(stack):
    request = cosyvoice_pb2.Request(cross_lingual_request=cosyvoice_pb2.crosslingualRequest(
        tts_text=TEXT, prompt_audio=bytes(32000)))
    error = await inference_error(stack.address, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "cross_lingual_request.prompt_audio: the recording is silent (peak below -80 dBFS)"


# ------------------------------------------------------------------------------- grpcurl


async def grpcurl(address, method, body: dict) -> list[dict]:
    """grpcurl with the server's reflection (no proto files); the JSON messages it printed."""
    assert GRPCURL, "grpcurl is not installed (the test extra installs it into the virtualenv)"
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", "-max-msg-sz", str(64 << 20), "-d", "@", address, method,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(json.dumps(body).encode()), 120)
    assert process.returncode == 0, err.decode()
    decoder, text, messages = json.JSONDecoder(), out.decode().strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].lstrip()
    return messages


def field(message: dict, name: str) -> object:
    """A field of grpcurl's JSON by its proto name; grpcurl versions differ on camelCase."""
    camel = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
    assert (name in message) != (camel in message), message.keys()
    return message.get(name, message.get(camel))


async def test_grpcurl_official_inference(stack):
    messages = await grpcurl(stack.address, "cosyvoice.CosyVoice/Inference",
                             {"sft_request": {"spk_id": "default", "tts_text": TEXT}})
    assert len(messages) == 1 and len(messages[0]) == 1
    pcm = base64.b64decode(field(messages[0], "tts_audio"))
    assert len(pcm) > 0 and len(pcm) % (2 * SAMPLES_PER_TOKEN) == 0


async def test_grpcurl_text_to_speech_zero_shot_with_base64_prompt(stack, tiny_model_dir, transcript):
    body = {
        "text": TEXT,
        "prompt": {"audio": base64.b64encode((tiny_model_dir / "prompt_sample.wav").read_bytes()).decode(),
                   "text": transcript},
        "mode": "SYNTHESIS_MODE_ZERO_SHOT",
        "encoding": "AUDIO_ENCODING_WAV",
        "seed": "3",
    }
    messages = await grpcurl(stack.address, "cosyvoice.v1.TextToSpeech/Synthesize", body)
    assert len(messages) == 1
    [message] = messages
    assert field(message, "sample_rate") == 24000 and field(message, "is_final") is True
    assert message["encoding"] == "AUDIO_ENCODING_WAV"
    with soundfile.SoundFile(io.BytesIO(base64.b64decode(message["audio"]))) as wav:
        assert (wav.samplerate, wav.channels) == (24000, 1) and wav.frames > 0
