"""Every error path of the front: the status, the JSON shape and the message."""

from __future__ import annotations

import httpx
import pytest

from services.tinymodel.writer import DEFAULT_SPEAKER
from tests.http.conftest import SYNTH_KEY

TEXT = "Hello world."


@pytest.fixture(scope="module")
def http(http_stack):
    with httpx.Client(base_url=http_stack.url, headers=http_stack.auth, timeout=120) as client:
        yield client


def _error(reply: httpx.Response, status: int, code: str, words: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert words in body["error"]["message"], body


def test_bad_json_is_a_validation_error(http):
    reply = http.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    _error(reply, 422, "validation_error", "JSON decode error")


def test_missing_input_names_the_field(http):
    _error(http.post("/v1/audio/speech", json={"voice": DEFAULT_SPEAKER}), 422, "validation_error", "input: Field required")


def test_unknown_voice_is_404(http):
    _error(http.post("/v1/audio/speech", json={"input": TEXT, "voice": "nobody"}), 404, "not_found",
           "'nobody' is not a registered or preset speaker")


def test_empty_input_is_refused_by_the_gateway(http):
    reply = http.post("/v1/audio/speech", json={"input": "", "voice": DEFAULT_SPEAKER})
    _error(reply, 400, "invalid_argument", "text")


def test_bad_response_format(http):
    reply = http.post("/v1/audio/speech", json={"input": TEXT, "response_format": "aac"})
    _error(reply, 422, "validation_error", "response_format: Input should be 'wav', 'pcm', 'mp3', 'opus' or 'flac'")


def test_speed_out_of_range(http):
    reply = http.post("/v1/audio/speech", json={"input": TEXT, "voice": DEFAULT_SPEAKER, "speed": 4.0})
    _error(reply, 400, "invalid_argument", "speed: 4 is outside [0.5, 2.0]")


def test_unknown_mode_and_path(http):
    _error(http.post("/v1/tts/karaoke", data={"text": TEXT}), 422, "validation_error", "mode: Input should be")
    _error(http.get("/v1/nothing-here"), 404, "not_found", "no such path: /v1/nothing-here")
    _error(http.put("/v1/audio/speech", json={}), 405, "method_not_allowed", "Method Not Allowed")


def test_lone_surrogate_text_is_refused_not_crashed(http):
    reply = http.post("/v1/audio/speech", content=b'{"input": "\\ud800"}', headers={"content-type": "application/json"})
    _error(reply, 422, "validation_error", "valid UTF-8")


def test_too_large_json_body_is_413_before_it_is_read(http):
    reply = http.post("/v1/audio/speech", json={"input": "x" * (70 * 1024)})  # the live front allows 64 KiB
    _error(reply, 413, "payload_too_large", "exceeds 65536 bytes (the HTTP front's max_body_bytes")


def test_too_large_chunked_body_is_413(http):
    def body():
        for _ in range(80):
            yield b"x" * 1024

    reply = http.post("/v1/audio/speech", content=body(), headers={"content-type": "application/json"})
    _error(reply, 413, "payload_too_large", "exceeds 65536 bytes")


def test_too_large_upload_is_413(http, http_stack):
    big = b"\0" * (3 * 1024 * 1024)  # the live front allows 2 MiB of multipart
    reply = http.post("/v1/audio/voices", data={"name": "big", "prompt_text": "x"}, files={"audio": ("a.wav", big)})
    _error(reply, 413, "payload_too_large", "max_upload_bytes")


def test_an_empty_upload_is_400(http):
    reply = http.post("/v1/audio/voices", data={"name": "empty", "prompt_text": "x"}, files={"audio": ("e.wav", b"")})
    _error(reply, 400, "invalid_argument", "the uploaded file e.wav is empty")


def test_bad_prompt_audio_is_the_gateways_400(http):
    reply = http.post("/v1/tts/zero_shot", data={"text": TEXT, "prompt_text": "hi"},
                      files={"prompt_audio": ("p.wav", b"not audio at all", "audio/wav")})
    _error(reply, 400, "invalid_argument", "prompt")


@pytest.mark.parametrize(("headers", "words"), [
    ({}, "missing API key"),
    ({"Authorization": "Bearer wrong-key"}, "unknown API key"),
    ({"Authorization": "Basic abc"}, "must be `Bearer <key>`"),
    ({"Authorization": "Bearer caf\u00e9".encode()}, "printable ASCII"),
])
def test_missing_or_bad_api_key_is_401(http_stack, headers, words):
    reply = httpx.post(f"{http_stack.url}/v1/audio/speech", json={"input": TEXT}, headers=headers, timeout=60)
    _error(reply, 401, "unauthenticated", words)
    assert reply.headers["www-authenticate"] == "Bearer"
    listed = httpx.get(f"{http_stack.url}/v1/audio/voices", headers=headers, timeout=60)
    assert listed.status_code == 401


def test_a_synthesize_key_may_speak_but_not_register(http_stack):
    headers = {"Authorization": f"Bearer {SYNTH_KEY}"}
    assert httpx.get(f"{http_stack.url}/v1/audio/voices", headers=headers, timeout=60).status_code == 200
    reply = httpx.post(f"{http_stack.url}/v1/audio/voices", headers=headers, timeout=60,
                       data={"name": "x", "prompt_text": "x"}, files={"audio": ("a.wav", b"RIFF")})
    _error(reply, 403, "permission_denied", "needs a full-access key")


def test_gateway_down_is_503_on_readyz_and_on_synthesis(http_stack):
    ready = httpx.get(f"{http_stack.down_url}/readyz", timeout=60)
    _error(ready, 503, "unavailable", "did not answer health (UNAVAILABLE)")
    assert httpx.get(f"{http_stack.down_url}/healthz", timeout=60).status_code == 200  # alive all the same
    speech = httpx.post(f"{http_stack.down_url}/v1/audio/speech", json={"input": TEXT}, timeout=60)
    assert speech.status_code == 503 and speech.json()["error"]["code"] == "unavailable"
