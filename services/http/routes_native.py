"""CosyVoice 2's own modes over HTTP.

`POST /v1/tts/{mode}` (sft, zero_shot, cross_lingual, instruct2): a form (multipart when it
carries `prompt_audio`), `stream` true sends the audio chunked as synthesised, false one file
with its length; `response_format` as the speech endpoint's (default wav).

The seed's paths, for the reference FastAPI server's client: `/inference_sft`,
`/inference_zero_shot`, `/inference_cross_lingual`, `/inference_instruct2`, GET or POST with its
form fields (tts_text, spk_id, prompt_text, prompt_wav, instruct_text), answering raw int16 PCM
(mono, 24 kHz) streamed as synthesised. GET with a form body is what that client sends; only
POST is listed in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from services.common.pb import tts_pb2
from services.http.audio_format import ResponseFormat
from services.http.fields import Text
from services.http.gateway_client import GatewayClient
from services.http.routes_common import AUDIO_RESPONSES, gateway
from services.http.synthesis import SYNTHESIS_MODES, respond
from services.http.uploads import read_upload

router = APIRouter(tags=["Native modes"])
Mode = Literal["sft", "zero_shot", "cross_lingual", "instruct2"]


async def _message(
    request: Request, mode: str, text: str, voice: str | None, prompt_audio: UploadFile | None,
    prompt_text: str | None, instruct_text: str | None, stream: bool,
) -> tts_pb2.SynthesizeRequest:
    message = tts_pb2.SynthesizeRequest(text=text, mode=SYNTHESIS_MODES[mode], stream=stream,
                                        instruct_text=instruct_text or "")
    if prompt_audio is not None:
        audio = await read_upload(prompt_audio, request)
        message.prompt.CopyFrom(tts_pb2.PromptAudio(audio=audio, text=prompt_text or ""))
    elif voice:
        message.speaker_id = voice
    return message


@router.post("/v1/tts/{mode}", responses=AUDIO_RESPONSES, response_class=Response,
             summary="Synthesise in one of CosyVoice 2's modes")
async def synthesize_mode(
    mode: Mode,
    request: Request,
    text: Annotated[Text, Form(description="The text to speak")],
    voice: Annotated[Text | None, Form(description="A preset or registered speaker (not with prompt_audio)")] = None,
    prompt_audio: Annotated[UploadFile | None, File(description="A prompt recording (zero_shot, cross_lingual, "
                                                                 "instruct2)")] = None,
    prompt_text: Annotated[Text | None, Form(description="zero_shot: the transcript of prompt_audio")] = None,
    instruct_text: Annotated[Text | None, Form(description="instruct2: the instruction")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "wav",
    stream: Annotated[bool, Form(description="chunked as synthesised (true) or one file (false)")] = True,
    speed: Annotated[float | None, Form(description="[0.5, 2.0]; only with stream=false")] = None,
    seed: Annotated[int | None, Form(ge=0, le=2**64 - 1)] = None,
    client: GatewayClient = Depends(gateway),
) -> Response:
    message = await _message(request, mode, text, voice, prompt_audio, prompt_text, instruct_text, stream)
    if speed is not None:
        message.speed = speed
    if seed is not None:
        message.seed = seed
    return await respond(client, request, message, response_format)


# ------------------------------------------------------------------ the seed's paths
def _seed_route(path: str):  # noqa: ANN202 - a decorator
    def register(handler):  # noqa: ANN001, ANN202
        router.add_api_route(path, handler, methods=["POST"], response_class=Response, responses=AUDIO_RESPONSES,
                             summary=f"Seed-compatible {path} (raw int16 PCM)", tags=["Seed-compatible"])
        router.add_api_route(path, handler, methods=["GET"], response_class=Response, include_in_schema=False)
        return handler
    return register


@_seed_route("/inference_sft")
async def inference_sft(request: Request, tts_text: Annotated[Text, Form()], spk_id: Annotated[Text, Form()],
                        client: GatewayClient = Depends(gateway)) -> Response:
    message = await _message(request, "sft", tts_text, spk_id, None, None, None, True)
    return await respond(client, request, message, "pcm")


@_seed_route("/inference_zero_shot")
async def inference_zero_shot(request: Request, tts_text: Annotated[Text, Form()],
                              prompt_text: Annotated[Text, Form()], prompt_wav: Annotated[UploadFile, File()],
                              client: GatewayClient = Depends(gateway)) -> Response:
    message = await _message(request, "zero_shot", tts_text, None, prompt_wav, prompt_text, None, True)
    return await respond(client, request, message, "pcm")


@_seed_route("/inference_cross_lingual")
async def inference_cross_lingual(request: Request, tts_text: Annotated[Text, Form()],
                                  prompt_wav: Annotated[UploadFile, File()],
                                  client: GatewayClient = Depends(gateway)) -> Response:
    message = await _message(request, "cross_lingual", tts_text, None, prompt_wav, None, None, True)
    return await respond(client, request, message, "pcm")


@_seed_route("/inference_instruct2")
async def inference_instruct2(request: Request, tts_text: Annotated[Text, Form()],
                              instruct_text: Annotated[Text, Form()], prompt_wav: Annotated[UploadFile, File()],
                              client: GatewayClient = Depends(gateway)) -> Response:
    message = await _message(request, "instruct2", tts_text, None, prompt_wav, None, instruct_text, True)
    return await respond(client, request, message, "pcm")
