"""POST /v1/audio/speech, compatible with OpenAI's: the official `openai` client works
unchanged (whole, or `with_streaming_response` and `iter_bytes()`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.pb import tts_pb2
from services.http.audio_format import ResponseFormat
from services.http.fields import Text, VoiceId, voice_name
from services.http.gateway_client import GatewayClient
from services.http.routes_common import AUDIO_RESPONSES, gateway
from services.http.synthesis import respond

router = APIRouter(tags=["OpenAI-compatible speech"])


class SpeechRequest(BaseModel):
    """OpenAI's speech request. Fields OpenAI may add later are ignored, not refused."""

    model_config = ConfigDict(extra="ignore")

    model: Text | None = Field(
        None, description="Accepted and ignored (any value): this server runs one model, CosyVoice 2."
    )
    input: Text = Field(description="The text to speak (non-empty; at most the gateway's max_text_chars).")
    voice: Text | VoiceId | None = Field(
        None, description="A preset or registered speaker (GET /v1/audio/voices), as a name or {\"id\": NAME}; "
                          "unset: the model's first preset. OpenAI's voice names exist only if registered.",
    )
    response_format: ResponseFormat = Field(
        "mp3", description="wav, pcm (raw s16le mono 24 kHz), mp3, opus (Ogg) or flac. pcm, wav and opus stream "
                           "as synthesised; mp3 and flac are sent when complete.",
    )
    speed: float | None = Field(
        None, description="Speaking rate in [0.5, 2.0]; a value other than 1 synthesises the whole text first."
    )
    instructions: Text | None = Field(
        None, description="An instruction (instruct2 mode), e.g. 'Speak slowly.'; the voice must have a recording."
    )
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="audio: the file, chunked as synthesised; sse: speech.audio.delta events, then "
                             "speech.audio.done.",
    )
    seed: int | None = Field(None, ge=0, le=2**64 - 1, description="Extension: same seed, same audio.")


def speech_message(body: SpeechRequest) -> tts_pb2.SynthesizeRequest:
    # The gateway changes speed only without streaming (as the reference does).
    stream = body.speed is None or body.speed == 1.0
    message = tts_pb2.SynthesizeRequest(text=body.input, stream=stream, instruct_text=body.instructions or "")
    name = voice_name(body.voice)
    if name:
        message.speaker_id = name
    if body.speed is not None:
        message.speed = body.speed
    if body.seed is not None:
        message.seed = body.seed
    return message


@router.post("/v1/audio/speech", responses=AUDIO_RESPONSES, response_class=Response,
             summary="Synthesise speech (OpenAI-compatible)")
async def create_speech(body: SpeechRequest, request: Request, client: GatewayClient = Depends(gateway)) -> Response:
    return await respond(client, request, speech_message(body), body.response_format, body.stream_format)
