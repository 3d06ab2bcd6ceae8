"""The official `cosyvoice.CosyVoice/Inference` service, so clients of the official gRPC server
work unchanged against the gateway.

Mapping (the official server calls the library with stream=False, one message per segment):
- sft_request (spk_id, tts_text) → sft with that preset or registered speaker;
- zero_shot_request (tts_text, prompt_text, prompt_audio) → zero_shot with an inline prompt;
- cross_lingual_request (tts_text, prompt_audio) → cross_lingual with an inline prompt;
- instruct_request (tts_text, spk_id, instruct_text) → CosyVoice 2's instruct2 with that
  speaker's voice (the official v1 instruct mode does not exist in CosyVoice 2).
Prompt audio arrives as raw int16 PCM at 16 kHz; responses are raw int16 PCM at the model's
rate (24 kHz), one message per text segment, clipped rather than wrapped on loud peaks.
"""

from __future__ import annotations

import secrets
from typing import AsyncIterator

import grpc

from gateway.audio import to_s16le
from gateway.modes import Mode
from gateway.servicer import TextToSpeechServicer
from gateway.synthesis import SynthesisOptions, VoiceSpec
from services.common.errors import InvalidRequest, map_errors
from services.common.pb import cosyvoice_pb2, cosyvoice_pb2_grpc

OFFICIAL_PROMPT_SAMPLE_RATE = 16000


def _pcm_voice(kind: str, audio: bytes, transcript: str = "") -> VoiceSpec:
    """An official request's prompt: raw 16-bit PCM at 16 kHz, named as that API names it."""
    field = f"{kind}.prompt_audio"
    # The official server would read a WAV header as samples and clone a click; say so instead.
    if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        raise InvalidRequest(f"{field}: this is a WAV file; the official API takes raw 16-bit PCM at 16 kHz, no header")
    return VoiceSpec(prompt_audio=audio, prompt_text=transcript, pcm16_sample_rate=OFFICIAL_PROMPT_SAMPLE_RATE,
                     field=f"{kind}.prompt", audio_field=field)


def official_options(request: cosyvoice_pb2.Request) -> SynthesisOptions:
    kind = request.WhichOneof("RequestPayload")
    seed = secrets.randbits(63)
    if kind == "sft_request":
        body = request.sft_request
        voice = VoiceSpec(speaker_id=body.spk_id, field="sft_request", speaker_field="sft_request.spk_id")
        return SynthesisOptions(body.tts_text, voice, Mode.SFT, seed=seed, stream=False,
                                text_field="sft_request.tts_text")
    if kind == "zero_shot_request":
        body = request.zero_shot_request
        if not body.prompt_text.strip():
            raise InvalidRequest("zero_shot_request.prompt_text: the transcript of prompt_audio is required")
        return SynthesisOptions(body.tts_text, _pcm_voice(kind, body.prompt_audio, body.prompt_text), Mode.ZERO_SHOT,
                                seed=seed, stream=False, text_field="zero_shot_request.tts_text")
    if kind == "cross_lingual_request":
        body = request.cross_lingual_request
        return SynthesisOptions(body.tts_text, _pcm_voice(kind, body.prompt_audio), Mode.CROSS_LINGUAL, seed=seed,
                                stream=False, text_field="cross_lingual_request.tts_text")
    if kind == "instruct_request":
        body = request.instruct_request
        if not body.instruct_text.strip():
            raise InvalidRequest("instruct_request.instruct_text: must not be empty")
        voice = VoiceSpec(speaker_id=body.spk_id, field="instruct_request", speaker_field="instruct_request.spk_id")
        return SynthesisOptions(body.tts_text, voice, Mode.INSTRUCT2, instruct_text=body.instruct_text, seed=seed,
                                stream=False, text_field="instruct_request.tts_text")
    raise InvalidRequest("Request: set one of sft_request, zero_shot_request, cross_lingual_request, instruct_request")


class OfficialCosyVoiceServicer(cosyvoice_pb2_grpc.CosyVoiceServicer):
    """Shares admission control, metrics and the synthesis path with TextToSpeech."""

    def __init__(self, tts: TextToSpeechServicer) -> None:
        self.tts = tts

    @map_errors
    async def Inference(
        self, request: cosyvoice_pb2.Request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cosyvoice_pb2.Response]:
        async def responses() -> AsyncIterator[cosyvoice_pb2.Response]:
            options = official_options(request)
            synthesizer = self.tts.synthesizer
            plan = await synthesizer.plan(options, context.time_remaining())
            async for piece in synthesizer.run(plan, context.time_remaining()):
                # stream=False: each segment arrives as one piece, which is one message.
                if piece.samples.size:
                    yield cosyvoice_pb2.Response(tts_audio=to_s16le(piece.samples))

        async for response in self.tts.admitted(responses()):
            yield response
