"""The public Speakers servicer: register a voice once, use it by name. Imports no torch.

Registration = the frontend stage encodes the recording (and normalises the transcript), then
one store transaction writes the result. Nothing is stored unless every step succeeded.
Presets (the model's spk2info.pt) are listed and readable but never written or deleted.
"""

from __future__ import annotations

import dataclasses
import time

import grpc

from gateway.frontend_calls import FrontendClient
from gateway.synthesis import both
from gateway.voices import VoiceBook
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidRequest, NotFound, map_errors
from services.common.pb import frontend_pb2, speakers_pb2, speakers_pb2_grpc
from services.common.speaker_protos import prompt_from_proto, prompt_to_proto, record_to_proto
from services.common.speakers import SpeakerExists, SpeakerRecord, validate, validate_name

_SCHEMAS = {
    speakers_pb2.SPK2INFO_SCHEMA_UNSPECIFIED: frontend_pb2.SPEAKER_TABLE_SCHEMA_OFFICIAL,
    speakers_pb2.SPK2INFO_SCHEMA_OFFICIAL: frontend_pb2.SPEAKER_TABLE_SCHEMA_OFFICIAL,
    speakers_pb2.SPK2INFO_SCHEMA_ASYNC: frontend_pb2.SPEAKER_TABLE_SCHEMA_ASYNC,
}
MAX_TRANSCRIPT_CHARS = 1000


def speaker_message(record: SpeakerRecord, include_features: bool = False) -> speakers_pb2.Speaker:
    message = speakers_pb2.Speaker(
        name=record.name,
        preset=record.preset,
        prompt_text=record.prompt_text,
        num_prompt_tokens=int(record.speech_tokens.size),
        created_at_unix=record.created_at,
    )
    if include_features:
        message.features.prompt.CopyFrom(prompt_to_proto(record.speech_tokens, record.prompt_mel, record.embedding))
    return message


