"""Frontend servicer: converts protos, delegates to the runner. Imports no torch."""

from __future__ import annotations

from typing import Protocol, Sequence

import grpc

from services.common.errors import InvalidRequest, Unavailable, map_errors
from services.common.pb import frontend_pb2, frontend_pb2_grpc
from services.common.request_limits import check_request_id
from services.common.speaker_protos import prompt_to_proto, record_from_proto, record_to_proto
from services.common.speakers import SpeakerRecord

_SCHEMAS = {
    frontend_pb2.SPEAKER_TABLE_SCHEMA_UNSPECIFIED: "official",
    frontend_pb2.SPEAKER_TABLE_SCHEMA_OFFICIAL: "official",
    frontend_pb2.SPEAKER_TABLE_SCHEMA_ASYNC: "async",
}
MAX_PCM_SAMPLE_RATE = 384_000
MAX_FIELD_CHARS = 128


class _Features(Protocol):
    speech_tokens: object
    prompt_mel: object
    embedding: object


class FrontendBackend(Protocol):
    presets: list[SpeakerRecord]

    async def encode_prompt(self, data: bytes, pcm16_sample_rate: int, field: str) -> tuple[_Features, float]: ...

    async def split_text(self, text: str, normalize: bool, is_prompt: bool) -> list[str]: ...

    async def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    async def read_table(self, data: bytes) -> list[SpeakerRecord]: ...

    async def write_table(self, records: Sequence[SpeakerRecord], schema: str) -> bytes: ...


class FrontendServicer(frontend_pb2_grpc.FrontendServicer):
    def __init__(self, max_text_chars: int) -> None:
        self.runner: FrontendBackend | None = None  # set once the models are loaded
        self.max_text_chars = max_text_chars

    def _ready(self) -> FrontendBackend:
        if self.runner is None:
            raise Unavailable("the frontend is still loading")
        return self.runner

    @map_errors
    async def EncodePrompt(
        self, request: frontend_pb2.EncodePromptRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.EncodePromptResponse:
        runner = self._ready()
        check_request_id(request.request_id)
        if len(request.field) > MAX_FIELD_CHARS:  # echoed in every message about the audio
            raise InvalidRequest(f"field: {len(request.field)} characters exceed the limit of {MAX_FIELD_CHARS}")
        field = request.field or "audio"
        if not 0 <= request.pcm16_sample_rate <= MAX_PCM_SAMPLE_RATE:
            raise InvalidRequest(f"pcm16_sample_rate: {request.pcm16_sample_rate} is not a sample rate")
        features, seconds = await runner.encode_prompt(request.audio, request.pcm16_sample_rate, field)
        prompt = prompt_to_proto(features.speech_tokens, features.prompt_mel, features.embedding)
        return frontend_pb2.EncodePromptResponse(prompt=prompt, audio_seconds=seconds)

    @map_errors
    async def SplitText(
        self, request: frontend_pb2.SplitTextRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.SplitTextResponse:
        runner = self._ready()
        if len(request.text) > self.max_text_chars:
            raise InvalidRequest(f"text: {len(request.text)} characters exceed the limit of {self.max_text_chars}")
        segments = await runner.split_text(request.text, request.normalize, request.is_prompt)
        return frontend_pb2.SplitTextResponse(segments=segments)

    @map_errors
    async def CountTokens(
        self, request: frontend_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.CountTokensResponse:
        runner = self._ready()
        total = sum(len(text) for text in request.texts)
        if total > self.max_text_chars:  # the same bound as one SplitText: tokenizing is linear
            raise InvalidRequest(f"texts: {total} characters in all exceed the limit of {self.max_text_chars}")
        return frontend_pb2.CountTokensResponse(counts=await runner.count_tokens(list(request.texts)))

    @map_errors
    async def ListPresetSpeakers(
        self, request: frontend_pb2.ListPresetSpeakersRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.SpeakerTable:
        runner = self._ready()
        return frontend_pb2.SpeakerTable(speakers=[record_to_proto(r) for r in runner.presets])

    @map_errors
    async def ReadSpeakerTable(
        self, request: frontend_pb2.ReadSpeakerTableRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.SpeakerTable:
        runner = self._ready()
        if not request.data:
            raise InvalidRequest("spk2info: the file is empty")
        records = await runner.read_table(request.data)
        return frontend_pb2.SpeakerTable(speakers=[record_to_proto(r) for r in records])

    @map_errors
    async def WriteSpeakerTable(
        self, request: frontend_pb2.WriteSpeakerTableRequest, context: grpc.aio.ServicerContext
    ) -> frontend_pb2.WriteSpeakerTableResponse:
        runner = self._ready()
        schema = _SCHEMAS.get(request.schema)
        if schema is None:
            raise InvalidRequest(f"schema: unknown value {request.schema}")
        records = [record_from_proto(s, f"speakers[{i}]") for i, s in enumerate(request.speakers)]
        return frontend_pb2.WriteSpeakerTableResponse(data=await runner.write_table(records, schema))
