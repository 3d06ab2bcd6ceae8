"""A scripted gateway for the HTTP front's tests: a real TextToSpeech gRPC servicer whose
request text says what it does (a status code, a failure after some chunks, a held chunk)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc
import numpy as np

from services.common.pb import tts_pb2, tts_pb2_grpc

CHUNK = np.full(2400, 1000, "<i2").tobytes()


class ScriptedGateway(tts_pb2_grpc.TextToSpeechServicer):
    """`text` says what happens: "CODE" fails at once with that code; "CODE after 2" sends two
    chunks first; "HOLD" sends one chunk, waits for `release`, then sends the last; anything
    else is three chunks."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def _play(self, script: str, context: grpc.aio.ServicerContext) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        if script == "HOLD":
            yield tts_pb2.SynthesizeResponse(audio=CHUNK, sample_rate=24000, chunk_index=0)
            await self.release.wait()
            yield tts_pb2.SynthesizeResponse(audio=CHUNK, sample_rate=24000, chunk_index=1, is_final=True)
            return
        name, _, after = script.partition(" after ")
        code = getattr(grpc.StatusCode, name, None)
        chunks = int(after) if after else (0 if code else 3)
        for index in range(chunks):
            yield tts_pb2.SynthesizeResponse(audio=CHUNK, sample_rate=24000, chunk_index=index,
                                             is_final=code is None and index == chunks - 1)
        if code is not None:
            await context.abort(code, f"scripted {name}")

    async def Synthesize(self, request, context):  # noqa: N802 - gRPC's name
        async for reply in self._play(request.text, context):
            yield reply

    async def SynthesizeTextStream(self, request_iterator, context):  # noqa: N802
        script = ""
        async for message in request_iterator:
            script += message.text
            if message.text.endswith("."):
                break
        async for reply in self._play(script.rstrip("."), context):
            yield reply
