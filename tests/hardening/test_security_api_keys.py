"""API keys at the gateway (gateway/auth.py): a real stack on port 0 whose gateway reads a
keys file; every refusal is checked by status code and message, and counted in the metrics."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.auth import MISSING_KEY, NOT_BEARER, UNKNOWN_KEY, parse_api_keys
from services.common.config import ConfigError
from services.common.pb import cosyvoice_pb2, cosyvoice_pb2_grpc, speakers_pb2, speakers_pb2_grpc, tts_pb2, tts_pb2_grpc
from tests.gateway.voice_helpers import prompt_sample, shorten_speech
from tests.stack import running_stack

FULL_KEY = "full-access-key-0123456789"
SYNTH_KEY = "synthesize-only-key-9876543210"
LABEL = "--api-keys-file / COSYVOICE_GATEWAY_API_KEYS_FILE"


@pytest.fixture
async def stack(tiny_model_dir, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# operators\n{FULL_KEY}\n\n# the web app\n{SYNTH_KEY} synthesize\n")
    async with running_stack(tiny_model_dir, api_keys_file=str(keys)) as stack:
        shorten_speech(stack, 2)
        yield stack


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def synthesize(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> list[tts_pb2.SynthesizeResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        request = tts_pb2.SynthesizeRequest(text="Hi.", seed=1)
        return [r async for r in stub.Synthesize(request, metadata=metadata, timeout=120)]


async def refusal(call) -> grpc.aio.AioRpcError:  # noqa: ANN001 - an awaitable that must fail
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def handled(stack, method: str, code: str, service: str = "cosyvoice.v1.TextToSpeech") -> float:  # noqa: ANN001
    labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
    return stack.gateway.registry.get_sample_value("cosyvoice_grpc_server_handled_total", labels) or 0.0


async def test_a_call_without_a_known_key_is_unauthenticated_and_counted(stack):
    cases = [
        ((), MISSING_KEY),
        ((("authorization", "Basic dXNlcjpwdw=="),), NOT_BEARER),
        ((("authorization", "Bearer"),), NOT_BEARER),
        (bearer("not-a-key"), UNKNOWN_KEY),
        (bearer(FULL_KEY[:-1]), UNKNOWN_KEY),  # a prefix of a key is no key
        ((("x-api-key", "not-a-key"),), UNKNOWN_KEY),
    ]
    for metadata, message in cases:
        error = await refusal(synthesize(stack.address, metadata))
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, message), metadata
    assert handled(stack, "Synthesize", "UNAUTHENTICATED") == len(cases)
    assert MISSING_KEY == "missing API key: send `authorization: Bearer <key>`"
    # The official service is behind the same keys.
    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = cosyvoice_pb2_grpc.CosyVoiceStub(channel)
        request = cosyvoice_pb2.Request(sft_request=cosyvoice_pb2.sftRequest(spk_id="x", tts_text="Hi."))
        error = await refusal(_drain(stub.Inference(request, timeout=30)))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)
    # A bidirectional stream too: refused before any text is read.
    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        text_stream = stub.SynthesizeTextStream(iter([tts_pb2.TextStreamRequest(text="Hi.")]),
                                                metadata=bearer("not-a-key"), timeout=30)
        error = await refusal(_drain(text_stream))
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, UNKNOWN_KEY)
    assert handled(stack, "SynthesizeTextStream", "UNAUTHENTICATED") == 1


async def _drain(stream) -> None:  # noqa: ANN001
    async for _ in stream:
        pass


async def test_good_keys_synthesize_and_health_and_reflection_need_none(stack):
    for metadata in (bearer(FULL_KEY), bearer(SYNTH_KEY), (("x-api-key", SYNTH_KEY),), (("authorization", f"bearer  {FULL_KEY} "),)):
        responses = await synthesize(stack.address, metadata)
        assert responses[-1].is_final and sum(len(r.audio) for r in responses) > 0, metadata
    assert handled(stack, "Synthesize", "OK") == 4
    async with grpc.aio.insecure_channel(stack.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name async for reply in stream for s in reply.list_services_response.service}
    assert "cosyvoice.v1.TextToSpeech" in names


async def test_a_synthesize_key_may_read_speakers_but_not_change_them(stack, tiny_model_dir):
    audio, text = prompt_sample(tiny_model_dir)
    register = speakers_pb2.RegisterSpeakerRequest(name="alice", prompt=tts_pb2.PromptAudio(audio=audio, text=text))
    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = speakers_pb2_grpc.SpeakersStub(channel)
        listed = await stub.ListSpeakers(speakers_pb2.ListSpeakersRequest(), metadata=bearer(SYNTH_KEY), timeout=30)
        assert "alice" not in {s.name for s in listed.speakers}
        for call in (
            stub.RegisterSpeaker(register, metadata=bearer(SYNTH_KEY), timeout=30),
            stub.DeleteSpeaker(speakers_pb2.DeleteSpeakerRequest(name="alice"), metadata=bearer(SYNTH_KEY), timeout=30),
            stub.ExportSpeakers(speakers_pb2.ExportSpeakersRequest(), metadata=bearer(SYNTH_KEY), timeout=30),
        ):
            error = await refusal(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details().startswith("this API key (scope synthesize) may not call cosyvoice.v1.Speakers/")
            assert error.details().endswith("; it needs a full-access key") and SYNTH_KEY not in error.details()
        error = await refusal(stub.RegisterSpeaker(register, timeout=30))
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)
        speaker = await stub.RegisterSpeaker(register, metadata=bearer(FULL_KEY), timeout=120)
        assert speaker.name == "alice"
    assert handled(stack, "RegisterSpeaker", "PERMISSION_DENIED", "cosyvoice.v1.Speakers") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", f"{LABEL}: the file holds no key (every request would be refused)"),
        ("# only a comment\n\n", f"{LABEL}: the file holds no key (every request would be refused)"),
        ("k1\nk2 admin\n", f"{LABEL}: line 2: unknown scope 'admin' (one of full, synthesize)"),
        ("k1 synthesize extra\n", f"{LABEL}: line 1 has 3 fields; expected KEY [SCOPE]"),
        ("secret1\n\nsecret1 synthesize\n", f"{LABEL}: line 3 repeats the key of line 1"),
        ("clé\n", f"{LABEL}: line 1: a key must be printable ASCII"),
    ],
)
def test_a_bad_keys_file_is_one_line_naming_the_setting_and_never_the_key(content, message):
    with pytest.raises(ConfigError) as caught:
        parse_api_keys(content, LABEL)
    assert str(caught.value) == message
    assert "secret1" not in str(caught.value)


def test_scopes_and_comments():
    keys = parse_api_keys("# comment\n  a-key  \nb-key synthesize\nc-key full\n", LABEL)
    assert [(k.secret, k.scope, k.line) for k in keys] == [
        (b"a-key", "full", 2), (b"b-key", "synthesize", 3), (b"c-key", "full", 4)
    ]
