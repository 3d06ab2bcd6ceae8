"""Vocoder servicer: one bidi stream per request; its caches live in the stream."""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from services.common.errors import InvalidRequest, Unavailable, map_errors
from services.common.pb import vocoder_pb2, vocoder_pb2_grpc
from services.common.tensors import from_proto, to_proto
from services.vocoder.api import Vocoder


class VocoderServicer(vocoder_pb2_grpc.VocoderServicer):
    def __init__(self) -> None:
        self.runner: Vocoder | None = None  # set once weights are loaded

    @map_errors
    async def Vocode(
        self, requests: AsyncIterator[vocoder_pb2.VocodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vocoder_pb2.VocodeResponse]:
        if self.runner is None:
            raise Unavailable("the vocoder is still loading")
        messages = requests.__aiter__()
        first = await anext(messages, None)
        if first is None:
            return
        if first.WhichOneof("payload") != "start":
            raise InvalidRequest("the first Vocode message must set `start`")
        seed = first.start.seed if first.start.HasField("seed") else None
        stream = self.runner.open_stream(seed)
        try:
            async for message in messages:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidRequest("only the first Vocode message may set `start`; later ones set `chunk`")
                mel = from_proto(message.chunk.mel, "chunk.mel")
                finalize = message.chunk.finalize
                result = await self.runner.vocode(stream, mel, finalize)
                yield vocoder_pb2.VocodeResponse(
                    audio=to_proto(result.samples),
                    sample_rate=self.runner.sample_rate,
                    is_final=finalize,
                    compute_seconds=result.compute_seconds,
                )
                if finalize:
                    return
        finally:
            self.runner.close_stream(stream)
