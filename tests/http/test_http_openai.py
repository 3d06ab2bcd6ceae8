"""The official `openai` client against the live front, unchanged: whole and streaming,
every response_format decoded back."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import soundfile
from openai import OpenAI

from services.tinymodel.writer import DEFAULT_SPEAKER
from tests.http.conftest import FULL_KEY

TEXT = "Hello world, this is a test."
PRESET = DEFAULT_SPEAKER  # the tiny model's one preset speaker


@pytest.fixture(scope="module")
def client(http_stack) -> OpenAI:
    return OpenAI(base_url=f"{http_stack.url}/v1", api_key=FULL_KEY, max_retries=0, timeout=300)


def _decoded(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, rate


@pytest.mark.parametrize("response_format", ["wav", "mp3", "opus", "flac"])
def test_whole_file_in_every_container_decodes_back(client, response_format):
    audio = client.audio.speech.create(model="tts-1", voice=PRESET, input=TEXT, response_format=response_format)
    samples, rate = _decoded(audio.content)
    assert rate == 24000
    assert samples.ndim == 1 and samples.size > 2400 and np.isfinite(samples).all()


def test_pcm_is_raw_s16le_mono_24k_as_the_wav(client):
    pcm = client.audio.speech.create(model="tts-1", voice=PRESET, input=TEXT, response_format="pcm", extra_body={"seed": 4})
    wav = client.audio.speech.create(model="tts-1", voice=PRESET, input=TEXT, response_format="wav", extra_body={"seed": 4})
    assert len(pcm.content) % 2 == 0 and len(pcm.content) > 4800
    samples, _ = soundfile.read(io.BytesIO(wav.content), dtype="int16")
    np.testing.assert_array_equal(np.frombuffer(pcm.content, "<i2"), samples)


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
def test_streaming_response_arrives_in_several_chunks(client, response_format):
    pieces = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=PRESET, input=TEXT, response_format=response_format, extra_body={"seed": 4}
    ) as response:
        assert response.headers["content-type"].startswith("audio/")
        assert "content-length" not in response.headers  # chunked, as synthesised
        for piece in response.iter_bytes():
            pieces.append(piece)
    data = b"".join(pieces)
    assert len(pieces) > 1
    if response_format == "wav":
        assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"  # length unknown while streaming
        samples, rate = _decoded(data)
        assert rate == 24000 and samples.size == (len(data) - 44) // 2
    else:
        assert len(data) % 2 == 0


def test_openai_voice_object_and_ignored_model_and_instructions(client, http_stack):
    # A registered voice (it has a recording) takes instructions: instruct2.
    httpx.post(f"{http_stack.url}/v1/audio/voices", headers=http_stack.auth,
               data={"name": "openai-voice", "prompt_text": http_stack.prompt_text, "overwrite": "true"},
               files={"audio": ("p.wav", http_stack.prompt_wav, "audio/wav")}, timeout=120).raise_for_status()
    audio = client.audio.speech.create(model="anything-at-all", voice={"id": "openai-voice"}, input="Hi there.",
                                       response_format="wav", instructions="Speak slowly.")
    assert _decoded(audio.content)[0].size > 0


def test_sse_events_carry_the_audio_then_done(http_stack):
    body = {"model": "tts-1", "voice": PRESET, "input": TEXT, "response_format": "pcm", "stream_format": "sse"}
    events = []
    with httpx.stream("POST", f"{http_stack.url}/v1/audio/speech", json=body, headers=http_stack.auth,
                      timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    types = [event["type"] for event in events]
    assert types[-1] == "speech.audio.done" and set(types[:-1]) == {"speech.audio.delta"} and len(types) > 2
    import base64

    audio = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    assert len(audio) % 2 == 0 and events[-1]["audio_seconds"] == pytest.approx(len(audio) / 2 / 24000, abs=1e-3)


def test_the_openai_client_sees_the_gateways_refusal(client):
    import openai

    with pytest.raises(openai.NotFoundError) as raised:
        client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    assert raised.value.status_code == 404
    assert "'alloy' is not a registered or preset speaker" in raised.value.response.json()["error"]["message"]
