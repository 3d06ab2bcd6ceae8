"""The HTTP front's only way to the models: the gateway's public gRPC API (TextToSpeech,
Speakers, Health), over one grpc.aio channel per process. No second pipeline.

The caller's `Authorization` (or `X-API-Key`) header is forwarded as gRPC metadata, so the
gateway's one key store decides who may do what (docs/security.md); this front holds no key.
"""

from __future__ import annotations

from typing import AsyncIterator, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.pb import speakers_pb2, speakers_pb2_grpc, tts_pb2, tts_pb2_grpc
from services.common.server import CHANNEL_OPTIONS
from services.common.tls import ClientTls
from services.http.errors import ApiError

FORWARDED_HEADERS = ("authorization", "x-api-key")
Metadata = tuple[tuple[str, str], ...]


def forwarded_metadata(headers: Mapping[str, str]) -> Metadata:
    """The credential headers of an HTTP request as gRPC metadata. gRPC metadata is printable
    ASCII; anything else could never be a key, so it is refused here with the gateway's words."""
    metadata = []
    for name in FORWARDED_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if not value.isascii() or not value.isprintable():
            raise ApiError(401, "unauthenticated", f"the {name} header must be printable ASCII (`Bearer <key>`)")
        metadata.append((name, value))
    return tuple(metadata)


class GatewayClient:
    """Stubs over one channel, opened inside the server's event loop (grpc.aio binds to it)."""

    def __init__(self, address: str, tls: ClientTls | None, timeout_seconds: float) -> None:
        self.address = address
        self.timeout = timeout_seconds
        if tls is None:
            self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.secure_channel(address, tls.credentials(), options=[*CHANNEL_OPTIONS, *tls.options()])
        self.tts = tts_pb2_grpc.TextToSpeechStub(self.channel)
        self.speakers = speakers_pb2_grpc.SpeakersStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    def synthesize(self, request: tts_pb2.SynthesizeRequest, metadata: Metadata) -> grpc.aio.UnaryStreamCall:
        return self.tts.Synthesize(request, metadata=metadata, timeout=self.timeout)

    def synthesize_text_stream(
        self, requests: AsyncIterator[tts_pb2.TextStreamRequest], metadata: Metadata
    ) -> grpc.aio.StreamStreamCall:
        return self.tts.SynthesizeTextStream(requests, metadata=metadata, timeout=self.timeout)

    async def list_speakers(self, metadata: Metadata) -> list[speakers_pb2.Speaker]:
        reply = await self.speakers.ListSpeakers(speakers_pb2.ListSpeakersRequest(), metadata=metadata,
                                                 timeout=self.timeout)
        return list(reply.speakers)

    async def register_speaker(
        self, name: str, audio: bytes, text: str, overwrite: bool, metadata: Metadata
    ) -> speakers_pb2.Speaker:
        request = speakers_pb2.RegisterSpeakerRequest(
            name=name, prompt=tts_pb2.PromptAudio(audio=audio, text=text), overwrite=overwrite
        )
        return await self.speakers.RegisterSpeaker(request, metadata=metadata, timeout=self.timeout)

    async def delete_speaker(self, name: str, metadata: Metadata) -> None:
        await self.speakers.DeleteSpeaker(speakers_pb2.DeleteSpeakerRequest(name=name), metadata=metadata,
                                          timeout=self.timeout)

    async def serving(self, timeout: float) -> tuple[bool, str]:
        """Whether the gateway answers SERVING on gRPC health, and what it said otherwise."""
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return False, f"the gateway at {self.address} did not answer health ({error.code().name})"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return False, f"the gateway at {self.address} reports {status}"
        return True, "SERVING"
