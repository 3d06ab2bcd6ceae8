"""Every endpoint of the live front with httpx: voices, native modes (the seed's paths too),
health, CORS and metrics."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile

from services.tinymodel.writer import DEFAULT_SPEAKER

TEXT = "Hello world, this is a test."


@pytest.fixture(scope="module")
def http(http_stack):
    with httpx.Client(base_url=http_stack.url, headers=http_stack.auth, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def voice(http, http_stack) -> str:
    reply = http.post("/v1/audio/voices", data={"name": "narrator", "prompt_text": http_stack.prompt_text,
                                                "overwrite": "true"},
                      files={"audio": ("prompt.wav", http_stack.prompt_wav, "audio/wav")})
    assert reply.status_code == 201, reply.text
    return "narrator"


def test_health_and_readiness(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz", headers={"Authorization": ""}).json() == {"status": "ready"}


def test_openapi_schema_and_docs_are_served(http):
    schema = http.get("/openapi.json").json()
    assert {"/v1/audio/speech", "/v1/audio/voices", "/v1/tts/{mode}", "/inference_sft"} <= set(schema["paths"])
    assert "swagger" in http.get("/docs").text.lower()


def test_register_list_delete_a_voice(http, http_stack):
    created = http.post("/v1/audio/voices", data={"name": "temp voice", "prompt_text": http_stack.prompt_text},
                        files={"audio": ("p.wav", http_stack.prompt_wav, "audio/wav")})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "temp voice" and created.json()["num_prompt_tokens"] > 0
    voices = {v["name"]: v for v in http.get("/v1/audio/voices").json()["voices"]}
    assert voices[DEFAULT_SPEAKER]["preset"] is True
    assert voices["temp voice"]["preset"] is False and voices["temp voice"]["prompt_text"]
    again = http.post("/v1/audio/voices", data={"name": "temp voice", "prompt_text": http_stack.prompt_text},
                      files={"audio": ("p.wav", http_stack.prompt_wav, "audio/wav")})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"
    assert http.delete("/v1/audio/voices/temp voice").json() == {"name": "temp voice", "deleted": True}
    gone = http.delete("/v1/audio/voices/temp voice")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert "temp voice" not in {v["name"] for v in http.get("/v1/audio/voices").json()["voices"]}


def _wav(data: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000 and samples.size > 0 and np.isfinite(samples).all()
    return samples


@pytest.mark.parametrize("stream", [True, False])
def test_native_sft_streamed_or_whole(http, stream):
    reply = http.post("/v1/tts/sft", data={"text": TEXT, "voice": DEFAULT_SPEAKER, "stream": str(stream).lower(),
                                           "seed": "2"})
    assert reply.status_code == 200, reply.text
    assert ("content-length" in reply.headers) is (not stream)
    _wav(reply.content)


def test_native_zero_shot_with_an_uploaded_prompt(http, http_stack):
    reply = http.post("/v1/tts/zero_shot", data={"text": TEXT, "prompt_text": http_stack.prompt_text,
                                                 "response_format": "flac"},
                      files={"prompt_audio": ("p.wav", http_stack.prompt_wav, "audio/wav")})
    assert reply.status_code == 200, reply.text
    _wav(reply.content)


def test_native_cross_lingual_and_instruct2_with_a_registered_voice(http, voice):
    cross = http.post("/v1/tts/cross_lingual", data={"text": TEXT, "voice": voice, "stream": "false"})
    assert cross.status_code == 200, cross.text
    instruct = http.post("/v1/tts/instruct2", data={"text": TEXT, "voice": voice, "instruct_text": "Speak slowly.",
                                                    "response_format": "pcm"})
    assert instruct.status_code == 200, instruct.text
    assert len(instruct.content) % 2 == 0 and len(instruct.content) > 0


def test_speed_needs_a_whole_file_and_the_gateway_applies_it(http):
    normal = http.post("/v1/tts/sft", data={"text": TEXT, "voice": DEFAULT_SPEAKER, "stream": "false", "seed": "1"})
    fast = http.post("/v1/tts/sft", data={"text": TEXT, "voice": DEFAULT_SPEAKER, "stream": "false", "seed": "1",
                                          "speed": "2.0"})
    assert fast.status_code == 200, fast.text
    assert _wav(fast.content).size < _wav(normal.content).size
    streamed = http.post("/v1/tts/sft", data={"text": TEXT, "voice": DEFAULT_SPEAKER, "speed": "2.0"})
    assert streamed.status_code == 400 and "only non-streaming requests" in streamed.json()["error"]["message"]


def _seed_request(http_stack, path: str, data: dict, files: dict | None = None) -> httpx.Response:
    # As the reference's client sends it: GET with a form body (multipart when a file is sent).
    with httpx.Client(timeout=300, headers=http_stack.auth) as client:
        request = client.build_request("GET", f"{http_stack.url}{path}", data=data, files=files)
        return client.send(request)


def test_seed_paths_answer_raw_int16_pcm(http_stack):
    sft = _seed_request(http_stack, "/inference_sft", {"tts_text": TEXT, "spk_id": DEFAULT_SPEAKER})
    assert sft.status_code == 200, sft.text
    assert len(sft.content) % 2 == 0 and np.frombuffer(sft.content, "<i2").size > 2400
    prompt = {"prompt_wav": ("prompt_wav", http_stack.prompt_wav, "application/octet-stream")}
    zero = _seed_request(http_stack, "/inference_zero_shot", {"tts_text": TEXT, "prompt_text": http_stack.prompt_text},
                         prompt)
    cross = _seed_request(http_stack, "/inference_cross_lingual", {"tts_text": TEXT}, prompt)
    instruct = _seed_request(http_stack, "/inference_instruct2", {"tts_text": TEXT, "instruct_text": "Speak slowly."},
                             prompt)
    for reply in (zero, cross, instruct):
        assert reply.status_code == 200, reply.text
        assert len(reply.content) % 2 == 0 and len(reply.content) > 0
    posted = httpx.post(f"{http_stack.url}/inference_sft", data={"tts_text": TEXT, "spk_id": DEFAULT_SPEAKER},
                        headers=http_stack.auth, timeout=300)
    assert posted.status_code == 200 and len(posted.content) > 0


def test_cors_allows_the_configured_origin_only(http):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = http.options("/v1/audio/speech", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    refused = http.options("/v1/audio/speech", headers={**preflight, "Origin": "https://evil.example"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_metrics_count_requests_by_endpoint_and_status(http, http_stack):
    requests = http_stack.metrics.requests
    before = requests.labels("/v1/audio/speech", "200")._value.get()
    refused = requests.labels("/v1/audio/speech", "404")._value.get()
    first_audio = http_stack.metrics.first_audio.labels("/v1/audio/speech")._sum.get()
    assert http.post("/v1/audio/speech", json={"input": TEXT, "voice": DEFAULT_SPEAKER}).status_code == 200
    assert http.post("/v1/audio/speech", json={"input": TEXT, "voice": "nobody"}).status_code == 404
    assert requests.labels("/v1/audio/speech", "200")._value.get() == before + 1
    assert requests.labels("/v1/audio/speech", "404")._value.get() == refused + 1
    assert http_stack.metrics.first_audio.labels("/v1/audio/speech")._sum.get() > first_audio
