"""Vocoder servicer: one bidi stream per request; its caches live in the stream."""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from services.common.bidi import open_stream
from services.common.errors import Unavailable, map_errors
from services.common.pb import vocoder_pb2, vocoder_pb2_grpc
from services.common.request_limits import check_request_id
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
        opened = await open_stream(requests, "Vocode")
        if opened is None:
            return
        start, chunks = opened
        check_request_id(start.request_id, "start.request_id")
        speed = start.speed if start.HasField("speed") else 1.0
        stream = self.runner.open_stream(start.seed if start.HasField("seed") else None, speed)
        try:
            async for chunk in chunks:
                mel = from_proto(chunk.mel, "chunk.mel")
                finalize = chunk.finalize
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
