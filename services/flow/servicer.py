"""FlowDecoder servicer: one bidi stream per request; all its state lives in the stream."""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from services.common.bidi import open_stream
from services.common.errors import Unavailable, map_errors
from services.common.pb import flow_pb2, flow_pb2_grpc
from services.common.request_limits import check_request_id, check_speaker_id
from services.common.tensors import from_proto, to_proto
from services.flow.api import MelDecoder, VoicePrompt


def voice_prompt(start: flow_pb2.DecodeStart) -> VoicePrompt | None:
    if start.WhichOneof("voice") != "prompt":
        return None
    prompt = start.prompt
    return VoicePrompt(
        prompt_tokens=from_proto(prompt.prompt_tokens, "start.prompt.prompt_tokens"),
        prompt_mel=from_proto(prompt.prompt_mel, "start.prompt.prompt_mel"),
        speaker_embedding=from_proto(prompt.speaker_embedding, "start.prompt.speaker_embedding"),
    )


class FlowDecoderServicer(flow_pb2_grpc.FlowDecoderServicer):
    def __init__(self) -> None:
        self.runner: MelDecoder | None = None  # set once weights are loaded

    @map_errors
    async def Decode(
        self, requests: AsyncIterator[flow_pb2.DecodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[flow_pb2.DecodeResponse]:
        if self.runner is None:
            raise Unavailable("the flow model is still loading")
        opened = await open_stream(requests, "Decode")
        if opened is None:
            return
        start, chunks = opened
        check_request_id(start.request_id, "start.request_id")
        check_speaker_id(start.speaker_id, "start.speaker_id")
        session = self.runner.open_session(start.speaker_id or None, voice_prompt(start))
        try:
            async for chunk in chunks:
                finalize = chunk.finalize
                result = await self.runner.decode(session, list(chunk.tokens), finalize)
                yield flow_pb2.DecodeResponse(
                    mel=to_proto(result.mel),
                    token_offset=result.token_offset,
                    is_final=finalize,
                    compute_seconds=result.compute_seconds,
                )
                if finalize:
                    return
        finally:
            self.runner.close_session(session)
