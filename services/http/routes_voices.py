"""Voices: list (presets and registered), register from an upload, delete. Each is one call
to the gateway's Speakers service; registering and deleting need a full-access key when the
gateway checks keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from pydantic import BaseModel

from services.common.pb import speakers_pb2
from services.http.fields import Text
from services.http.gateway_client import GatewayClient, forwarded_metadata
from services.http.routes_common import ERROR_RESPONSES, gateway
from services.http.uploads import read_upload

router = APIRouter(tags=["Voices"])


class Voice(BaseModel):
    name: str
    preset: bool
    prompt_text: str
    num_prompt_tokens: int
    created_at: float


class VoiceList(BaseModel):
    voices: list[Voice]


class Deleted(BaseModel):
    name: str
    deleted: bool


def _voice(speaker: speakers_pb2.Speaker) -> Voice:
    return Voice(name=speaker.name, preset=speaker.preset, prompt_text=speaker.prompt_text,
                 num_prompt_tokens=speaker.num_prompt_tokens, created_at=speaker.created_at_unix)


@router.get("/v1/audio/voices", response_model=VoiceList, responses=ERROR_RESPONSES,
            summary="List the voices: presets and registered speakers")
async def list_voices(request: Request, client: GatewayClient = Depends(gateway)) -> VoiceList:
    speakers = await client.list_speakers(forwarded_metadata(request.headers))
    return VoiceList(voices=[_voice(speaker) for speaker in speakers])


@router.post("/v1/audio/voices", response_model=Voice, status_code=201, responses=ERROR_RESPONSES,
             summary="Register a voice from a prompt recording and its transcript")
async def register_voice(
    request: Request,
    name: Annotated[Text, Form(description="1-128 printable characters, no '/'; not a preset's name")],
    prompt_text: Annotated[Text, Form(description="What the recording says")],
    audio: Annotated[UploadFile, File(description="WAV, FLAC, OGG/Opus or MP3; at least 16 kHz; at most 30 s")],
    overwrite: Annotated[bool, Form(description="Replace a registered voice of the same name")] = False,
    client: GatewayClient = Depends(gateway),
) -> Voice:
    data = await read_upload(audio, request)
    speaker = await client.register_speaker(name, data, prompt_text, overwrite, forwarded_metadata(request.headers))
    return _voice(speaker)


@router.delete("/v1/audio/voices/{name}", response_model=Deleted, responses=ERROR_RESPONSES,
               summary="Delete a registered voice (presets cannot be deleted)")
async def delete_voice(name: Text, request: Request, client: GatewayClient = Depends(gateway)) -> Deleted:
    await client.delete_speaker(name, forwarded_metadata(request.headers))
    return Deleted(name=name, deleted=True)
