"""Message size limits per service (docs/limits.md): a message over a server's
max_receive_message_bytes gets RESOURCE_EXHAUSTED from the real server, and the biggest
legitimate message passes: a prompt upload of exactly the frontend's max_audio_bytes,
registered through the gateway."""

from __future__ import annotations

import struct

import grpc
import pytest

from gateway.config import GatewayConfig
from services.common.config import MIB, ConfigError, load_config
from services.common.metrics import make_registry
from services.common.pb import llm_pb2, llm_pb2_grpc, speakers_pb2, speakers_pb2_grpc, tts_pb2
from services.common.server import MAX_MESSAGE_BYTES
from services.flow.config import FlowServiceConfig
from services.frontend.config import FrontendServiceConfig
from services.llm.config import LLMServiceConfig
from services.llm.server import create_app as create_llm
from services.vocoder.config import VocoderServiceConfig
from tests.gateway.voice_helpers import prompt_sample
from tests.stack import running_stack, stage_app

BIG = [("grpc.max_send_message_length", 128 * MIB), ("grpc.max_receive_message_length", 128 * MIB)]


def padded_wav(wav: bytes, total: int) -> bytes:
    """The same recording grown to `total` bytes by a JUNK chunk (readers skip it): an upload of
    exactly that size that the frontend accepts."""
    body = wav[12:]
    pad = total - len(wav) - 8
    junk = b"JUNK" + struct.pack("<I", pad) + b"\0" * pad
    return b"RIFF" + struct.pack("<I", 4 + len(body) + len(junk)) + b"WAVE" + body + junk


async def test_an_llm_request_over_its_limit_gets_resource_exhausted(tiny_model_dir):
    config = LLMServiceConfig(model_dir=tiny_model_dir, metrics_port=-1)
    assert config.max_receive_message_bytes == MIB
    async with stage_app(create_llm(config, make_registry())) as app:
        async with grpc.aio.insecure_channel(app.host.address, options=BIG) as channel:
            request = llm_pb2.GenerateRequest(text="x" * (MIB + 1))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(request):
                    pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {MIB}" in info.value.details()  # gRPC's "larger than max (N vs. 1048576)"


async def test_the_longest_prompt_upload_registers_and_a_bigger_message_is_refused(tiny_model_dir):
    wav, transcript = prompt_sample(tiny_model_dir)
    biggest = padded_wav(wav, FrontendServiceConfig.max_audio_bytes)
    async with running_stack(tiny_model_dir) as stack:
        async with grpc.aio.insecure_channel(stack.address, options=BIG) as channel:
            speakers = speakers_pb2_grpc.SpeakersStub(channel)
            request = speakers_pb2.RegisterSpeakerRequest(
                name="big", prompt=tts_pb2.PromptAudio(audio=biggest, text=transcript)
            )
            assert request.ByteSize() > FrontendServiceConfig.max_audio_bytes
            speaker = await speakers.RegisterSpeaker(request)
            assert speaker.name == "big"
            too_big = speakers_pb2.RegisterSpeakerRequest(
                name="huge", prompt=tts_pb2.PromptAudio(audio=b"\0" * GatewayConfig.max_receive_message_bytes)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await speakers.RegisterSpeaker(too_big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {GatewayConfig.max_receive_message_bytes}" in info.value.details()


def test_every_channel_takes_what_any_server_may_send_and_the_gateway_relays_what_it_accepts():
    sends = [c.max_send_message_bytes for c in (GatewayConfig, LLMServiceConfig, FlowServiceConfig,
                                                  VocoderServiceConfig, FrontendServiceConfig)]
    assert max(sends) <= MAX_MESSAGE_BYTES
    assert GatewayConfig.max_receive_message_bytes <= FrontendServiceConfig.max_receive_message_bytes
    # The flow's mel chunk out fits the vocoder's mel chunk in.
    assert FlowServiceConfig.max_send_message_bytes <= VocoderServiceConfig.max_receive_message_bytes


@pytest.mark.parametrize(
    ("config_type", "argv", "message"),
    [
        (LLMServiceConfig, ["--max-receive-message-bytes", "65536", "--max-text-chars", "10000"],
         "--max-receive-message-bytes / COSYVOICE_LLM_MAX_RECEIVE_MESSAGE_BYTES must hold the largest request"),
        (FrontendServiceConfig, ["--max-audio-bytes", str(64 * MIB)],
         "--max-receive-message-bytes / COSYVOICE_FRONTEND_MAX_RECEIVE_MESSAGE_BYTES must hold a prompt upload"),
        (VocoderServiceConfig, ["--max-send-message-bytes", str(8 * MIB)],
         "--max-send-message-bytes / COSYVOICE_VOCODER_MAX_SEND_MESSAGE_BYTES must hold the audio"),
        (FlowServiceConfig, ["--max-receive-message-bytes", "1000"],
         "--max-receive-message-bytes / COSYVOICE_FLOW_MAX_RECEIVE_MESSAGE_BYTES must be in 65536..2147483647"),
    ],
)
def test_a_message_limit_below_what_the_other_limits_allow_is_refused_naming_it(
    tiny_model_dir, config_type, argv, message
):
    with pytest.raises(ConfigError, match=message):
        load_config(config_type, ["--model-dir", str(tiny_model_dir), *argv], environ={})