class SpeakersServicer(speakers_pb2_grpc.SpeakersServicer):
    def __init__(self, voices: VoiceBook, frontend: FrontendClient) -> None:
        self.voices = voices
        self.frontend = frontend

    def _check_new_name(self, name: str, field: str = "name") -> None:
        try:
            validate_name(name)
        except ValueError as exc:
            raise InvalidRequest(f"{field}{str(exc)[len('name'):]}") from None
        if name in self.voices.presets:
            raise AlreadyExists(f"{field}: {name!r} is a preset speaker of the model; choose another name")

    async def _put(self, records: list[SpeakerRecord], overwrite: bool, field: str, invalid_prefix: str = "") -> None:
        """One store transaction: every record or none."""
        try:
            await self.voices.in_store(lambda: self.voices.store.put_many(records, overwrite=overwrite))
        except SpeakerExists as exc:  # taken meanwhile by another call: the store checks atomically
            raise AlreadyExists(f"{field}: speaker {exc.name!r} already exists (set overwrite to replace it)") from None
        except ValueError as exc:  # e.g. one name twice in a file
            raise InvalidRequest(f"{invalid_prefix}{exc}") from None

    async def _registered(self, names: list[str]) -> list[str]:
        """The names among `names` that registered speakers already have."""
        return [name for name in names if await self.voices.in_store(self.voices.store.get, name) is not None]

    @map_errors
    async def RegisterSpeaker(
        self, request: speakers_pb2.RegisterSpeakerRequest, context: grpc.aio.ServicerContext
    ) -> speakers_pb2.Speaker:
        self._check_new_name(request.name)
        if not request.prompt.text.strip():
            raise InvalidRequest("prompt.text: the transcript of prompt.audio is required")
        if len(request.prompt.text) > MAX_TRANSCRIPT_CHARS:
            raise InvalidRequest(f"prompt.text: longer than {MAX_TRANSCRIPT_CHARS} characters")
        if not request.prompt.audio:
            raise InvalidRequest("prompt.audio: must not be empty")
        if not request.overwrite and await self._registered([request.name]):
            # Checked before the encoding work too; the store checks again atomically.
            raise AlreadyExists(f"name: speaker {request.name!r} already exists (set overwrite to replace it)")
        normalize = request.text_frontend if request.HasField("text_frontend") else True
        timeout = context.time_remaining()
        prompt, transcript = await both(  # the transcript is normalised while the recording is encoded
            self.frontend.encode_prompt(request.prompt.audio, "prompt.audio", timeout=timeout),
            self.frontend.normalize_prompt_text(request.prompt.text, normalize, timeout),
        )
        tokens, mel, embedding = prompt_from_proto(prompt, "frontend.prompt")
        record = SpeakerRecord(request.name, transcript, tokens, mel, embedding, created_at=time.time())
        await self._put([record], request.overwrite, "name")
        return speaker_message(record)

    @map_errors
    async def ListSpeakers(
        self, request: speakers_pb2.ListSpeakersRequest, context: grpc.aio.ServicerContext
    ) -> speakers_pb2.ListSpeakersResponse:
        registered = await self.voices.in_store(self.voices.store.list)
        everyone = sorted([*self.voices.presets.values(), *registered], key=lambda r: r.name)
        return speakers_pb2.ListSpeakersResponse(speakers=[speaker_message(r) for r in everyone])

    @map_errors
    async def GetSpeaker(
        self, request: speakers_pb2.GetSpeakerRequest, context: grpc.aio.ServicerContext
    ) -> speakers_pb2.Speaker:
        if not request.name:
            raise InvalidRequest("name: must not be empty")
        record = await self.voices.record(request.name, "name")
        return speaker_message(record, request.include_features)

    @map_errors
    async def DeleteSpeaker(
        self, request: speakers_pb2.DeleteSpeakerRequest, context: grpc.aio.ServicerContext
    ) -> speakers_pb2.DeleteSpeakerResponse:
        if not request.name:
            raise InvalidRequest("name: must not be empty")
        if request.name in self.voices.presets:
            raise FailedPrecondition(f"name: {request.name!r} is a preset speaker of the model; presets are read-only")
        if not await self.voices.in_store(self.voices.store.delete, request.name):
            raise NotFound(f"name: {request.name!r} is not a registered speaker")
        return speakers_pb2.DeleteSpeakerResponse()

    @map_errors
    async def ImportSpeakers(
        self, request: speakers_pb2.ImportSpeakersRequest, context: grpc.aio.ServicerContext
    ) -> speakers_pb2.ImportSpeakersResponse:
        if not request.spk2info:
            raise InvalidRequest("spk2info: the file is empty")
        if request.overwrite and request.skip_existing:
            raise InvalidRequest("skip_existing: cannot be combined with overwrite")
        records = await self.frontend.read_table(request.spk2info)
        if not records:
            raise InvalidRequest("spk2info: the file holds no speakers")
        now = time.time()
        records = [dataclasses.replace(r, created_at=now, preset=False) for r in records]
        taken = set(await self._registered([r.name for r in records]))
        skipped: list[str] = []
        if request.skip_existing:
            taken |= {r.name for r in records if r.name in self.voices.presets}
            skipped = [r.name for r in records if r.name in taken]
            records = [r for r in records if r.name not in taken]
        for record in records:  # every check before the first write: all or nothing
            self._check_new_name(record.name, "spk2info")
            try:
                validate(record)
            except ValueError as exc:
                raise InvalidRequest(f"spk2info: speaker {record.name!r}: {exc}") from None
        if not request.overwrite and not request.skip_existing:
            existing = [r.name for r in records if r.name in taken]
            if existing:
                raise AlreadyExists(
                    f"spk2info: speakers {existing[:5]} already exist (set overwrite to replace them, or "
                    "skip_existing to import the others)"
                )
        if records:
            await self._put(records, request.overwrite, "spk2info", invalid_prefix="spk2info: ")
        return speakers_pb2.ImportSpeakersResponse(names=[r.name for r in records], skipped=skipped)

    @map_errors
    async def ExportSpeakers(
        self, request: speakers_pb2.ExportSpeakersRequest, context: grpc.aio.ServicerContext
    ) -> speakers_pb2.ExportSpeakersResponse:
        schema = _SCHEMAS.get(request.schema)
        if schema is None:
            raise InvalidRequest(f"schema: unknown value {request.schema}")
        if request.names:
            records = []
            # A name listed twice is exported once: a table holds each speaker once, and the
            # frontend refused the repeat as an internal error (found by the API fuzz, issue 9a).
            for name in dict.fromkeys(request.names):
                if name in self.voices.presets:  # they belong to the model, and would not import back
                    raise InvalidRequest(f"names: {name!r} is a preset speaker; only registered speakers are exported")
                record = await self.voices.in_store(self.voices.store.get, name)
                if record is None:
                    raise NotFound(f"names: {name!r} is not a registered speaker")
                records.append(record)
        else:
            records = await self.voices.in_store(self.voices.store.list)
        if not records:
            raise FailedPrecondition("names: there are no registered speakers to export")
        data = await self.frontend.write_table([record_to_proto(r) for r in records], schema)
        return speakers_pb2.ExportSpeakersResponse(spk2info=data)
